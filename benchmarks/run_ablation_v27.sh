#!/bin/bash
# After run_ablation_v26.sh (seed 1, 8-d, own dice >= 0.8: cells 61.4 against CondInst's 60.5,
# shapes 53.7 against 56.2, CondInst's best shapes seed): seeds 2 and 3 on both datasets.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
GATED="IUQ (defaults, own dice >= 0.8)"
("${RUN[@]}" --seeds 2 --variants "$GATED" && "${RUN[@]}" --seeds 2 --variants "$GATED" "${CELLS[@]}") &
FIRST=$!
("${RUN[@]}" --seeds 3 --variants "$GATED" && "${RUN[@]}" --seeds 3 --variants "$GATED" "${CELLS[@]}") &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
# CondInst's and the default bank's rows are v4's (ablation_v4_*_cpu.json): training is
# deterministic, and their checkpoints are not on this machine.
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v27_shapes_cpu.json --variants "$GATED"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v27_cells_cpu.json \
    --variants "$GATED" "${CELLS[@]}"
