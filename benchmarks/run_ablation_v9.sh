#!/bin/bash
# The default bank where the demo recipe is not batch-limited: IMS_PER_BATCH 8 for the bank and
# for CondInst (whose cells seeds 1-3 and shapes seed 2 are run_ablation_v8.sh's), demo recipe,
# one core per run, two chains. Does the bank gain over CondInst once the batch stops being
# the bottleneck (8 images give the in-batch negatives of 7 other images per query)?
# The last commands only collect the runs into JSON (CondInst's cells seeds and shapes seed 2 are
# in ablation_v8_cells_big_cpu.json and ablation_v8_shapes_big_cpu.json).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BIG="CondInst (IMS_PER_BATCH 8)"
BANK="IUQ (defaults, IMS_PER_BATCH 8)"
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$BANK" "${CELLS[@]}"
    "${RUN[@]}" --seeds 3 --variants "$BIG"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 2 1 --variants "$BANK"
    "${RUN[@]}" --seeds 1 --variants "$BIG"
    "${RUN[@]}" --seeds 3 --variants "$BANK"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v9_cells_cpu.json \
    --variants "$BANK" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v9_shapes_bank_cpu.json \
    --variants "$BANK"
"${RUN[@]}" --seeds 1 3 --out benchmarks/results/ablation_v9_shapes_big_cpu.json --variants "$BIG"
