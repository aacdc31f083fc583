#!/bin/bash
# The dice form of the inter-scene loss (MODEL.IUQ.INTER.LOSS_FORM dice) at the full demo
# recipe, 3 seeds, one core per run, with 1 and 4 other images' worth of foreign pixels in the
# dice denominator. CondInst's runs are those of run_ablation_v2.sh (same root, same code path
# for CondInst), so they are not rerun. Two chains of about equal length share the 2 cores;
# the last two commands only collect the finished runs into the JSON tables.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=($PY benchmarks/ablation.py --jobs 1 --root output/ablation_v2)
ONE="IUQ (dice form, 1 image)"
FOUR="IUQ (dice form, 4 images)"
CELLS=(--dataset cells SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)"
    INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256)
(
    "${RUN[@]}" --seeds 1 2 --variants "$ONE" "$FOUR"
    "${RUN[@]}" --seeds 3 --variants "$ONE"
) &
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$ONE" "$FOUR" "${CELLS[@]}"
    "${RUN[@]}" --seeds 3 --variants "$FOUR"
) &
wait
"${RUN[@]}" --seeds 1 2 3 --variants CondInst "$ONE" "$FOUR" \
    --out benchmarks/results/ablation_v3_shapes_cpu.json
"${RUN[@]}" --seeds 1 2 3 --variants CondInst "$ONE" "$FOUR" "${CELLS[@]}" \
    --out benchmarks/results/ablation_v3_cells_cpu.json
