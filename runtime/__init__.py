"""CornerNet inference: :class:`Detector` (images -> detections for .pth, .onnx, .plan and served models),
shared pre-processing, decoding and soft-NMS, the backends, evaluation and verification."""

from __future__ import annotations

from typing import Any

__all__ = ["Detector", "Result"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import runtime.preprocess` stays light; `from runtime import Detector` works as usual.
    if name in __all__:
        from runtime import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
