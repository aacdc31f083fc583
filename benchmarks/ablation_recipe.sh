# Sourced by run_ablation_v4.sh and later, from the repository root: the interpreter, ablation.py
# with one core per run under output/ablation_v2, the options of the cells recipe (1400
# iterations, tested at 160 pixels; shapes runs take the demo config's own), wait_chains and
# summarize.
PY=${PY:-.venv/bin/python}
RUN=("$PY" benchmarks/ablation.py --jobs 1 --root output/ablation_v2)
CELLS=(--dataset cells SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)"
    INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256)
# summarize NAME SEEDS VARIANT...: once the chains are done, write
# benchmarks/results/ablation_NAME_{cells,shapes}_cpu.json for those variants and seeds
# (ablation.py trains no run that is done; here it only reads their metrics).
summarize() {
    local name=$1 seeds=$2
    shift 2
    "${RUN[@]}" --seeds $seeds --out "benchmarks/results/ablation_${name}_cells_cpu.json" \
        --variants "$@" "${CELLS[@]}"
    "${RUN[@]}" --seeds $seeds --out "benchmarks/results/ablation_${name}_shapes_cpu.json" \
        --variants "$@"
}
# wait_chains PID...: wait for each background chain and fail if one did (a bare wait returns 0
# whatever they did, and the summary after it would then train the failed chain's runs).
wait_chains() {
    local pid
    for pid in "$@"; do
        wait "$pid"
    done
}
