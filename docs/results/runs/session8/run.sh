#!/bin/bash
# usage: run.sh NAME DATASET "EXTRA ARGS" "RUN1 ARGS" ["RUN2 ARGS" ...]   (issue 15, session 8)
set -u
N=$1; D=$2; X=$3; shift 3
cd /work/main
W=/work/runs/S8/$N
mkdir -p $W/work
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
for args in "$@"; do
  echo "== $(date -u +%H:%M) $args" >> $W/log.txt
  nice -n 5 .venv/bin/segbalance experiment --output $W/out --work-dir $W/work --datasets $D \
      --min-epochs 50 --patience 20 --max-epochs 150 $X $args >> $W/log.txt 2>&1
done
echo done > $W/DONE
