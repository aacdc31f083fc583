#!/usr/bin/env python
"""The one JSON of a benchmarks/gpu.sh run: the card, the versions, each step's exit status and
time, each CUDA test's outcome, and every figure the benchmark steps wrote."""

import argparse
import json
import os
import platform
import xml.etree.ElementTree as ET
from typing import Dict, List


def versions() -> Dict[str, str]:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    found["cuda"] = str(torch.version.cuda)
    for name in ("triton", "detectron2", "numpy"):
        try:
            found[name] = __import__(name).__version__
        except Exception as e:  # recorded, not fatal: the summary must still be written
            found[name] = f"not importable: {type(e).__name__}"
    if torch.cuda.is_available():
        found["device"] = torch.cuda.get_device_name(0)
        found["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return found


def test_outcomes(path: str) -> Dict[str, List[str]]:
    outcomes: Dict[str, List[str]] = {"passed": [], "failed": [], "skipped": []}
    if not os.path.exists(path):
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes["failed"].append(name)
        elif case.find("skipped") is not None:
            outcomes["skipped"].append(name)
        else:
            outcomes["passed"].append(name)
    return outcomes


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--card", required=True)
    args = parser.parse_args()
    steps = []
    with open(os.path.join(args.out_dir, "gpu_steps.tsv")) as f:
        for line in f:
            name, status, seconds = line.rstrip("\n").split("\t")
            steps.append({"step": name, "exit_status": int(status), "seconds": int(seconds)})
    figures = {}
    for name in sorted(os.listdir(args.out_dir)):
        if name.endswith(f"_{args.card}.json") and not name.startswith("gpu_"):
            with open(os.path.join(args.out_dir, name)) as f:
                figures[name] = json.load(f)
    summary = {
        "card": args.card,
        "versions": versions(),
        "steps": steps,
        "tests": test_outcomes(os.path.join(args.out_dir, "gpu_tests.xml")),
        "figures": figures,
    }
    path = os.path.join(args.out_dir, f"gpu_{args.card}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    failed = [s["step"] for s in steps if s["exit_status"] != 0]
    print(
        f"wrote {path}; steps failed: {failed or 'none'}; tests: "
        + ", ".join(f"{len(v)} {k}" for k, v in summary["tests"].items())
    )
    return summary


if __name__ == "__main__":
    main()
