#!/bin/bash
# After run_ablation_v12.sh: without the pairs on the query's own instance the weight-0.25 bank
# no longer hurts shapes (62.8 against CondInst's 62.8; 60.8 with them). Is the rest of the loss
# a gain at full weight? Weight 1 without own-instance pairs on shapes, seeds 1-3, and cells seed
# 3 (cells seeds 1-2 were stopped once shapes, below CondInst on every seed, had ruled it out),
# and CondInst's shapes seed 1 trained again (run_mechanism_ims8.sh needs its checkpoint), in two
# chains. ablation.py skips runs that are done.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BANK="IUQ (defaults, IMS_PER_BATCH 8, weight 1, off own footprint)"
(
    "${RUN[@]}" --seeds 1 3 --variants "$BANK"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 2 --variants "$BANK"
    "${RUN[@]}" --seeds 3 --variants "$BANK" "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 --variants "CondInst (IMS_PER_BATCH 8)"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 3 --out benchmarks/results/ablation_v13_cells_cpu.json \
    --variants "$BANK" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v13_shapes_cpu.json --variants "$BANK"
