#!/bin/bash
# usage: run_short.sh COMMIT TAG [EPOCHS] [extra experiment args...]
# Short training of the default nuclei cell at COMMIT (HEAD of /work/main when COMMIT=main), seed 0.
set -u
C=$1; TAG=$2; EP=${3:-2}; shift 3 2>/dev/null || shift $#
if [ "$C" = main ]; then ROOT=/work/main; else
  ROOT=/tmp/qa93/wt/$C
  [ -d $ROOT ] || git -C /tmp/qa93/src worktree add -q --detach $ROOT $C
fi
R=/tmp/qa93/runs/$TAG; rm -rf $R; mkdir -p $R
start=$(date +%s)
SEG_ROOT=$ROOT PYTHONPATH=/tmp/shim_wt nice -n 10 /work/main/.venv/bin/segbalance experiment --datasets nuclei --drops 0.6 --seeds 0 \
  --num-images 600 --test-images 60 --terms ce_dice --weightings median_frequency_clipped_decay --missing marginal_dice \
  --max-epochs $EP --min-epochs 0 --patience 5 --work-dir $R/work --output $R/out "$@" > $R/log.txt 2>&1
echo "rc=$? seconds=$(( $(date +%s) - start ))" >> $R/log.txt
/work/main/.venv/bin/python - $R <<'PY'
import json,sys
r=sys.argv[1]
try:
    rows=[json.loads(l) for l in open(r+'/work/results.jsonl')]
except Exception as e:
    print(r, 'NO ROWS', e); sys.exit()
row=rows[-1]; h=row['history']
out={'test':row['miou'], **{k:h[k] for k in ('loss','val_loss','miou','val_miou')}}
json.dump(out, open(r+'/summary.json','w'))
print(r.split('/')[-1], 'test %.10f'%row['miou'], 'loss', ['%.10f'%v for v in h['loss']], 'val_miou', ['%.10f'%v for v in h['val_miou']])
PY
tail -1 $R/log.txt
