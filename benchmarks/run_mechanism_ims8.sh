#!/bin/bash
# The mechanism behind run_ablation_v9.sh and run_ablation_v10.sh: benchmarks/mechanism.py on
# every final checkpoint of the 8-image runs found under output/ablation_v2 (CondInst, the default
# bank, the bank at weight 0.25), each with its own config.yaml, then one table of the
# inter-scene false firing (own position) and the mask sharpness per variant, mean and spread
# over the seeds found. JSON per checkpoint and the summary in benchmarks/results/mechanism_ims8/.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/mechanism_ims8
mkdir -p "$OUT"
for ds in shapes cells; do
    for run in output/ablation_v2/$ds/*IMS_PER_BATCH_8*_seed[0-9]; do
        [ -f "$run/model_final.pth" ] || continue
        json="$OUT/${ds}_$(basename "$run").json"
        [ -f "$json" ] && continue
        OMP_NUM_THREADS=1 $PY benchmarks/mechanism.py --config-file "$run/config.yaml" \
            --weights "$run/model_final.pth" --no-coco --out "$json" > /dev/null
    done
done
$PY benchmarks/mechanism_summary.py "$OUT"/*_seed*.json --out "$OUT/summary.json"
