#!/usr/bin/env python
"""Fingerprints of the embedded datasets as this environment renders them, and of the test-time
resize: SHA-256 over the first images (pixels, and each instance's class and mask) of each
dataset, and over those images resized to several short sides. Two environments whose prints
agree feed a training the same bytes.

    python benchmarks/data_fingerprint.py --out benchmarks/results/data_fingerprint/NAME.json

To compare library versions without a new environment, put one on the path first, e.g.
``pip install --target /tmp/cv411 --no-deps opencv-python-headless==4.11.0.86`` and run this
with ``PYTHONPATH=/tmp/cv411``.
"""

import argparse
import hashlib
import json
import os

import cv2
import numpy as np
import PIL
from detectron2.data import transforms as T

from iuq_d2.data import cells, shapes

RENDERERS = {"shapes": shapes.render_image, "cells": cells.render_image}
SHORT_SIDES = (160, 176, 192, 224)


def fingerprint(num_images: int, seed: int) -> dict:
    prints = {}
    for name, render in RENDERERS.items():
        pixels, instances, resized = (hashlib.sha256() for _ in range(3))
        for index in range(num_images):
            image, objects = render(seed, index)
            pixels.update(image.tobytes())
            for category, mask in objects:
                instances.update(bytes([category]) + np.packbits(mask).tobytes())
            for side in SHORT_SIDES:
                transform = T.ResizeShortestEdge(side, 10000).get_transform(image)
                resized.update(transform.apply_image(image).tobytes())
        prints[name] = {
            "images": pixels.hexdigest(),
            "instances": instances.hexdigest(),
            "resized": resized.hexdigest(),
        }
    return prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = {
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__, "pillow": PIL.__version__},
        "num_images": args.num_images,
        "seed": args.seed,
        "fingerprints": fingerprint(args.num_images, args.seed),
    }
    print(json.dumps(results, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
