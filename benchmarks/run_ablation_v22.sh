#!/bin/bash
# After run_ablation_v21.sh (seed 1, 16-d mask features: the default bank 2.4 above the same
# CondInst on cells, keeping its own masks as sharp, and 2.6 below it on shapes): seeds 2 and 3
# on cells, where the mechanism changed. Shapes did not get them for time (one seed already
# rules out better-on-every-seed there).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
WIDE_CONDINST="CondInst (16-d mask features)"
WIDE_BANK="IUQ (defaults, 16-d mask features)"
"${RUN[@]}" --seeds 2 --variants "$WIDE_CONDINST" "$WIDE_BANK" "${CELLS[@]}" &
FIRST=$!
"${RUN[@]}" --seeds 3 --variants "$WIDE_CONDINST" "$WIDE_BANK" "${CELLS[@]}" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v22_cells_cpu.json \
    --variants "$WIDE_CONDINST" "$WIDE_BANK" "${CELLS[@]}"
