#!/bin/bash
# Session 36: the published nuclei_600 drop-0.6 default at seeds 1 and 2 with today's code (seed 0: session 35,
# docs/results/session35_reproduce/), then one report over the four rows (the session-35 pair and these two).
set -x
cd /work/main
S=/work/main/.venv/bin/segbalance
for seed in 1 2; do
  nice -n 15 $S experiment --datasets nuclei --drops 0.6 --seeds $seed --num-images 600 --test-images 600 \
    --output /tmp/exp36/out_s$seed --work-dir /tmp/exp36/work_s$seed \
    --terms ce_dice --weightings median_frequency_clipped_decay --missing marginal_dice
done
mkdir -p /tmp/exp36/comb
cat docs/results/runs/session35/nuclei_600_drop0.6.jsonl /tmp/exp36/work_s1/results.jsonl \
    /tmp/exp36/work_s2/results.jsonl > /tmp/exp36/comb/results.jsonl
$S experiment --report-only --work-dir /tmp/exp36/comb --output /tmp/exp36/comb_out --datasets nuclei \
    --drops 0.6 --seeds 0,1,2 --num-images 600 --test-images 600
