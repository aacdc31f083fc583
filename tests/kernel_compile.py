"""Ahead-of-time compile of a Triton kernel for a CUDA target, without a GPU, and the register
report of Triton's bundled ptxas: what the kernels' no-spill tests check."""

import os
import re
import subprocess
import tempfile
from typing import List


def compile_for(fn, signature: dict, consts: dict, capability: int, num_warps: int):
    """(compiled kernel, spill bytes reported by ptxas per store/load line, ptxas log)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    signature = {**signature, **{k: "constexpr" for k in consts}}
    compiled = triton.compile(
        triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": num_warps},
    )
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        cubin = os.path.join(tmp, "kernel.cubin")
        cmd = [get_ptxas(capability).path, "-v", f"--gpu-name={arch}", ptx, "-o", cubin]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    spills: List[int] = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return compiled, spills, log
