#!/bin/bash
# After run_ablation_v22.sh (16-d mask features: the bank +1.0 on cells over the same CondInst,
# 3 seeds; -2.6 on shapes, seed 1): the 16-d bank without the overlay pairs on the query's own
# instance, seed 1 on both datasets (SEEDS to add more).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
WIDE_OFF="IUQ (defaults, 16-d mask features, off own footprint)"
SEEDS=${SEEDS:-1}
"${RUN[@]}" --seeds $SEEDS --variants "$WIDE_OFF" &
FIRST=$!
"${RUN[@]}" --seeds $SEEDS --variants "$WIDE_OFF" "${CELLS[@]}" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v23 "$SEEDS" "CondInst (16-d mask features)" "$WIDE_OFF"
