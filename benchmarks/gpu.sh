#!/usr/bin/env bash
# Everything this project checks on a GPU, in one run of under 8 minutes on a fresh machine (the
# steps' time limits add up to 430 s, the offline install to about 30 s)
# without network: every CUDA test (pytest -m cuda, skips turned into failures), then the
# benchmarks (IUQ variants against CondInst at 800 px with AMP, both fused ops against their
# references, the mask head's memory). Each step runs even when an earlier one failed; one JSON
# (OUT_DIR/gpu_<card>.json) records the card, the versions, what passed and every figure.
#
#     bash benchmarks/gpu.sh [OUT_DIR]          # default benchmarks/results
#     DEVICE=cpu bash benchmarks/gpu.sh /tmp/x  # every benchmark step on the CPU, tiny sizes
#
# PY (default .venv/bin/python) needs a CUDA build of torch. On the lent GPU machine, which has
# its own Python and CUDA torch but no detectron2 and no network, build the wheelhouse here
# first (python scripts/make_wheelhouse.py -> wheelhouse/, under 64 MiB) and carry it with the
# repository: then PY is made a venv over the machine's python3 (--system-site-packages, so its
# CUDA torch is used) and iuq_d2 is installed from the wheelhouse. Without CUDA the script stops
# after its own checks with one line saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
mkdir -p "$OUT"
STATUS="$OUT/gpu_steps.tsv"
: > "$STATUS"

if [ -d "$WHEELHOUSE" ] && ! $PY -c "import detectron2" 2>/dev/null; then
    if ! command -v "$PY" >/dev/null; then  # a venv over python3, to use the machine's CUDA torch
        python3 -m venv --system-site-packages "$(dirname "$(dirname "$PY")")"
    fi
    offline() { $PY -m pip install -q --no-index --find-links "$WHEELHOUSE" "$@"; }
    offline -r "$WHEELHOUSE/requirements.txt"
    offline --no-deps "$WHEELHOUSE"/sal_detectron2-*.whl  # its metadata pins numpy<2, wants black
    $PY -c "import torchvision" 2>/dev/null || offline --no-deps torchvision
    offline --no-deps --no-build-isolation -e .
fi

# step NAME LIMIT_S COMMAND...: run it under a time limit, record its exit status, go on.
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@"
    printf '%s\t%s\t%s\n' "$name" "$?" "$((SECONDS - start))" >> "$STATUS"
}

# Own checks: every Python step imports and parses its arguments here.
for script in train_speed kernels mask_head_memory gpu_summary; do
    step "help:$script" 120 $PY "benchmarks/$script.py" --help > /dev/null
done
if [ "$DEVICE" = cuda ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "benchmarks/gpu.sh: needs a CUDA device (torch.cuda.is_available() is False in $PY); DEVICE=cpu runs the benchmarks on the CPU"
    exit 2
fi

if [ "$DEVICE" = cuda ]; then
    CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
    SIZE=800 ITERS=6 REPEATS=1 AMP=--amp QUERIES="200 500" ENTRIES="4096 16384" SCOPES="head step"
    step cuda_tests 170 env IUQ_REQUIRE_CUDA=1 IUQ_REQUIRE_TRITON=1 $PY -m pytest -q -ra -m cuda \
        -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" tests
else
    CARD=cpu SIZE=128 ITERS=1 REPEATS=1 AMP= QUERIES="50" ENTRIES="1024" SCOPES="head"
fi
step train_speed 140 $PY benchmarks/train_speed.py --config-file configs/IUQ-CondInst/MS_R_50_1x.yaml \
    --device "$DEVICE" $AMP --variants condinst bank full \
    --iters "$ITERS" --repeats "$REPEATS" --out "$OUT/train_speed_R50_${CARD}.json" \
    MODEL.WEIGHTS "" MODEL.FCOS.NUM_CLASSES 4 DATASETS.TRAIN "('shapes_train',)" \
    DATASETS.TEST "('shapes_val',)" SOLVER.IMS_PER_BATCH 8 INPUT.MIN_SIZE_TRAIN "($SIZE,)" \
    INPUT.MAX_SIZE_TRAIN 1333
step kernels_inter_scene 40 $PY benchmarks/kernels.py --device "$DEVICE" --queries $QUERIES \
    --entries $ENTRIES --repeats "$REPEATS" --out "$OUT/kernels_${CARD}.json"
step kernels_dense_mask_head 40 $PY benchmarks/kernels.py --op dense_mask_head --device "$DEVICE" \
    --queries $QUERIES --repeats "$REPEATS" --out "$OUT/dense_mask_head_${CARD}.json"
step mask_head_memory 40 $PY benchmarks/mask_head_memory.py --device "$DEVICE" --scopes $SCOPES \
    --impls reference tiled $([ "$DEVICE" = cuda ] && echo triton) \
    --out "$OUT/mask_head_memory_${CARD}.json"
$PY benchmarks/gpu_summary.py --out-dir "$OUT" --card "$CARD"
