#!/bin/bash
# A screen after run_ablation_v9.sh: at 8 images per step the default bank (weight 0.1) is level
# with CondInst; is a stronger one (weight 0.25, below CondInst on every shapes seed at 4 images
# per step) harmless or better there? Cells and shapes, seeds 1-3, in two chains of about equal
# length (a shapes run takes about 1.4 cells runs). ablation.py skips runs that are done.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BANK="IUQ (defaults, IMS_PER_BATCH 8, weight 0.25)"
(
    "${RUN[@]}" --seeds 1 2 --variants "$BANK"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$BANK" "${CELLS[@]}"
    "${RUN[@]}" --seeds 3 --variants "$BANK"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v10_cells_cpu.json \
    --variants "$BANK" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v10_shapes_cpu.json --variants "$BANK"
