#!/bin/bash
# BoxInst (boxes only) at the demo budget on both embedded datasets, seeds 1-3, one training at
# a time; after each, the seeds done so far are summarised into
# benchmarks/results/ablation_boxinst_{shapes,cells}_cpu.json and compared with CondInst's
# committed 3-seed runs at the same recipe (ablation_v35_*_cpu.json; v34 holds seed 1) by
# benchmarks/boxinst_summary.py. CondInst is not retrained here.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CELLS_BOXINST=("${CELLS[@]}" MODEL.BOXINST.PAIRWISE.WARMUP_ITERS 150)
done_seeds=()
for seed in 1 2 3; do
    done_seeds+=("$seed")
    "${RUN[@]}" --seeds "${done_seeds[@]}" --variants BoxInst \
        --out benchmarks/results/ablation_boxinst_shapes_cpu.json
    "${RUN[@]}" --seeds "${done_seeds[@]}" --variants BoxInst \
        --out benchmarks/results/ablation_boxinst_cells_cpu.json "${CELLS_BOXINST[@]}"
    "$PY" benchmarks/boxinst_summary.py
done
