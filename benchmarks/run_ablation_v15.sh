#!/bin/bash
# The instance_centered negatives at 8 images per step, default weight (0.1), with the in-batch
# pixels sending gradient into the mask branch: seed 1 on both datasets, one chain each.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
CENTERED="IUQ (defaults, IMS_PER_BATCH 8, instance_centered, entry grad)"
SEEDS=(${SEEDS:-1})
"${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$CENTERED" &
CHAINS+=($!)
"${RUN[@]}" --seeds "${SEEDS[@]}" --variants "$CENTERED" "${CELLS[@]}" &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
summarize v15 "${SEEDS[*]}" "$CENTERED"
