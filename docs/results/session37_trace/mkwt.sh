#!/bin/bash
# mkwt.sh COMMIT -> worktree /tmp/qa93/wt/<COMMIT>_f64 with the float64 channel statistics of 75d409a
C=$1; W=/tmp/qa93/wt/${C}_f64
[ -d $W ] && exit 0
git -C /tmp/qa93/src worktree add -q --detach $W $C
cd $W
if grep -q "def channel_statistics" trainer/preprocessing.py; then exit 0; fi
git apply -3 /tmp/qa93/f64.patch 2>/dev/null || git apply /tmp/qa93/f64.patch || { echo PATCH FAILED; exit 1; }
grep -c "channel_statistics" trainer/preprocessing.py
