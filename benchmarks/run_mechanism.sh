#!/bin/bash
# benchmarks/mechanism.py on every final checkpoint under output/ablation_v2/<dataset>/ whose run
# directory matches GLOB (both datasets), each with its own config.yaml, then one table per
# variant of the false firing and the mask sharpness, mean and spread over the seeds found.
# JSON per checkpoint and summary.json in OUT; a checkpoint already measured there is skipped.
#     bash benchmarks/run_mechanism.sh OUT GLOB
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:?usage: run_mechanism.sh OUT GLOB}
GLOB=${2:?usage: run_mechanism.sh OUT GLOB}
mkdir -p "$OUT"
for ds in shapes cells; do
    for run in output/ablation_v2/$ds/$GLOB; do
        [ -f "$run/model_final.pth" ] || continue
        json="$OUT/${ds}_$(basename "$run").json"
        [ -f "$json" ] && continue
        OMP_NUM_THREADS=1 "$PY" benchmarks/mechanism.py --config-file "$run/config.yaml" \
            --weights "$run/model_final.pth" --no-coco --out "$json" > /dev/null
    done
done
"$PY" benchmarks/mechanism_summary.py "$OUT"/*_seed*.json --out "$OUT/summary.json"
