#!/bin/bash
# Hard negatives without the contradiction: the look-alike placements ("instance_centered",
# and "random" within the smallest size of interest) with the part of each foreign instance
# that lands on the query's own instance left out (EXCLUDE_OWN_FOOTPRINT, which now follows
# the pair's placement), at the default weight 0.1 and the demo's 4 images per step. What is
# left asks the head not to reach past its own object where another object's appearance goes
# on: a boundary the relative coordinates must draw. Seed 1 on both datasets (SEEDS to add
# more), two chains of about equal length.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CENTERED="IUQ (defaults, instance_centered, off own footprint)"
PLACED="IUQ (defaults, random placement, off own footprint)"
SEEDS=${SEEDS:-1}
(
    "${RUN[@]}" --seeds $SEEDS --variants "$CENTERED"
    "${RUN[@]}" --seeds $SEEDS --variants "$PLACED" "${CELLS[@]}"
) &
FIRST=$!
(
    "${RUN[@]}" --seeds $SEEDS --variants "$PLACED"
    "${RUN[@]}" --seeds $SEEDS --variants "$CENTERED" "${CELLS[@]}"
) &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
summarize v18 "$SEEDS" "$CENTERED" "$PLACED"
