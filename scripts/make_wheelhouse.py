#!/usr/bin/env python3
"""Build a wheelhouse from which benchmarks/gpu.sh installs iuq_d2 on a GPU machine offline.

The GPU machine that runs benchmarks/gpu.sh has CPython 3.12 on x86-64 Linux with a CUDA build of
torch (and usually torchvision), nvcc, ninja and pytest, but no detectron2, none of iuq_d2's other
requirements and no network. The repository travels there with at most 64 MiB in all. This
script fills one folder (default ``wheelhouse/``, git-ignored) with what the GPU run installs:

* detectron2, repacked as pure Python by ``scripts/install_detectron2.py``;
* wheels for CPython 3.12 on manylinux x86_64 of the run-time requirements of detectron2 and
  iuq_d2 and of their dependencies, minus what the machine has (torch, torchvision, triton, the
  nvidia-* and cuda-* packages) and minus what neither ``import iuq_d2`` nor the benchmarks and
  tests that gpu.sh runs import while it costs many MiB (matplotlib, tensorboard; the onnx
  extras, ruff);
* ``requirements.txt``, the list that gpu.sh installs from the folder;
* with ``--torchvision VERSION``, PyPI's torchvision wheel (a CUDA build, without its
  dependencies), for a machine that lacks torchvision; with ``--leave-out``, fewer wheels, for
  a machine known to have those packages.

OpenCV, NumPy and Pillow alone would exceed the budget as published, so wheels over 1 MiB are
rewritten with LZMA compression (pip unpacks every zip method Python's zipfile reads) and without
their test suites and OpenCV's face-detection data, and opencv-python-headless and Pillow are
capped below releases with larger wheels. The script prints every wheel and the total, and fails
when the total exceeds --max-mib.

Usage: python scripts/make_wheelhouse.py [--out DIR] [--max-mib 48] [--torchvision 0.26.0]
                                         [--leave-out NAME ...]
"""

import argparse
import ast
import csv
import io
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, List

from install_detectron2 import DEFAULT_CACHE_DIR, RUNTIME_REQUIREMENTS, pip, repacked_wheel

REPO = Path(__file__).resolve().parents[1]
# torch 2.11's own Linux wheels are manylinux_2_28, so the machine's glibc takes these tags too.
PLATFORMS = [
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
]
# The machine's CUDA builds: a wheel from here must never replace them.
ON_MACHINE = {"torch", "torchvision", "triton"}
ON_MACHINE_PREFIXES = ("nvidia-", "cuda-")
# Not imported on the GPU run, and over 10 MiB each with their dependencies.
LEFT_OUT = {"matplotlib", "tensorboard"}
# Published as source only (pure Python): built into wheels here first.
SOURCE_ONLY = ["fvcore>=0.1.5", "iopath>=0.1.7", "antlr4-python3-runtime==4.9.*"]
# For the download only, not written to requirements.txt (a newer release already on the machine
# is fine): opencv-python-headless 4.12 and Pillow 11.3 (bundled AVIF) grew their wheels by 4 and
# 2.5 MiB.
SIZE_CAPS = ["opencv-python-headless<4.12", "pillow<11.3"]
SLIM_ABOVE = 2**20


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(requirement: str) -> str:
    """The canonical distribution name of a requirement string such as ``omegaconf>=2.1,<2.4``."""
    return canonical(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def wheel_dist(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def on_machine(name: str) -> bool:
    return name in ON_MACHINE or name.startswith(ON_MACHINE_PREFIXES)


def setup_requirements() -> List[str]:
    """iuq_d2's ``install_requires``, read from setup.py without running it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py has no install_requires")


# What the CUDA tests need beyond the run-time requirements and the machine's pytest: pytest.ini
# makes pytest-timeout a required plugin.
TEST_PLUGINS = ["pytest-timeout"]


def requirements() -> List[str]:
    """What gpu.sh installs: detectron2's and iuq_d2's run-time requirements and the test
    plugins, for the GPU run."""
    kept: List[str] = []
    for requirement in [*RUNTIME_REQUIREMENTS, *setup_requirements(), *TEST_PLUGINS]:
        name = dist_name(requirement)
        bare_again = canonical(requirement) == name and name in map(dist_name, kept)
        if not (on_machine(name) or name in LEFT_OUT or bare_again or requirement in kept):
            kept.append(requirement)
    return kept


def unused(member: str) -> bool:
    """Members of a wheel that no code imports or reads: test suites, OpenCV's Haar cascades."""
    return "tests" in member.split("/")[:-1] or member.startswith("cv2/data/")


def slim(path: Path) -> None:
    """Rewrite wheel ``path`` in place with LZMA compression and without its ``unused`` members.

    RECORD keeps its rows for the members kept: their contents, and so their hashes, are the same.
    """
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            if unused(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = _record_without_unused(data.decode()).encode()
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_LZMA
            zout.writestr(copy, data)
    os.replace(tmp, path)


def _record_without_unused(text: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(row for row in csv.reader(io.StringIO(text)) if row and not unused(row[0]))
    return out.getvalue()


def pip_download(out: Path, python: str, specs: Iterable[str], *options: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip(
        "download",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(out),
        *options,
        *specs,
    )


def build(
    out: Path, python: str, cache_dir: Path, torchvision: str, leave_out: Iterable[str]
) -> None:
    for old in [*out.glob("*.whl"), out / "requirements.txt"]:
        old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    detectron2 = repacked_wheel(cache_dir)
    (out / detectron2.name).write_bytes(detectron2.read_bytes())

    pip("wheel", "--no-deps", "-w", str(out), *SOURCE_ONLY)
    reqs = requirements()
    with tempfile.TemporaryDirectory() as tmp:
        caps = Path(tmp) / "caps.txt"
        caps.write_text("\n".join(SIZE_CAPS) + "\n")
        pip_download(out, python, reqs, "--find-links", str(out), "-c", str(caps))
    if torchvision:
        pip_download(out, python, [f"torchvision=={torchvision}"], "--no-deps")

    wanted = {"torchvision"} if torchvision else set()
    strays = [
        w.name
        for w in out.glob("*.whl")
        if on_machine(wheel_dist(w)) and wheel_dist(w) not in wanted
    ]
    if strays:
        raise SystemExit(f"a requirement pulled in packages the GPU machine has: {strays}")
    skipped = {canonical(name) for name in leave_out}
    for wheel in out.glob("*.whl"):
        if wheel_dist(wheel) in skipped:
            print(f"leaving out {wheel.name}")
            wheel.unlink()
    for wheel in sorted(out.glob("*.whl")):
        if wheel.stat().st_size > SLIM_ABOVE:
            print(f"slimming {wheel.name}", flush=True)
            slim(wheel)
    header = (
        "# Written by scripts/make_wheelhouse.py; benchmarks/gpu.sh installs it with\n"
        "# pip install --no-index --find-links <this folder> -r requirements.txt, then\n"
        "# detectron2's wheel with --no-deps (its metadata asks for numpy<2 and black).\n"
    )
    (out / "requirements.txt").write_text(header + "\n".join(reqs) + "\n")


def report(out: Path, max_mib: float) -> int:
    files = sorted(p for p in out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.name}")
    print(f"{total / 2**20:8.2f} MiB  total in {out}")
    if total > max_mib * 2**20:
        print(
            f"error: {out} holds {total / 2**20:.1f} MiB, over --max-mib {max_mib:g}; the "
            "repository and the wheelhouse travel to the GPU machine within 64 MiB in all",
            file=sys.stderr,
        )
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "wheelhouse", help="the folder")
    parser.add_argument("--max-mib", type=float, default=48.0, help="fail above this total")
    parser.add_argument(
        "--torchvision",
        default="",
        metavar="VERSION",
        help="add PyPI's torchvision VERSION (0.26.0 goes with torch 2.11; about 6 MiB more)",
    )
    parser.add_argument(
        "--leave-out",
        nargs="+",
        default=[],
        metavar="NAME",
        help="packages the GPU machine is known to have (e.g. numpy pillow, which torchvision "
        "requires): not shipped, still listed in requirements.txt",
    )
    parser.add_argument(
        "--python-version", default="3.12", help="the GPU machine's (another one for tests)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()
    out = args.out.resolve()
    build(out, args.python_version, args.cache_dir, args.torchvision, args.leave_out)
    return report(out, args.max_mib)


if __name__ == "__main__":
    sys.exit(main())
