#!/bin/bash
# Every inter-scene setting measured so far pays for its silence on other images with the
# query's own mask (p on the own GT mask falls: docs/method.md). PROJECT_CONFLICT removes, per
# query, the component of the inter-scene gradient at the controller's output that works
# against the mask loss's. Seed 1 on both datasets at the demo's 4 images per step (SEEDS to
# add more): the default weight 0.1, weight 0.25, and instance_centered (the placement that cost
# most). Two chains of about equal length.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
W01="IUQ (defaults, conflict projected)"
W025="IUQ (defaults, weight 0.25, conflict projected)"
CENTERED="IUQ (defaults, instance_centered, conflict projected)"
SEEDS=${SEEDS:-1}
(
    "${RUN[@]}" --seeds $SEEDS --variants "$W01"
    "${RUN[@]}" --seeds $SEEDS --variants "$W01" "$W025" "${CELLS[@]}"
    "${RUN[@]}" --seeds $SEEDS --variants "$CENTERED" "${CELLS[@]}"
) &
FIRST=$!
(
    "${RUN[@]}" --seeds $SEEDS --variants "$W025"
    "${RUN[@]}" --seeds $SEEDS --variants "$CENTERED"
) &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v19 "$SEEDS" "$W01" "$W025" "$CENTERED"
