#!/bin/bash
# A one-seed screen after run_ablation_v9.sh: at 8 images per step the default bank (weight 0.1)
# is level with CondInst; is a stronger one (weight 0.25, below CondInst on every shapes seed at
# 4 images per step) still harmless or better there? Cells and shapes, seed 1, two chains.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
BANK="IUQ (defaults, IMS_PER_BATCH 8, weight 0.25)"
"${RUN[@]}" --seeds 1 --variants "$BANK" "${CELLS[@]}" &
"${RUN[@]}" --seeds 1 --variants "$BANK" &
wait
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v10_cells_cpu.json \
    --variants "$BANK" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v10_shapes_cpu.json --variants "$BANK"
