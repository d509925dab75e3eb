"""The CornerPool CUDA kernels on torch CUDA tensors, without TensorRT (for tests and benchmarks).

Loads ``libcornerpool_kernels.so`` (built on first use, see :mod:`trt_plugins.build`) with ctypes and calls its
C entry point ``cornerPoolForward`` on the current torch CUDA stream.
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch

from trt_plugins.fields import MODES

#: torch dtype -> ``CornerPoolDataType`` code of ``cornerPoolKernel.cuh``.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_INT32_MAX = 2**31 - 1

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def open_library(path: str | os.PathLike[str]) -> ctypes.CDLL:
    """Open a kernel library with ctypes and declare its C entry points' signatures."""
    library = ctypes.CDLL(os.fspath(path))
    library.cornerPoolForward.argtypes = (
        [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_void_p]
    )
    library.cornerPoolForward.restype = ctypes.c_int
    library.cornerPoolErrorString.argtypes = [ctypes.c_int]
    library.cornerPoolErrorString.restype = ctypes.c_char_p
    return library


def load_library() -> ctypes.CDLL:
    """The kernel library (opened once), built first if missing or stale (needs nvcc, not a GPU)."""
    global _library
    with _lock:
        if _library is None:
            from trt_plugins import build

            _library = open_library(build.ensure_kernel_library())
        return _library


def _mode_value(mode: str | int) -> int:
    if isinstance(mode, str) and mode in MODES:
        return MODES[mode]
    if isinstance(mode, int) and mode in MODES.values():
        return mode
    raise ValueError(f"mode must be one of {sorted(MODES)} or 0-3, got {mode!r}")


def corner_pool(x: torch.Tensor, mode: str | int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Corner pooling with our CUDA kernel.

    Args:
        x: ``[N, C, H, W]`` CUDA tensor, float32, float16 or bfloat16 (made contiguous if it is not).
        mode: ``"top"``, ``"bottom"``, ``"left"``, ``"right"`` or its number in :data:`~trt_plugins.fields.MODES`.
        out: optional contiguous output like ``x``; must not share memory with ``x``.

    Returns:
        ``[N, C, H, W]`` tensor of ``x``'s dtype: e.g. for ``top``, ``out[..., h, w] = max(x[..., h:, w])``;
        bit-identical to ``trainer.model.corner_pool`` (mmdet's ``flip + torch.cummax + flip``).
    """
    mode_value = _mode_value(mode)
    if not x.is_cuda or x.dtype not in DTYPE_CODES or x.dim() != 4:
        raise ValueError(
            f"expected a 4-D float32/float16/bfloat16 CUDA tensor, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of x's shape, dtype and device")
    n, c, h, w = x.shape
    if max(n, c, h, w) > _INT32_MAX:
        raise ValueError(f"each dimension must fit in int32, got {tuple(x.shape)}")
    library = load_library()
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        code = library.cornerPoolForward(
            x.data_ptr(), out.data_ptr(), DTYPE_CODES[x.dtype], n, c, h, w, mode_value, stream
        )
    if code != 0:
        raise RuntimeError(
            f"cornerPoolForward failed: {library.cornerPoolErrorString(code).decode()} ({code})"
        )
    return out
