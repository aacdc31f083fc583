#!/bin/bash
# After run_ablation_v16.sh: CondInst's seeds 2 and 3 at 4 images per step trained again on the
# current code, so that the v16 comparison has a 3-seed baseline of its own (run_ablation_v4.sh's
# were trained on older code). Seed 1 is v16's; ablation.py skips runs that are done.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
(
    "${RUN[@]}" --seeds 2 --variants CondInst
    "${RUN[@]}" --seeds 2 --variants CondInst "${CELLS[@]}"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 3 --variants CondInst
    "${RUN[@]}" --seeds 3 --variants CondInst "${CELLS[@]}"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
summarize v17 "1 2 3" CondInst "IUQ (defaults, weight 0.25, off own footprint)"
