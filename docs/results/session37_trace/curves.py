import json, numpy as np
d=json.load(open('docs/results/session10/nuclei_600/results.json'))
rows=[x for x in d['results'] if x['drop']==0.6 and x['terms']=='ce_dice']
new=[json.loads(l) for f in ['docs/results/runs/session35/nuclei_600_drop0.6.jsonl','docs/results/runs/session36/nuclei_600_drop0.6.jsonl'] for l in open(f)]
new=[x for x in new if x.get('terms')=='ce_dice']
for key in ['val_miou','miou','loss','val_loss','val_iou_boundary','iou_boundary']:
  print(key)
  for lo,hi in [(0,10),(10,20),(20,30),(30,40),(40,50),(50,60),(60,70),(70,80),(80,95)]:
    o=[np.mean(x['history'][key][lo:hi]) for x in rows]; n=[np.mean(x['history'][key][lo:hi]) for x in new]
    print(f'  ep{lo:3d}-{hi:3d} old {np.mean(o):.4f} ({" ".join("%.4f"%v for v in o)})  new {np.mean(n):.4f} ({" ".join("%.4f"%v for v in n)})  diff {np.mean(n)-np.mean(o):+.4f}')
