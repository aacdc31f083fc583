"""Triton, when it imports: the fused kernels' one import guard.

Triton is optional: without it (or with a broken install) ``triton`` and ``tl`` are None, the
kernel modules define no kernels, and every op runs on its tiled path. ``INTERPRET`` is read once,
at import, as Triton itself reads ``TRITON_INTERPRET`` when a kernel is decorated: interpreted
kernels accept CPU tensors.
"""

import os
from typing import Optional

try:
    import triton
    import triton.language as tl
except Exception as e:  # ImportError, or a broken install (e.g. no compatible backend)
    triton, tl = None, None
    TRITON_IMPORT_ERROR: Optional[BaseException] = e
else:
    TRITON_IMPORT_ERROR = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

__all__ = ["INTERPRET", "TRITON_IMPORT_ERROR", "tl", "triton", "triton_available"]


def triton_available() -> bool:
    return triton is not None
