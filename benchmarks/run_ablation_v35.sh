#!/bin/bash
# CondInst seeds 2 and 3 on this machine, beside its seed 1 of v34. Training is bitwise
# deterministic on one machine but not across machines (the CPU's BLAS and convolution code
# paths differ), so per-seed comparisons need a baseline trained where the variant is trained;
# these seeds also give the mask-error budget (benchmarks/mask_oracle.py) three seeds.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
lane() {
    "${RUN[@]}" --seeds "$1" --variants CondInst && "${RUN[@]}" --seeds "$1" --variants CondInst "${CELLS[@]}"
}
lane 2 &
FIRST=$!
lane 3 &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v35 "1 2 3" CondInst
