#!/bin/bash
# After run_ablation_v12.sh/v13.sh: at 8 images per step, weight 0.25 without the own-instance
# pairs is level on shapes and +0.3 on cells. Two hypotheses of the method issue on top of it,
# seed 1 on both datasets: the in-batch pixels of the other 7 images send gradient into the mask
# branch (the representation may learn to tell instances apart), and negatives at most 20
# iterations old (the bank's entries are from a mask branch that has moved on). Two chains of
# about equal length; ablation.py skips runs that are done.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BASE="IUQ (defaults, IMS_PER_BATCH 8, weight 0.25, off own footprint"
GRAD="$BASE, entry grad)"
FRESH="$BASE, age <= 20)"
SEEDS=(${SEEDS:-1})
(
    "${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$GRAD"
    "${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$FRESH" "${CELLS[@]}"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$FRESH"
    "${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$GRAD" "${CELLS[@]}"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
summarize v14 "${SEEDS[*]}" "$GRAD" "$FRESH"
