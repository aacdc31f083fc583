#!/bin/bash
# The default bank's seed 1 on this machine, the control under v36's own-image negatives (which
# ran on top of it): its seed 1 of v4 came from an earlier machine, and runs differ across
# machines by up to 0.6 mask AP (README, "Reproducibility").
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
"${RUN[@]}" --seeds 1 --variants "IUQ (defaults)" &
FIRST=$!
"${RUN[@]}" --seeds 1 --variants "IUQ (defaults)" "${CELLS[@]}" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v37_cells_cpu.json \
    --variants CondInst "IUQ (defaults)" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v37_shapes_cpu.json \
    --variants CondInst "IUQ (defaults)"
