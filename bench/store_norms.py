# Where an activation store's variance sits: per in-context position, the share of the centred
# sum of squared norms and the median squared norm; the share of the top 1 % of rows with and
# without given positions; and the token ids of the heavy rows (squared norm > 20× the median).
# An independent numpy reading of the shard files (docs/sae.md §4).
# Usage: python bench/store_norms.py STORE_DIR [SHARD_INDEX=0] [LEFT_OUT_POSITIONS=1] (needs numpy)
import json, struct, sys, os, numpy as np
from collections import Counter

def st(p):
    with open(p, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n; out = {}
        for k, t in h.items():
            if k == '__metadata__': continue
            a, b = t['data_offsets']; f.seek(base + a)
            dt = {'F32': np.float32, 'U32': np.uint32}[t['dtype']]
            out[k] = np.frombuffer(f.read(b - a), dtype=dt).reshape(t['shape'])
        return out

store = sys.argv[1]
shard = int(sys.argv[2]) if len(sys.argv) > 2 else 0
left_out = [int(p) for p in (sys.argv[3] if len(sys.argv) > 3 else '1').split(',') if p]
m = json.load(open(os.path.join(store, 'manifest.json')))
sh = st(os.path.join(store, m['shards'][shard]['file']))
x = sh['activations'].astype(np.float64); pos = sh['positions']; ids = sh['token_ids']
sq = ((x - x.mean(0)) ** 2).sum(1); tot = sq.sum(); med = np.median(sq)
print(f"{m.get('hook')}: shard {shard}, {len(x)} rows")
for p in range(1, 9):
    sel = pos == p
    print(f"  position {p}: {sel.mean()*100:.1f} % of rows, {sq[sel].sum()/tot*100:.1f} % of the sum of squares, median {np.median(sq[sel]):.0f}")
sel = pos > 8
print(f"  positions > 8: {sel.mean()*100:.1f} % of rows, {sq[sel].sum()/tot*100:.1f} %, median {np.median(sq[sel]):.0f}")
for name, keep in [('all rows', np.ones(len(x), bool)), (f'without positions {left_out}', ~np.isin(pos, left_out))]:
    s = np.sort(sq[keep])[::-1]
    print(f"  {name}: top 1 % of rows hold {s[:len(s)//100].sum()/s.sum()*100:.1f} %, max/median {s[0]/np.median(s):.0f}")
big = sq > 20 * med
print(f"  rows > 20x the median: {big.sum()} ({(big & (pos == 1)).sum()} at position 1, of {(pos == 1).sum()} position-1 rows)")
print("  their token ids (id, count):", Counter(ids[big].tolist()).most_common(6))
