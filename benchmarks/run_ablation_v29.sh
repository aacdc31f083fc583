#!/bin/bash
# Seeds 4 and 5 of CondInst and the default bank (weight 0.1) on both datasets, beside v4's
# seeds 1-3: shapes' CondInst seeds spread by 4 AP, so the headline comparison gets 5 seeds.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
BANK="IUQ (defaults, weight 0.1)"
("${RUN[@]}" --seeds 4 5 --variants CondInst && "${RUN[@]}" --seeds 4 5 --variants CondInst "${CELLS[@]}") &
FIRST=$!
("${RUN[@]}" --seeds 4 5 --variants "$BANK" && "${RUN[@]}" --seeds 4 5 --variants "$BANK" "${CELLS[@]}") &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
"${RUN[@]}" --seeds 4 5 --out benchmarks/results/ablation_v29_shapes_cpu.json --variants CondInst "$BANK"
"${RUN[@]}" --seeds 4 5 --out benchmarks/results/ablation_v29_cells_cpu.json \
    --variants CondInst "$BANK" "${CELLS[@]}"
