#!/bin/bash
# After v33 (the instance-contrastive term at weight 0.1 far below CondInst on both datasets,
# seed 1): is the harm the negatives in the same image (look-alike neighbours a translation-
# equivariant F cannot tell apart), or the weight? The bank with the term restricted to other
# images' instances, and with the term at a tenth of the weight; CondInst's cells seed 1 again
# first, for the feature-identity measurement (its checkpoint of v4 is gone; training is
# deterministic, so it must give v4's 60.5). Seed 1.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
OTHER="IUQ (defaults, instance contrast, other images)"
LIGHT="IUQ (defaults, instance contrast, weight 0.01)"
lane_other() {
    "${RUN[@]}" --seeds 1 --variants "$OTHER" && "${RUN[@]}" --seeds 1 --variants "$OTHER" "${CELLS[@]}"
}
lane_light() {
    "${RUN[@]}" --seeds 1 --variants CondInst "${CELLS[@]}" \
        && "${RUN[@]}" --seeds 1 --variants "$LIGHT" "${CELLS[@]}" \
        && "${RUN[@]}" --seeds 1 --variants "$LIGHT"
}
# The first lane waits for v33's last run to free its core.
while pgrep -f run_ablation_v33.sh > /dev/null; do sleep 20; done &
WAIT=$!
lane_light &
SECOND=$!
wait "$WAIT"
lane_other &
FIRST=$!
wait_chains "$FIRST" "$SECOND"
summarize v34 "1" CondInst "$OTHER" "$LIGHT"
