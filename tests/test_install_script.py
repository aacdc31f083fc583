"""Offline tests of scripts/install_detectron2.py.

No test touches the network: wheels are built in tmp_path, pip installs only local files with
--no-index, and runs of the script that could call pip get a stand-in ``pip`` module that
records its arguments instead.
"""

import base64
import csv
import email.parser
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_detectron2.py"

FAKE_SO = "fakepkg/_C.cpython-310-x86_64-linux-gnu.so"
FAKE_INIT = b"try:\n    from . import _C\nexcept ImportError:\n    _C = None\nVALUE = 42\n"
FAKE_DIST_INFO = "fakepkg-1.0.dist-info"


def load_script():
    spec = importlib.util.spec_from_file_location("install_detectron2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256_entry(data: bytes) -> str:
    # Computed here rather than with the script's helper, so that a wrong helper fails the test.
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def build_binary_wheel(directory: Path, name: str = "fakepkg", version: str = "1.0") -> Path:
    """A wheel shaped like sal-detectron2's: CPython 3.10 tags and a compiled module inside."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": FAKE_INIT.replace(b"fakepkg", name.encode()),
        f"{name}/_C.cpython-310-x86_64-linux-gnu.so": b"\x7fELF not really a shared object",
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        # Real WHEEL files end with a blank line, like an email header block.
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: setuptools (75.6.0)\n"
            b"Root-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n\n"
        ),
        f"{dist_info}/top_level.txt": f"{name}\n".encode(),
    }
    record = "".join(f"{n},{sha256_entry(d)},{len(d)}\n" for n, d in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    path = directory / f"{name}-{version}-cp310-cp310-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return path


@pytest.fixture()
def pure_wheel(tmp_path):
    src = build_binary_wheel(tmp_path)
    dst = tmp_path / "out" / "fakepkg-1.0-py3-none-any.whl"
    load_script().make_pure(src, dst)
    return src, dst


def test_make_pure_drops_compiled_files(pure_wheel):
    src, dst = pure_wheel
    with zipfile.ZipFile(dst) as zf:
        names = zf.namelist()
        assert not [n for n in names if n.endswith(".so")]
        assert FAKE_SO not in names
        # Everything else is carried over unchanged.
        with zipfile.ZipFile(src) as zsrc:
            for name in ("fakepkg/__init__.py", f"{FAKE_DIST_INFO}/METADATA"):
                assert zf.read(name) == zsrc.read(name)


def test_make_pure_retags_wheel(pure_wheel):
    _, dst = pure_wheel
    with zipfile.ZipFile(dst) as zf:
        text = zf.read(f"{FAKE_DIST_INFO}/WHEEL").decode()
    # Parsed the way pip and other installers read it: headers end at the first blank line.
    wheel = email.parser.Parser().parsestr(text)
    assert wheel.get_all("Tag") == ["py3-none-any"], repr(text)
    assert wheel.get_all("Root-Is-Purelib") == ["true"]
    assert wheel.get_all("Wheel-Version") == ["1.0"]
    assert not wheel.get_payload().strip(), f"text after the headers: {text!r}"


def test_make_pure_record_matches_contents(pure_wheel):
    _, dst = pure_wheel
    record_name = f"{FAKE_DIST_INFO}/RECORD"
    with zipfile.ZipFile(dst) as zf:
        names = zf.namelist()
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        listed = [row[0] for row in rows]
        assert sorted(listed) == sorted(names)
        assert len(listed) == len(set(listed)), "a file is listed more than once"
        for path, digest, size in rows:
            if path == record_name:
                assert (digest, size) == ("", "")
                continue
            data = zf.read(path)
            assert digest == sha256_entry(data), path
            assert size == str(len(data)), path


def test_pure_wheel_installs_and_imports(pure_wheel, tmp_path):
    _, dst = pure_wheel
    target = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(dst),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(target.rglob("*.so"))
    probe = "import fakepkg; print(fakepkg.VALUE, fakepkg._C, fakepkg.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert out.returncode == 0, out.stderr
    value, compiled, location = out.stdout.split()
    assert (value, compiled) == ("42", "None")
    assert Path(location).is_relative_to(target)


def fake_pip_env(tmp_path, download_wheel=None):
    """Environment whose ``python -m pip`` logs its arguments (and can 'download' a wheel)."""
    shadow = tmp_path / "fake_pip"
    (shadow / "pip").mkdir(parents=True, exist_ok=True)
    (shadow / "pip" / "__init__.py").write_text("")
    (shadow / "pip" / "__main__.py").write_text(
        textwrap.dedent("""\
        import json, os, shutil, sys
        args = sys.argv[1:]
        with open(os.environ["FAKE_PIP_LOG"], "a") as f:
            f.write(json.dumps(args) + "\\n")
        if args[0] == "download":
            shutil.copy(os.environ["FAKE_PIP_WHEEL"], args[args.index("-d") + 1])
        """)
    )
    env = {
        **os.environ,
        "FAKE_PIP_LOG": str(tmp_path / "pip.log"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")])),
    }
    if download_wheel is not None:
        env["FAKE_PIP_WHEEL"] = str(download_wheel)
    return env


def pip_calls(tmp_path):
    log = tmp_path / "pip.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_main_keeps_importable_detectron2(tmp_path):
    # Guard first: without detectron2 the script would go on to install one.
    assert importlib.util.find_spec("detectron2") is not None, "this environment lacks detectron2"
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        env=fake_pip_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "leaving it as it is" in result.stdout
    assert "+ " not in result.stdout
    assert pip_calls(tmp_path) == []
    assert not cache.exists()


def test_main_force_repacks_and_installs(tmp_path):
    """The install path, offline: the 'downloaded' wheel is repacked into the cache, installed."""
    module = load_script()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    source = build_binary_wheel(downloads, name="sal_detectron2", version="0.7.2")
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(cache), "--force"],
        capture_output=True,
        text=True,
        env=fake_pip_env(tmp_path, download_wheel=source),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    repacked = cache / module.REPACKED_NAME
    with zipfile.ZipFile(repacked) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]
        wheel = email.parser.Parser().parsestr(
            zf.read("sal_detectron2-0.7.2.dist-info/WHEEL").decode()
        )
        assert wheel.get_all("Tag") == ["py3-none-any"]

    download, install_wheel, install_requirements = pip_calls(tmp_path)
    assert download[0] == "download" and module.SOURCE in download
    assert download[download.index("--python-version") + 1] == module.SOURCE_PYTHON
    assert install_wheel == ["install", "--no-deps", str(repacked)]
    assert install_requirements == ["install", *module.RUNTIME_REQUIREMENTS]

    # A second run reuses the cached wheel instead of downloading again.
    (tmp_path / "pip.log").unlink()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(cache), "--force"],
        capture_output=True,
        text=True,
        env=fake_pip_env(tmp_path, download_wheel=source),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [call[0] for call in pip_calls(tmp_path)] == ["install", "install"]
