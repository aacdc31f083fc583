#!/bin/bash
# The remaining hypotheses of the method issue, and two of ours, at the full demo recipe, one
# core per run (docs/method.md has the reasoning and the numbers):
# - the bank with two more placements or pair sets: a random placement within the smallest
#   size of interest (COORDS random) and negatives of the query's class only (SAME_CLASS_ONLY);
# - the inter-scene loss training only the representation (QUERY_GRAD False, attached in-batch
#   pixels, instance_centered, weight 1; cells seed 1, stopped on shapes);
# - with GroupNorm, the paired views without their losses (the control of run_ablation_v5.sh's
#   query term) and the query term with views that are never flipped (cells seed 1).
# Seeds are those that were run; the last commands only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
RANDOM_PLACE="IUQ (defaults, random placement)"
SAME="IUQ (defaults, same class only)"
REPR="IUQ (representation only, instance_centered, weight 1)"
VIEWS="views only (GN, paired)"
NOFLIP="+equivariance (GN, paired, query 3, no flip)"
(
    "${RUN[@]}" --seeds 1 --variants "$RANDOM_PLACE" "$SAME" "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 --variants "$RANDOM_PLACE" "$SAME"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 1 --variants "$REPR" "$NOFLIP" "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 2 3 --variants "$VIEWS" "${CELLS[@]}"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v7_shapes_cpu.json \
    --variants CondInst "IUQ (defaults, weight 0.1)" "$RANDOM_PLACE" "$SAME"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v7_cells_cpu.json \
    --variants CondInst "IUQ (defaults, weight 0.1)" "$RANDOM_PLACE" "$SAME" "$REPR" \
    "CondInst (GN)" "$VIEWS" "+equivariance (GN, paired, query 3, feat 0)" "$NOFLIP" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v7_cells_gn_cpu.json \
    --variants "CondInst (GN)" "$VIEWS" "+equivariance (GN, paired, query 3, feat 0)" "${CELLS[@]}"
