#!/bin/bash
# Reproduction check (session 35): the published nuclei_600 drop-0.6 pair at seed 0 with today's code.
set -x
cd /work/main
S=/work/main/.venv/bin/segbalance
COMMON="--datasets nuclei --drops 0.6 --seeds 0 --num-images 600 --test-images 600 --output /tmp/exp35/out --work-dir /tmp/exp35/work"
nice -n 5 $S experiment $COMMON --terms ce --weightings none --missing none
nice -n 5 $S experiment $COMMON --terms ce_dice --weightings median_frequency_clipped_decay --missing marginal_dice
echo DONE
