#!/usr/bin/env python3
"""Install detectron2's Python package into the running interpreter, only if none is importable.

detectron2's authors publish no wheel on PyPI. The registry does hold ``sal-detectron2``, a
CPython 3.10 wheel of detectron2's main branch (``detectron2.__version__ == "0.7.2"``) bundled
with a compiled ``detectron2/_C`` that cannot load elsewhere. Nothing iuq_d2 uses needs ``_C``,
so this script downloads that wheel, drops the compiled module, retags the wheel as pure Python
(``py3-none-any``) and installs it without its declared requirements (it pins ``numpy<2`` and
asks for ``black``, neither of which detectron2 needs at run time), followed by the packages
detectron2 really imports. A detectron2 that is already importable, e.g. one built with CUDA on
a cluster, is left untouched.

Usage: python scripts/install_detectron2.py [--cache-dir DIR] [--force]
"""

import argparse
import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SOURCE = "sal-detectron2==0.7.2"
SOURCE_PYTHON = "3.10"
REPACKED_NAME = "sal_detectron2-0.7.2-py3-none-any.whl"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iuq_d2"
# What detectron2 imports at run time (its own metadata, minus numpy<2 and black).
RUNTIME_REQUIREMENTS = [
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "pycocotools>=2.0.2",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "matplotlib",
    "tensorboard",
    "Pillow>=7.1",
    "packaging",
    "setuptools<81",  # detectron2.model_zoo imports pkg_resources, removed in setuptools 81
]


def record_hash(data: bytes) -> str:
    """The ``sha256=<urlsafe b64, unpadded>`` form that wheel RECORD files use."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def make_pure(src: Path, dst: Path) -> None:
    """Write a copy of wheel ``src`` at ``dst`` without compiled ``.so`` files, tagged py3-none-any.

    The RECORD file is rewritten so that it lists exactly the files kept, with fresh hashes for
    the ones this function changes (WHEEL).
    """
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
        kept = {}
        for name in names:
            if name.endswith(".so") or name == f"{dist_info}/RECORD":
                continue
            data = zin.read(name)
            if name == f"{dist_info}/WHEEL":
                data = _retag(data.decode()).encode()
            kept[name] = data
    record_lines = [f"{n},{record_hash(d)},{len(d)}" for n, d in kept.items()]
    record_lines.append(f"{dist_info}/RECORD,,")
    kept[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in kept.items():
            zout.writestr(name, data)
    os.replace(tmp, dst)


def _retag(wheel_text: str) -> str:
    lines = []
    for line in wheel_text.splitlines():
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: true"
        elif line.startswith("Tag:") or not line.strip():
            continue  # a blank line ends the header: the new tag must come before it
        lines.append(line)
    lines.append("Tag: py3-none-any")
    return "\n".join(lines) + "\n"


def repacked_wheel(cache_dir: Path) -> Path:
    """The pure-Python detectron2 wheel in ``cache_dir``, downloaded and repacked on first use."""
    repacked = cache_dir / REPACKED_NAME
    if not repacked.exists():
        with tempfile.TemporaryDirectory() as tmp:
            pip(
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                SOURCE_PYTHON,
                "-d",
                tmp,
                SOURCE,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            make_pure(wheel, repacked)
    return repacked


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--force", action="store_true", help="install even if detectron2 imports")
    args = parser.parse_args()

    if importlib.util.find_spec("detectron2") is not None and not args.force:
        import detectron2

        print(
            f"detectron2 {detectron2.__version__} already importable from "
            f"{os.path.dirname(detectron2.__file__)}; leaving it as it is."
        )
        return 0

    pip("install", "--no-deps", str(repacked_wheel(args.cache_dir)))
    pip("install", *RUNTIME_REQUIREMENTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
