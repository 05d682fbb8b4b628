"""Reference token ids for tests/lm_tokenizer_reference.rs, from Hugging Face `tokenizers`
(an independent implementation) built from the same GGUF vocabulary and merges with SmolLM2's
pre-tokenizer (Digits(individual_digits) + ByteLevel(add_prefix_space=False)).

Texts are referenced by corpus and name (the test re-reads them from the fetched corpora), so
no corpus text is stored here; only the hand-written strings are inline.

    pip download tokenizers==0.21.1 --no-deps -d /tmp/pipdl
    pip install --no-deps --target /tmp/hftok /tmp/pipdl/tokenizers-0.21.1-*.whl
    python3 make_tokenizer_reference.py > tokenizer_reference.json
"""
import glob, json, os, struct, sys
sys.path.insert(0, '/tmp/hftok')
from tokenizers import Tokenizer, models, pre_tokenizers

cache = os.environ.get('SPARSA_CACHE', os.path.expanduser('~/.cache/sparsa'))
f = open(os.path.join(cache, 'smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf'), 'rb')
def u32(): return struct.unpack('<I', f.read(4))[0]
def u64(): return struct.unpack('<Q', f.read(8))[0]
def s(): n = u64(); return f.read(n).decode('utf8')
fmt = {0:'<B',1:'<b',2:'<H',3:'<h',4:'<I',5:'<i',6:'<f',7:'<?',10:'<Q',11:'<q',12:'<d'}
def val(t):
    if t == 8: return s()
    if t == 9:
        et = u32(); n = u64(); return [val(et) for _ in range(n)]
    fm = fmt[t]; return struct.unpack(fm, f.read(struct.calcsize(fm)))[0]
assert f.read(4) == b'GGUF'; u32(); u64(); nkv = u64()
meta = {}
for _ in range(nkv):
    k = s(); t = u32(); meta[k] = val(t)
toks = meta['tokenizer.ggml.tokens']
vocab = {t: i for i, t in reversed(list(enumerate(toks)))}
merges = [tuple(m.split(' ', 1)) for m in meta['tokenizer.ggml.merges']]
tk = Tokenizer(models.BPE(vocab, merges))
tk.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
])

cases = []
for t in ["The capital of France is", "In 2001 The", "x   \n\n\ty  ", "don't I'LL we've 's",
          "a\u00a0b\u2003c 12,345.67", "  Hello,\n\n  world!  It's 3.14 \u2014 na\u00efve caf\u00e9 \u6771\u4eac\t end  "]:
    cases.append({"text": t, "ids": tk.encode(t).ids})
for p in sorted(glob.glob(os.path.join(cache, 'sotu/*.txt')))[::47]:
    text = open(p, encoding='utf8').read()[:3000]
    cases.append({"corpus": "sotu", "name": os.path.basename(p), "chars": 3000, "ids": tk.encode(text).ids})
w = json.load(open(os.path.join(cache, 'wiki-summaries/summaries_en-us.json')))
for k, v in sorted(w.items())[::250]:
    text = v.get('extract') or ''
    if text.strip():
        cases.append({"corpus": "wiki", "name": k, "ids": tk.encode(text).ids})
json.dump({"generator": "tokenizers 0.21.1 (HF), see make_tokenizer_reference.py", "cases": cases}, sys.stdout)
