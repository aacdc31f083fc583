#!/bin/bash
# CondInst at 8 images per step on cells again (seeds 1-3, run_ablation_v8.sh's runs, whose
# checkpoints a new checkout does not have), for run_mechanism_ims8.sh: how much does the bank
# lower the cross-image firing on cells? The collected JSON also shows whether the v8 numbers
# reproduce. Two chains.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BIG="CondInst (IMS_PER_BATCH 8)"
"${RUN[@]}" --seeds 1 3 --variants "$BIG" "${CELLS[@]}" &
CHAINS+=($!)
"${RUN[@]}" --seeds 2 --variants "$BIG" "${CELLS[@]}" &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v11_cells_cpu.json \
    --variants "$BIG" "${CELLS[@]}"
