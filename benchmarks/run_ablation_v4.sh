#!/bin/bash
# Two more hypotheses for the default bank at the full demo recipe, 3 seeds, both datasets:
# without the pairs whose foreign pixel falls on the query's own instance
# (MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT, weight 0.1), and weight 0.05. CondInst's runs are
# those of run_ablation_v2.sh (same root). Two chains of about equal length share the 2 cores
# (each run one thread); the last two commands only collect the finished runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
OFF="IUQ (defaults, off own footprint)"
LOW="IUQ (defaults, weight 0.05)"
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$OFF"
    "${RUN[@]}" --seeds 1 --variants "$LOW"
    "${RUN[@]}" --seeds 3 --variants "$LOW" "${CELLS[@]}"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$OFF" "${CELLS[@]}"
    "${RUN[@]}" --seeds 1 2 --variants "$LOW" "${CELLS[@]}"
    "${RUN[@]}" --seeds 2 3 --variants "$LOW"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v4_shapes_cpu.json \
    --variants CondInst "IUQ (defaults, weight 0.1)" "$OFF" "$LOW"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v4_cells_cpu.json \
    --variants CondInst "IUQ (defaults, weight 0.1)" "$OFF" "$LOW" "${CELLS[@]}"
