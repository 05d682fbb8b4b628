# FVU of exported SAEs (SAELens files) on their held-out rows (cfg.json sparsa.holdout_rows,
# minus the rows at sparsa.exclude_positions), with and without the rows of largest centred
# norm; an independent numpy re-computation.
# Usage: python bench/sae_fvu_outliers.py STORE_DIR SAE_DIR... (needs numpy)
import json, struct, sys, numpy as np, os
def st(p):
    with open(p,'rb') as f:
        n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); base=8+n; out={}
        for k,t in h.items():
            if k=='__metadata__': continue
            a,b=t['data_offsets']; f.seek(base+a)
            dt={'F32':np.float32,'U32':np.uint32}[t['dtype']]
            out[k]=np.frombuffer(f.read(b-a),dtype=dt).reshape(t['shape'])
        return out
store=sys.argv[1]; saes=sys.argv[2:]
man=json.load(open(os.path.join(store,'manifest.json')))
rows=json.load(open(os.path.join(saes[0],'cfg.json')))['sparsa']['holdout_rows']
# gather held-out rows across shards
starts=[0]; 
for s in man['shards']: starts.append(starts[-1]+s['n_tokens'])
X=[]; P=[]
for a,b in rows:
    for i,s in enumerate(man['shards']):
        lo,hi=max(a,starts[i]),min(b,starts[i+1])
        if lo<hi:
            t=st(os.path.join(store,s['file']))
            X.append(t['activations'][lo-starts[i]:hi-starts[i]]); P.append(t['positions'][lo-starts[i]:hi-starts[i]])
X=np.concatenate(X).astype(np.float64); P=np.concatenate(P)
skip=json.load(open(os.path.join(saes[0],'cfg.json')))['sparsa'].get('exclude_positions',[])
keep=~np.isin(P,skip); X=X[keep]; P=P[keep]
xc=X-X.mean(0); n2=(xc**2).sum(1); order=np.argsort(-n2)
masks={'all':np.ones(len(X),bool)}
for q in [0.001,0.01]:
    m=np.ones(len(X),bool); m[order[:int(len(X)*q)]]=False; masks[f'without top {q*100:g}%']=m
print("rows",len(X),"(positions %s left out)" % skip,"share of centred sum sq in top 1%%: %.3f" % (n2[order[:len(X)//100]].sum()/n2.sum()))
for d in saes:
    c=json.load(open(os.path.join(d,'cfg.json'))); w=st(os.path.join(d,'sae_weights.safetensors'))
    We,be,Wd,bd=w['W_enc'].astype(np.float64),w['b_enc'].astype(np.float64),w['W_dec'].astype(np.float64),w['b_dec'].astype(np.float64)
    f=(X-bd)@We+be
    if c['architecture']=='topk':
        k=c['k']; idx=np.argpartition(-f,k,axis=1)[:,:k]; a=np.zeros_like(f); r=np.arange(len(f))[:,None]
        a[r,idx]=np.maximum(f[r,idx],0)
    else:
        th=w['threshold'].astype(np.float64); a=np.where(f>th,f,0.0)
    xh=a@Wd+bd; e=((X-xh)**2).sum(1); l0=(a>0).sum(1)
    out=[]
    for name,m in masks.items():
        Xm=X[m]; v=((Xm-Xm.mean(0))**2).sum()
        out.append(f"{name}: FVU {e[m].sum()/v:.4f} L0 {l0[m].mean():.2f}")
    print(os.path.basename(d), c['architecture'], " | ".join(out))
