"""Lazy access to TensorRT and cuda-python, shared by the engine builder and the TensorRT backend.

Both are imported only when called, so everything else runs where they are absent; cuda-python calls
return ``(err, value...)`` tuples, which :func:`cuda_check` turns into one-line errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.engine_sidecar import GpuInfo
from runtime.errors import UserError


def parse_cuda_device(device: str | None) -> int:
    """``None``/``"cuda"`` -> 0, ``"cuda:N"`` -> N; anything else is a ``UserError`` (TensorRT is CUDA only)."""
    if device is None or device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise UserError(
        f"--device {device}: TensorRT engines run on CUDA GPUs only; use --device cuda[:N], or the .onnx/.pth model on CPU"
    )


def import_tensorrt() -> Any:
    """``import tensorrt``, or a ``UserError`` saying why it failed and how to install it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError for a missing libnvinfer
        raise UserError(
            f"TensorRT is not available (`import tensorrt` failed: {_first_line(e)}); on a machine with an NVIDIA GPU: pip install -e '.[gpu]'"
        ) from None
    return trt


def import_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python), or a ``UserError``."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as e:  # ImportError, or a missing CUDA library
        raise UserError(
            f"cuda-python is not available (`from cuda.bindings import runtime` failed: {_first_line(e)}); pip install cuda-python"
        ) from None
    return cudart


def numpy_dtype(trt: Any, dtype: Any, tensor: str, where: object = "the network") -> np.dtype:
    """The numpy dtype of a TensorRT tensor type, or a ``UserError``: ``trt.nptype`` knows no bf16/fp8/int4."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise UserError(
            f"{where}: tensor '{tensor}' has type {dtype}, which has no numpy equivalent; "
            "export the model with float32 or float16 inputs and outputs"
        ) from None


def cuda_check(cudart: Any, result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result: raise ``RuntimeError`` naming ``what`` on error.

    Returns ``None``, the single value, or a tuple of values.
    """
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA error in {what}: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device_count(cudart: Any) -> tuple[int, str | None]:
    """``(count, None)``, or ``(0, error name)`` when there is no driver or no device (it does not raise)."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        return 0, name.decode() if isinstance(name, bytes) else str(name)
    return int(count), None


def gpu_info(cudart: Any, device: int) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``."""
    prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")


def select_cuda_device(cudart: Any, device: str | None) -> int:
    """Parse ``--device``, check the GPU exists and make it current; ``UserError`` otherwise."""
    index = parse_cuda_device(device)
    count, err = cuda_device_count(cudart)
    if err is not None or count == 0:
        raise UserError(
            f"no CUDA device ({err or 'cudaGetDeviceCount returned 0'}); TensorRT needs an NVIDIA GPU and driver"
        )
    if index >= count:
        raise UserError(
            f"--device {device}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})"
        )
    cuda_check(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
    return index


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here (for test skips and messages), or ``None`` when they can."""
    try:
        import_tensorrt()
        cudart = import_cudart()
    except UserError as e:
        return str(e)
    count, err = cuda_device_count(cudart)
    if err is not None or count == 0:
        return f"no CUDA device (cudaGetDeviceCount: {err or 0})"
    return None


_LOGGER: Any = None


def trt_logger(trt: Any, verbose: bool = False) -> Any:
    """One ``trt.Logger`` per process (TensorRT warns when builder and runtime get different loggers)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    _LOGGER.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return _LOGGER


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
