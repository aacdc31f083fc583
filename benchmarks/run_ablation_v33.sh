#!/bin/bash
# Seed-1 screen of the instance-contrastive representation term (MODEL.IUQ.CONTRAST, ours):
# the default bank with it, and the term alone, on both datasets. CondInst's seed 1 and the
# default bank's are v4's runs (training is deterministic).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
WITH_BANK="IUQ (defaults, instance contrast)"
ALONE="IUQ (instance contrast only)"
lane() {
    "${RUN[@]}" --seeds 1 --variants "$1" && "${RUN[@]}" --seeds 1 --variants "$1" "${CELLS[@]}"
}
lane "$WITH_BANK" &
FIRST=$!
lane "$ALONE" &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v33 "1" "$WITH_BANK" "$ALONE"
