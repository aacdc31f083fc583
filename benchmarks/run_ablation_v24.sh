#!/bin/bash
# After run_ablation_v23.sh: the staleness hypothesis at the demo recipe. On shapes the bank's
# sampled entries are ~59 iterations old (on cells at most 18, so a cap of 20 never binds and
# the cells runs would be v4's and v22's), and the 16-d bank helps on cells (+1.0, 3 seeds) but
# costs 2.6 on shapes. Shapes, seed 1, negatives at most 20 iterations old at both widths.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
FRESH8="IUQ (defaults, age <= 20)"
FRESH16="IUQ (defaults, 16-d mask features, age <= 20)"
SEEDS=${SEEDS:-1}
"${RUN[@]}" --seeds $SEEDS --variants "$FRESH16" &
FIRST=$!
"${RUN[@]}" --seeds $SEEDS --variants "$FRESH8" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
# Shapes only: the 8-d CondInst and default-bank seed-1 rows are v4's
# (ablation_v4_shapes_cpu.json; training is deterministic).
"${RUN[@]}" --seeds $SEEDS --out benchmarks/results/ablation_v24_shapes_cpu.json \
    --variants "CondInst (16-d mask features)" "IUQ (defaults, 16-d mask features)" "$FRESH16" "$FRESH8"
