#!/bin/bash
# A per-query curriculum (MODEL.IUQ.INTER.MIN_OWN_DICE): only the queries whose own mask
# already has dice >= 0.8 this step are scored against other images. Seed 1: shapes at 8-d;
# cells at 8-d, then at 16-d (where the bank helped on cells, v22).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
GATED="IUQ (defaults, own dice >= 0.8)"
GATED16="IUQ (defaults, 16-d mask features, own dice >= 0.8)"
SEEDS=${SEEDS:-1}
"${RUN[@]}" --seeds $SEEDS --variants "$GATED" &
FIRST=$!
"${RUN[@]}" --seeds $SEEDS --variants "$GATED" "$GATED16" "${CELLS[@]}" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
# The seed-1 rows of CondInst and the default bank are v4's (and v21's for 16-d) JSON:
# training is deterministic.
"${RUN[@]}" --seeds $SEEDS --out benchmarks/results/ablation_v26_shapes_cpu.json \
    --variants "$GATED"
"${RUN[@]}" --seeds $SEEDS --out benchmarks/results/ablation_v26_cells_cpu.json \
    --variants "CondInst" "$GATED" "CondInst (16-d mask features)" "IUQ (defaults, 16-d mask features)" "$GATED16" "${CELLS[@]}"
