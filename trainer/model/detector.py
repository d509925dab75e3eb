"""The CornerNet detector: ``HourglassNet`` backbone + ``CornerHead`` (mmdet key layout)."""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from .corner_head import CornerHead, HeadOutputs
from .hourglass import HourglassNet


class CornerNet(nn.Module):
    """CornerNet with mmdet's parameter names (``backbone.*``, ``bbox_head.*``).

    ``forward`` returns the heads of the final stack only (what inference and export use);
    ``forward_stacks`` returns the heads of every stack (what training supervises).
    Input: normalised RGB ``[N, 3, H, W]``; heads are at stride 4.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = HourglassNet(cfg)
        self.bbox_head = CornerHead(cfg)

    def forward(self, images: Tensor) -> HeadOutputs:
        feats = self.backbone(images)
        return self.bbox_head.forward_level(feats[-1], len(feats) - 1)

    def forward_stacks(self, images: Tensor) -> list[HeadOutputs]:
        feats = self.backbone(images)
        return [self.bbox_head.forward_level(f, i) for i, f in enumerate(feats)]
