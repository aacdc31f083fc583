"""Packaging for iuq_d2.

detectron2 is deliberately absent from ``install_requires``: it is not published on PyPI, so pip
could not resolve it. ``scripts/install_detectron2.py`` (run by ``make install``) provides it, or
keeps the one a user already has (e.g. a CUDA build on a cluster).
"""
import glob
import os

from setuptools import find_packages, setup

CSRC_DIR = os.path.join("iuq_d2", "layers", "csrc")


def get_extensions():
    """The optional compiled ``iuq_d2._C``; empty while the package ships no C++/CUDA sources.

    torch is imported only when sources exist, so a pure-Python install needs no torch at build
    time. CUDA kernels are compiled when ``FORCE_CUDA=1`` (e.g. building on a node without a GPU)
    or when a GPU is visible and ``CUDA_HOME`` is set; torch's own guess of the CUDA location
    fails to link on machines where nvcc sits in /usr/local/bin, hence the explicit variable.
    """
    if not os.path.isdir(CSRC_DIR):
        return []

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join(CSRC_DIR, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC_DIR, "**", "*.cu"), recursive=True))
    use_cuda = os.environ.get("FORCE_CUDA") == "1" or (
        torch.cuda.is_available() and bool(os.environ.get("CUDA_HOME"))
    )

    common = dict(include_dirs=[os.path.abspath(CSRC_DIR)])
    if use_cuda and cuda_sources:
        return [
            CUDAExtension(
                "iuq_d2._C",
                cpp_sources + cuda_sources,
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
                **common,
            )
        ]
    if cpp_sources:
        return [CppExtension("iuq_d2._C", cpp_sources, extra_compile_args={"cxx": ["-O3"]}, **common)]
    return []


def read_readme():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


ext_modules = get_extensions()
cmdclass = {}
if ext_modules:
    from torch.utils.cpp_extension import BuildExtension

    cmdclass["build_ext"] = BuildExtension

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
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["iuq_d2-slurm = iuq_d2.engine.slurm.submit:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
