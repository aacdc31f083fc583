"""Write a deployable checkpoint from an IUQ-CondInst training checkpoint.

The result holds only the model weights, without the query bank (a training-only memory of
about 100k pixels) and without optimizer, scheduler or iteration state, so that plain CondInst
loads it with no unexpected keys:

    python -m iuq_d2.strip_checkpoint output/iuq/model_final.pth model_deploy.pth
"""

import argparse
from typing import Any, Dict, List, Optional

import torch

from .engine.checkpoint import atomic_write
from .modeling.iuq import TRAINING_ONLY_PREFIXES


def strip_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Model weights of ``checkpoint`` (a detectron2 checkpoint or a bare state_dict) minus the
    training-only buffers."""
    weights = checkpoint.get("model", checkpoint)
    return {"model": {k: v for k, v in weights.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="checkpoint written by training (.pth)")
    parser.add_argument("output", help="where to write the deployable checkpoint (.pth)")
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    stripped = strip_checkpoint(checkpoint)
    atomic_write(args.output, lambda f: torch.save(stripped, f))
    dropped = len(checkpoint.get("model", checkpoint)) - len(stripped["model"])
    print(
        f"wrote {args.output}: {len(stripped['model'])} tensors kept, "
        f"{dropped} training-only dropped"
    )


if __name__ == "__main__":
    main()
