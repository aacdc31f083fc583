#!/usr/bin/env python
"""Peak memory and losses of one CondInst training step with each mask-head implementation.

    python benchmarks/mask_head_memory.py --out benchmarks/results/mask_head_memory_cpu.json

CondInst R-50 (configs/CondInst/MS_R_50_1x.yaml, random weights) on one 800 x 1088 image with
20 instances and MODEL.CONDINST.MAX_PROPOSALS 500: the setting of the kernels issue's memory
target. Each implementation runs in its own subprocess, so that peaks do not leak between them;
peak = rise of the process's peak resident set size over its value after building the model and
the input (CPU), or torch.cuda.max_memory_allocated (CUDA). Prints a table and writes JSON.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "CondInst", "MS_R_50_1x.yaml")


def one_step(impl: str, device: str) -> dict:
    import torch
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances, PolygonMasks
    from detectron2.utils.events import EventStorage

    from iuq_d2.engine.config_loader import load_config

    torch.manual_seed(0)
    torch.set_num_threads(1)
    opts = [
        "MODEL.WEIGHTS",
        "",
        "MODEL.DEVICE",
        device,
        "MODEL.CONDINST.MAX_PROPOSALS",
        "500",
        "MODEL.CONDINST.MASK_HEAD.IMPL",
        impl,
    ]
    model = build_model(load_config(CONFIG, opts))
    g = torch.Generator().manual_seed(0)
    h, w = 800, 1088
    xy = torch.rand(20, 2, generator=g) * torch.tensor([w - 200.0, h - 200.0])
    size = 40 + torch.rand(20, 2, generator=g) * 160
    boxes = torch.cat([xy, xy + size], dim=1)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 80, (20,), generator=g)
    inst.gt_masks = PolygonMasks(
        [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
    )
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    batch = [{"image": image, "instances": inst, "height": h, "width": w}]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "impl": impl,
        "peak_mb": peak / 2**20,
        "losses": {k: v.item() for k, v in losses.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["reference", "tiled"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_step(args.child, args.device)))
        return
    rows = []
    for impl in args.impls:
        out = subprocess.run(
            [sys.executable, __file__, "--child", impl, "--device", args.device],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(
            json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
        )
    ref = rows[0]
    print("| impl | peak MB | vs first | loss_mask | total loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        total = sum(r["losses"].values())
        print(
            f"| {r['impl']} | {r['peak_mb']:.0f} | {r['peak_mb'] / ref['peak_mb']:.2f} | "
            f"{r['losses']['loss_mask']:.6f} | {total:.6f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"device": args.device, "config": os.path.relpath(CONFIG, REPO), "rows": rows},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
