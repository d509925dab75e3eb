"""CornerNet (HourglassNet + CornerHead) with MMDetection's module names."""

from .config import ModelConfig, hg104, tiny
from .corner_head import HEAD_OUTPUTS, BiCornerPool, CornerHead, HeadOutputs
from .corner_pool import MODES, CornerPool, corner_pool
from .detector import CornerNet
from .hourglass import HourglassNet

__all__ = [
    "HEAD_OUTPUTS",
    "MODES",
    "BiCornerPool",
    "CornerHead",
    "CornerNet",
    "CornerPool",
    "HeadOutputs",
    "HourglassNet",
    "ModelConfig",
    "corner_pool",
    "hg104",
    "tiny",
]
