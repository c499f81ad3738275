import json, math
d=json.load(open('/work/main/docs/results/session10/nuclei_600/results.json'))
old=[x for x in d['results'] if x['drop']==0.6 and x['terms']=='ce_dice']
new=[json.loads(l) for f in ['/work/main/docs/results/runs/session35/nuclei_600_drop0.6.jsonl','/work/main/docs/results/runs/session36/nuclei_600_drop0.6.jsonl'] for l in open(f)]
new=[x for x in new if x.get('terms')=='ce_dice']
def first_cut(val, rule, start=50, patience=3):
    best=-math.inf; wait=0
    for e,v in enumerate(val):
        if e<start:
            if rule=='new':
                best=max(best,v); wait=0
            continue
        if v>best: best=v; wait=0
        else:
            wait+=1
            if wait>=patience: return e  # cut at the end of epoch e (logged from e+1)
    return None
for tag,rows in [('session10 (old rule in force)',old),('today (new rule in force)',new)]:
    for x in rows:
        h=x['history']; lr=h['learning_rate']
        rec=[i for i in range(1,len(lr)) if lr[i]<lr[i-1]][0]-1
        print(tag,'seed',x['seed'],'recorded first cut after epoch',rec,'| simulated old rule',first_cut(h['val_miou'],'old'),
              'new rule',first_cut(h['val_miou'],'new'), '| best val before 50: %.4f, val at 50: %.4f'%(max(h['val_miou'][:50]),h['val_miou'][50]))
