#!/bin/bash
# usage: [RUNS=FOLDER] run.sh NAME DATASET "EXTRA ARGS" "RUN1 ARGS" ["RUN2 ARGS" ...]   (issue 15, session 8)
# Runs from the repository root; writes RUNS/NAME/{work,out,log.txt,DONE} (RUNS default
# /work/runs/S8, where the session-8 rows were trained).
set -u
N=$1; D=$2; X=$3; shift 3
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
W=${RUNS:-/work/runs/S8}/$N
mkdir -p $W/work
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
for args in "$@"; do
  echo "== $(date -u +%H:%M) $args" >> $W/log.txt
  nice -n 5 .venv/bin/segbalance experiment --output $W/out --work-dir $W/work --datasets $D \
      --min-epochs 50 --patience 20 --max-epochs 150 $X $args >> $W/log.txt 2>&1
done
echo done > $W/DONE
