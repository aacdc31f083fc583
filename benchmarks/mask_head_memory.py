#!/usr/bin/env python
"""Peak memory and losses of CondInst's mask head and loss, and of a whole training step, for
each mask-head implementation.

    python benchmarks/mask_head_memory.py --out benchmarks/results/mask_head_memory_cpu.json

CondInst R-50 (configs/CondInst/MS_R_50_1x.yaml, random weights) on one 800 x 1088 image with
20 instances and MODEL.CONDINST.MAX_PROPOSALS 500: the setting of the kernels issue's memory
target. Scopes:

* ``step``: forward and backward of the whole model;
* ``head``: the mask loss alone (dense head, upsampling, dice) and its backward, on the step's
  mask features and queries taken as leaves;
* ``step_1_query``: the whole step with MAX_PROPOSALS 1, the floor that no mask head can go
  below, since the backbone's activations peak there.

Each (scope, implementation) runs in its own subprocess, so that peaks do not leak between
them. Peak = rise of the process's peak resident set size over its value just before the
measured part (CPU: VmHWM after resetting it through /proc/self/clear_refs, Linux), or
torch.cuda.max_memory_allocated (CUDA). On CPU the children run with
MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns every freed tensor to the system at once:
with its adaptive default, freed blocks stay in the heap and the peak RSS moved by more than
the head's whole footprint between identical runs. Prints a table and writes JSON.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "CondInst", "MS_R_50_1x.yaml")


def one_step(impl: str, device: str, scope: str) -> dict:
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
        "1" if scope == "step_1_query" else "500",
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
    with EventStorage():
        if scope == "head":
            images = model.preprocess_image(batch)
            gt_instances = model.prepare_targets(batch, images)
            with torch.no_grad():
                outputs = model.forward_train(images, gt_instances)
            feats = outputs.mask_feats.detach().requires_grad_(True)
            queries = outputs.queries
            queries.mask_head_params = queries.mask_head_params.detach().requires_grad_(True)
            del outputs
        base = _peak_start(device)
        if scope == "head":
            losses = {"loss_mask": model.mask_loss(feats, queries, gt_instances)}
        else:
            losses = model(batch)
        sum(losses.values()).backward()
        peak = _peak_end(device, base)
    return {
        "scope": scope,
        "impl": impl,
        "peak_mb": peak / 2**20,
        "losses": {k: v.item() for k, v in losses.items()},
    }


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _peak_start(device: str) -> int:
    """Reset the peak counter and return the memory in use now."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    # Linux: "5" resets the process's peak resident set size (VmHWM) to the current one.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _peak_end(device: str, base: int) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _status_bytes("VmHWM") - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["reference", "tiled"])
    parser.add_argument("--scopes", nargs="+", default=["head", "step", "step_1_query"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_step(args.child[0], args.device, args.child[1])))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for scope in args.scopes:
        # The floor does not depend on the head: measured once, with the first implementation.
        for impl in args.impls[:1] if scope == "step_1_query" else args.impls:
            cmd = [sys.executable, __file__, "--child", impl, scope, "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            rows.append(json.loads(line[7:]))
    print("| scope | impl | peak MB | vs reference | loss_mask | total loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["scope"] == r["scope"] and x["impl"] == "reference"), r)
        total = sum(r["losses"].values())
        print(
            f"| {r['scope']} | {r['impl']} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] / ref['peak_mb']:.2f} | {r['losses']['loss_mask']:.6f} | "
            f"{total:.6f} |"
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
