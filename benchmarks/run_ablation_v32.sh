#!/bin/bash
# After the v31 screen (seed 1): seeds 2 and 3 of CondInst with the released code's mask
# temperature 3, and of the released code's confident-firing penalty (weight 1, overlay) on
# top of it, both datasets, so that the penalty is compared with CondInst at the same
# temperature over 3 seeds.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
T3="CondInst (mask temperature 3)"
OVERLAY="IUQ (temperature 3, confident >= 0.8, weight 1)"
chain() {
    local seed=$1
    "${RUN[@]}" --seeds "$seed" --variants "$T3" && "${RUN[@]}" --seeds "$seed" --variants "$T3" "${CELLS[@]}" \
        && "${RUN[@]}" --seeds "$seed" --variants "$OVERLAY" \
        && "${RUN[@]}" --seeds "$seed" --variants "$OVERLAY" "${CELLS[@]}"
}
chain 2 &
FIRST=$!
chain 3 &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v32 "1 2 3" "$T3" "$OVERLAY"
