#!/bin/bash
# After run_ablation_v24.sh (shapes seed 1: the age cap recovers 1.2 of the 16-d bank's 2.6 and
# nothing at 8-d): shapes seeds 2 and 3 of the 16-d pair and of the 16-d bank with negatives at
# most 20 iterations old, and the capped bank's cells seed 1 (the cap should never bind there:
# sampled ages on cells are at most 18, so it should be v21's run to the last digit).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
WIDE_CONDINST="CondInst (16-d mask features)"
WIDE_BANK="IUQ (defaults, 16-d mask features)"
FRESH16="IUQ (defaults, 16-d mask features, age <= 20)"
("${RUN[@]}" --seeds 2 3 --variants "$WIDE_CONDINST" && "${RUN[@]}" --seeds 2 --variants "$FRESH16") &
FIRST=$!
("${RUN[@]}" --seeds 2 3 --variants "$WIDE_BANK" && "${RUN[@]}" --seeds 3 --variants "$FRESH16") &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
"${RUN[@]}" --seeds 1 --variants "$FRESH16" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v25_shapes_cpu.json \
    --variants "$WIDE_CONDINST" "$WIDE_BANK" "$FRESH16"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v25_cells_cpu.json \
    --variants "$WIDE_BANK" "$FRESH16" "${CELLS[@]}"
