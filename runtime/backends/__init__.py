"""Backends behind one interface, chosen by file suffix; each imports its runtime lazily."""

from __future__ import annotations

from pathlib import Path

from runtime.errors import UserError

from .base import Backend

SUFFIXES = {
    ".pth": "pytorch",
    ".pt": "pytorch",
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
}


def is_served_address(model: object) -> bool:
    """Whether ``model`` names a served model (``grpc://HOST:PORT/NAME`` or ``http://HOST:PORT/NAME``), not a file."""
    return isinstance(model, str) and model.lower().startswith(("grpc://", "http://"))


def backend_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"{path}: unknown model file type '{suffix}'; expected .pth (PyTorch), .onnx (ONNX Runtime) or .plan (TensorRT)"
        )
    return SUFFIXES[suffix]


def open_backend(path: str | Path, device: str | None = None, **kwargs: object) -> Backend:
    """Open ``path`` with the backend its suffix names (``.pth``, ``.onnx``, ``.plan``)."""
    kind = backend_kind(path)
    if not Path(path).is_file():
        raise UserError(f"{path}: model file not found; check the path")
    if kind == "pytorch":
        from .pytorch import PyTorchBackend

        return PyTorchBackend(path, device=device, **kwargs)  # type: ignore[arg-type]
    if kind == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device=device, **kwargs)  # type: ignore[arg-type]
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(path, device=device, **kwargs)  # type: ignore[arg-type]


def backend_options(model: str | Path, cuda_graph: bool = False, plugin: str | None = None) -> dict[str, object]:
    """The backend options a command's flags mean for ``model``: ``--cuda-graph`` and ``--plugin`` concern
    TensorRT engines only and are dropped for other models (one place decides, for every command)."""
    if is_served_address(model) or backend_kind(model) != "tensorrt":
        return {}
    options: dict[str, object] = {}
    if cuda_graph:
        options["cuda_graph"] = True
    if plugin:
        options["plugin"] = plugin
    return options


__all__ = ["SUFFIXES", "Backend", "backend_kind", "backend_options", "is_served_address", "open_backend"]
