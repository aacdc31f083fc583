"""Packaging for iuq_d2.

detectron2 is deliberately absent from ``install_requires``: it is not published on PyPI, so pip
could not resolve it. ``scripts/install_detectron2.py`` (run by ``make install``) provides it, or
keeps the one a user already has (e.g. a CUDA build on a cluster).
"""

import os

from setuptools import find_packages, setup


def read_readme():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


setup(
    name="iuq_d2",
    version="0.1.0",
    description="CondInst with Instance-Unique Querying training, as a detectron2 extension",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["iuq_d2", "iuq_d2.*"]),
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "submitit",
        "numpy",
        "Pillow",
        "matplotlib",
        "termcolor",
        "tabulate",
        "yacs",
        "shapely",  # detectron2 crops polygon masks with it (equivariance views, INPUT.CROP)
    ],
    # Triton (a torch dependency on Linux) compiles the fused kernels at first use: nothing here
    # is compiled at install time.
    extras_require={
        # iuq_d2.export: ONNX export and its onnxruntime check; the tests run that check.
        "export": ["onnx", "onnxruntime"],
        # scikit-image: the independent LAB conversion BoxInst's colour similarity is tested on.
        # pytest-timeout: a deadlocked multi-process test fails instead of hanging (pytest.ini).
        "test": ["pytest", "pytest-timeout", "ruff", "onnx", "onnxruntime", "scikit-image"],
    },
    entry_points={"console_scripts": ["iuq_d2-slurm = iuq_d2.engine.slurm.submit:main"]},
    zip_safe=False,
)
