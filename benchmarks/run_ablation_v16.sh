#!/bin/bash
# Weight 0.25 without the own-instance pairs, nowhere worse than CondInst at 8 images per step
# (shapes 0.0, cells +0.3; run_ablation_v12.sh), at the demo recipe's 4 images per step: 3 seeds
# on both datasets, and CondInst's seed 1 on both trained again on the current code beside it
# (its 3-seed runs are those of run_ablation_v4.sh). Two chains of about equal length.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
OFF="IUQ (defaults, weight 0.25, off own footprint)"
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$OFF"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$OFF" "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 --variants CondInst "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 --variants CondInst
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v16_cells_cpu.json \
    --variants "$OFF" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v16_shapes_cpu.json --variants "$OFF"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v16_condinst_cells_cpu.json \
    --variants CondInst "${CELLS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v16_condinst_shapes_cpu.json \
    --variants CondInst
