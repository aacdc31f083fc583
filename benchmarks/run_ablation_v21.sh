#!/bin/bash
# Two more hypotheses, seed 1 on both datasets at the demo recipe (SEEDS to add more):
# - capacity: the head sees only (relative position, F) and F has 8 channels; with 16, F may
#   carry what tells a look-alike of another image from the query's own object, so the bank
#   would have something to separate with. CondInst gets the same width, its own control.
# - the look-alike pairs off the own instance at weight 0.02 (they cost 5-6 mask AP at 0.1).
# CondInst at 8 channels on cells again, to check that this machine reproduces the recorded
# seed-1 runs (training is deterministic on the machines of earlier sessions).
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
WIDE_CONDINST="CondInst (16-d mask features)"
WIDE_BANK="IUQ (defaults, 16-d mask features)"
CENTERED="IUQ (defaults, instance_centered, off own footprint, weight 0.02)"
SEEDS=${SEEDS:-1}
(
    "${RUN[@]}" --seeds $SEEDS --variants "$WIDE_CONDINST"
    "${RUN[@]}" --seeds $SEEDS --variants "$WIDE_BANK"
    "${RUN[@]}" --seeds 1 --variants CondInst "${CELLS[@]}"
) &
FIRST=$!
(
    "${RUN[@]}" --seeds $SEEDS --variants "$CENTERED"
    "${RUN[@]}" --seeds $SEEDS --variants "$WIDE_CONDINST" "$WIDE_BANK" "$CENTERED" "${CELLS[@]}"
) &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
# Cells with the 8-channel CondInst rerun beside them, so that the JSON holds the check too.
"${RUN[@]}" --seeds $SEEDS --out benchmarks/results/ablation_v21_cells_cpu.json \
    --variants CondInst "$WIDE_CONDINST" "$WIDE_BANK" "$CENTERED" "${CELLS[@]}"
"${RUN[@]}" --seeds $SEEDS --out benchmarks/results/ablation_v21_shapes_cpu.json \
    --variants "$WIDE_CONDINST" "$WIDE_BANK" "$CENTERED"
