#!/usr/bin/env python
"""CPU latency of one image through CondInst: PyTorch eager (detectron2's inference path), the
exported TorchScript module and the exported ONNX graph in onnxruntime.

    python benchmarks/export_latency.py --weights output/demo_shapes_CondInst/model_final.pth
    python benchmarks/export_latency.py --images 4 --repeats 20 --threads 1

The images are shapes validation images resized as DefaultPredictor does (shortest edge
INPUT.MIN_SIZE_TEST), so each has another size. Every backend gets each image twice to warm up
(TorchScript's profiling executor optimises on its second call), then ``--repeats`` timed runs;
the latency of a backend is the median over all timed runs of all images. The detections of the
exports are checked against eager's on the way. Without ``--weights`` the model is randomly
initialised and its detections, and so the mask head's cost, are not representative.
Writes a markdown table to stdout and JSON to benchmarks/results/export_latency_cpu.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import cv2
import numpy as np
import onnxruntime as ort
import torch
from detectron2.data import transforms as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from iuq_d2.data import ensure_shapes  # noqa: E402
from iuq_d2.export import export_config, export_onnx, export_torchscript, load_model  # noqa: E402

DEMO_CONFIG = os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml")


def load_images(cfg, num_images: int, folder: str) -> List[torch.Tensor]:
    """Shapes images (seed 1, as shapes_val) at the test size, [3, H, W] float BGR."""
    with open(ensure_shapes(folder, num_images, 1)) as f:
        names = [i["file_name"] for i in json.load(f)["images"]]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    images = []
    for name in names:
        pixels = cv2.imread(os.path.join(folder, "images", name))
        pixels = resize.get_transform(pixels).apply_image(pixels)
        images.append(torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float())
    return images


def time_backend(
    run: Callable[[torch.Tensor], List[np.ndarray]], images: List[torch.Tensor], repeats: int
) -> Dict[str, object]:
    times, outputs = [], []
    for image in images:
        for _ in range(2):
            result = run(image)
        outputs.append(result)
        for _ in range(repeats):
            start = time.perf_counter()
            run(image)
            times.append(1000 * (time.perf_counter() - start))
    return {"times_ms": times, "outputs": outputs}


def max_differences(expected: List[List[np.ndarray]], actual: List[List[np.ndarray]]) -> dict:
    """Largest box and score differences and smallest mask pixel agreement over the images;
    None where the detections differ in number or classes."""
    boxes, scores, agreement = 0.0, 0.0, 1.0
    for e, a in zip(expected, actual):
        if e[1].shape != a[1].shape or not np.array_equal(e[2], a[2]):
            return {"same_detections": False}
        if len(e[1]):
            boxes = max(boxes, float(np.abs(e[0] - a[0]).max()))
            scores = max(scores, float(np.abs(e[1] - a[1]).max()))
            agreement = min(agreement, float((e[3] == a[3]).mean()))
    return {
        "same_detections": True,
        "max_box_diff_px": boxes,
        "max_score_diff": scores,
        "min_mask_pixel_agreement": agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--weights", default="", help="checkpoint (default: random weights)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output", default=os.path.join(REPO, "benchmarks", "results", "export_latency_cpu.json")
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = export_config(args.config_file, args.weights)
    model = load_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        images = load_images(cfg, args.images, os.path.join(tmp, "shapes"))
        onnx_path, ts_path = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.ts")
        export_onnx(model, images[0], onnx_path)
        export_torchscript(model, images[0], ts_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        traced = torch.jit.load(ts_path)

    def eager(image: torch.Tensor) -> List[np.ndarray]:
        inst = model([{"image": image}])[0]["instances"]
        fields = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks)
        return [x.numpy() for x in fields]

    backends = {
        "pytorch eager": eager,
        "torchscript": lambda image: [x.numpy() for x in traced(image)],
        "onnxruntime": lambda image: session.run(None, {"image": image.numpy()}),
    }
    with torch.no_grad():
        results = {name: time_backend(run, images, args.repeats) for name, run in backends.items()}

    base = statistics.median(results["pytorch eager"]["times_ms"])
    rows = []
    for name, result in results.items():
        median = statistics.median(result["times_ms"])
        row = {"backend": name, "median_ms": median, "speedup_vs_eager": base / median}
        if name != "pytorch eager":
            row.update(max_differences(results["pytorch eager"]["outputs"], result["outputs"]))
        rows.append(row)

    sizes = [list(image.shape[1:]) for image in images]
    detections = [len(o[1]) for o in results["pytorch eager"]["outputs"]]
    print(f"\n{len(images)} images {sizes}, detections {detections}, {args.threads} thread(s)\n")
    print("| backend | median ms | speedup vs eager |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['backend']} | {row['median_ms']:.1f} | {row['speedup_vs_eager']:.2f}x |")
    summary = {
        "device": f"{platform.machine()} ({args.threads} thread)",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "config": os.path.relpath(args.config_file, REPO),
        "weights": args.weights or "random",
        "image_sizes": sizes,
        "detections": detections,
        "repeats_per_image": args.repeats,
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
