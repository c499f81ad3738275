import json, re, numpy as np, sys
log=open('/tmp/qa93/runs/old_f64_long/log.txt').read().split('experiment: [nuclei_drop0.6] pipeline')[-1]
lines=[l for l in log.splitlines() if l.startswith('31/31') and 'class_weight_mix' in l]
def get(k): return [float(re.search(r' %s: ([0-9.e+-]+)'%k, l).group(1)) for l in lines]
cur={k:get(k) for k in ['loss','miou','val_miou','val_iou_boundary','learning_rate']}
d=json.load(open('/work/main/docs/results/session10/nuclei_600/results.json'))
old=[x for x in d['results'] if x['drop']==0.6 and x['terms']=='ce_dice']
new=[json.loads(l) for f in ['/work/main/docs/results/runs/session35/nuclei_600_drop0.6.jsonl','/work/main/docs/results/runs/session36/nuclei_600_drop0.6.jsonl'] for l in open(f)]
new=[x for x in new if x.get('terms')=='ce_dice']
n=len(cur['loss']); print('epochs done', n)
for k in ['loss','miou','val_miou','val_iou_boundary']:
    print(k)
    for lo,hi in [(0,10),(10,20),(20,30),(30,40),(40,50),(50,60),(60,70),(70,80),(80,90),(90,100)]:
        if n<hi: break
        m=np.mean(cur[k][lo:hi]); o=[np.mean(x['history'][k][lo:hi]) for x in old]; w=[np.mean(x['history'][k][lo:hi]) for x in new]
        print(f'  ep{lo:3d}-{hi:3d} 76d0fac+f64 here s0 {m:.4f} | session10 s0 {o[0]:.4f} (s0-2 mean {np.mean(o):.4f}) | HEAD s0 {w[0]:.4f} (s0-2 mean {np.mean(w):.4f})')
lr=cur['learning_rate']; print('lr cuts (logged from epoch)', [i for i in range(1,len(lr)) if lr[i]<lr[i-1]][:4])
if n: print('best val so far %.4f at epoch %d'%(max(cur['val_miou']), int(np.argmax(cur['val_miou']))))
