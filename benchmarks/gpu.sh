#!/usr/bin/env bash
# The GPU evidence of the IUQ and kernels issues in one run of a few minutes: the GPU tests of
# the fused kernels (real CUDA against the references, fp32 and bf16), step time and peak memory
# of the IUQ variants against CondInst at equal IMS_PER_BATCH (R50-FPN from scratch, COCO-like
# 800-pixel images of the embedded synthetic dataset, AMP), each kernel against its reference
# over a grid of sizes, and the mask head's memory in a CondInst R-50 step. JSON files named
# after the card go to OUT_DIR.
#
#     bash benchmarks/gpu.sh [OUT_DIR]        # default benchmarks/results
#
# Needs an environment with a CUDA build of torch and iuq_d2 installed (PY, default .venv/bin/python).
# DEVICE=cpu MIN_SIZE=160 ITERS=2 REPEATS=1 runs the same on a CPU, as a smoke test of the script.
#
# On a GPU machine without network (the device tool's): build the wheelhouse here first,
#     python scripts/make_wheelhouse.py          # -> wheelhouse/ (git-ignored), about 46 MiB
# (where the machine lacks torchvision: --torchvision 0.26.0 --max-mib 54, for torch 2.11)
# and carry it with the repository: run(command="bash benchmarks/gpu.sh $OUT",
# carry=["wheelhouse"]). When detectron2 does not import in PY, iuq_d2 is then installed offline
# from WHEELHOUSE (default wheelhouse) into PY; a missing PY is first made a venv over the
# machine's python3 with --system-site-packages, so that its CUDA torch is the one used.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
MIN_SIZE=${MIN_SIZE:-800}
ITERS=${ITERS:-8}
REPEATS=${REPEATS:-2}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
mkdir -p "$OUT"

if [ -d "$WHEELHOUSE" ] && ! $PY -c "import detectron2" 2>/dev/null; then
    if ! command -v $PY >/dev/null; then  # a venv over python3, to use the machine's CUDA torch
        python3 -m venv --system-site-packages "$(dirname "$(dirname "$PY")")"
    fi
    offline() { $PY -m pip install --no-index --find-links "$WHEELHOUSE" "$@"; }
    offline -r "$WHEELHOUSE/requirements.txt"
    offline --no-deps "$WHEELHOUSE"/sal_detectron2-*.whl  # its metadata pins numpy<2, wants black
    # torch is never shipped; torchvision only with make_wheelhouse.py --torchvision.
    $PY -c "import torchvision" 2>/dev/null || offline --no-deps torchvision
    offline --no-deps --no-build-isolation -e .
fi

if [ "$DEVICE" = cuda ]; then
    CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
    AMP=--amp
else
    CARD=cpu
    AMP=
fi

$PY benchmarks/train_speed.py --config-file configs/IUQ-CondInst/MS_R_50_1x.yaml \
    --device "$DEVICE" $AMP --variants condinst bank equi_paired equi_extra full \
    --iters "$ITERS" --repeats "$REPEATS" --out "$OUT/train_speed_R50_${CARD}.json" \
    MODEL.WEIGHTS "" MODEL.FCOS.NUM_CLASSES 4 DATASETS.TRAIN "('shapes_train',)" \
    SOLVER.IMS_PER_BATCH 8 INPUT.MIN_SIZE_TRAIN "($MIN_SIZE,)" INPUT.MAX_SIZE_TRAIN 1333

if [ "$DEVICE" = cuda ]; then
    $PY -m pytest -q -ra tests/test_inter_scene_ops.py tests/test_dense_mask_head.py -k "gpu or cuda"
fi

$PY benchmarks/kernels.py --device "$DEVICE" --queries 200 500 --entries 4096 16384 \
    --repeats "$REPEATS" --out "$OUT/kernels_${CARD}.json"
$PY benchmarks/kernels.py --op dense_mask_head --device "$DEVICE" --queries 100 500 \
    --repeats "$REPEATS" --out "$OUT/dense_mask_head_${CARD}.json"
$PY benchmarks/mask_head_memory.py --device "$DEVICE" --impls reference tiled \
    $([ "$DEVICE" = cuda ] && echo triton) --out "$OUT/mask_head_memory_${CARD}.json"
