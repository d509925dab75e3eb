"""mmdet's ``CornerHead`` with ``BiCornerPool`` (keys ``bbox_head.*``)."""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor, nn

from runtime.names import HEAD_OUTPUTS

from .config import ModelConfig
from .corner_pool import CornerPool
from .layers import ConvModule

# Fixed widths in mmdet that do not follow ``in_channels``.
POOL_FEAT_CHANNELS = 128
BRANCH_FEAT_CHANNELS = 256
HEAT_PRIOR_PROB = 0.1


class HeadOutputs(NamedTuple):
    """Raw head outputs of one stack (logits, no sigmoid). ``K`` = num_classes, ``H, W`` = input / 4."""

    tl_heat: Tensor  # [N, K, H, W]
    br_heat: Tensor  # [N, K, H, W]
    tl_emb: Tensor  # [N, 1, H, W]
    br_emb: Tensor  # [N, 1, H, W]
    tl_off: Tensor  # [N, 2, H, W]  (x, y)
    br_off: Tensor  # [N, 2, H, W]


if HeadOutputs._fields != HEAD_OUTPUTS:  # the names live in runtime.names; the fields must follow them
    raise ImportError(f"HeadOutputs fields {HeadOutputs._fields} differ from runtime.names.HEAD_OUTPUTS")


class BiCornerPool(nn.Module):
    """Two directional corner pools summed, with mmdet's convs around them.

    ``conv2(relu(aftpool_conv(pool1(d1(x)) + pool2(d2(x))) + conv1(x)))``; ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, in_channels: int, directions: tuple[str, str], out_channels: int) -> None:
        super().__init__()
        self.direction1_conv = ConvModule(in_channels, POOL_FEAT_CHANNELS, 3, padding=1)
        self.direction2_conv = ConvModule(in_channels, POOL_FEAT_CHANNELS, 3, padding=1)
        self.aftpool_conv = ConvModule(POOL_FEAT_CHANNELS, out_channels, 3, padding=1, act=False)
        self.conv1 = ConvModule(in_channels, out_channels, 1, act=False)
        self.conv2 = ConvModule(in_channels, out_channels, 3, padding=1)
        self.direction1_pool = CornerPool(directions[0])
        self.direction2_pool = CornerPool(directions[1])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.direction1_pool(self.direction1_conv(x)) + self.direction2_pool(self.direction2_conv(x))
        return self.conv2(self.relu(self.aftpool_conv(pooled) + self.conv1(x)))


def _branch(in_channels: int, out_channels: int) -> nn.Sequential:
    """Prediction branch: 3x3 conv (bias, ReLU) -> 1x1 conv (bias), no norm."""
    return nn.Sequential(
        ConvModule(in_channels, BRANCH_FEAT_CHANNELS, 3, padding=1, norm=False),
        ConvModule(BRANCH_FEAT_CHANNELS, out_channels, 1, norm=False, act=False),
    )


class CornerHead(nn.Module):
    """Corner heatmaps, embeddings and offsets for top-left and bottom-right corners, one set per stack."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, levels = cfg.feat_channel, cfg.num_stacks
        self.tl_pool = nn.ModuleList(BiCornerPool(c, ("top", "left"), c) for _ in range(levels))
        self.br_pool = nn.ModuleList(BiCornerPool(c, ("bottom", "right"), c) for _ in range(levels))
        self.tl_heat = nn.ModuleList(_branch(c, cfg.num_classes) for _ in range(levels))
        self.br_heat = nn.ModuleList(_branch(c, cfg.num_classes) for _ in range(levels))
        self.tl_off = nn.ModuleList(_branch(c, 2) for _ in range(levels))
        self.br_off = nn.ModuleList(_branch(c, 2) for _ in range(levels))
        self.tl_emb = nn.ModuleList(_branch(c, 1) for _ in range(levels))
        self.br_emb = nn.ModuleList(_branch(c, 1) for _ in range(levels))
        self.init_heat_bias()

    def init_heat_bias(self) -> None:
        """Heatmap logits start at a prior of 0.1 (mmdet ``bias_init_with_prob(0.1)``)."""
        bias = -math.log((1 - HEAT_PRIOR_PROB) / HEAT_PRIOR_PROB)
        for branch in (*self.tl_heat, *self.br_heat):
            nn.init.constant_(branch[-1].conv.bias, bias)

    def forward_level(self, feat: Tensor, level: int) -> HeadOutputs:
        """Heads of one stack from its backbone feature ``[N, C, H, W]``."""
        tl = self.tl_pool[level](feat)
        br = self.br_pool[level](feat)
        return HeadOutputs(
            tl_heat=self.tl_heat[level](tl),
            br_heat=self.br_heat[level](br),
            tl_emb=self.tl_emb[level](tl),
            br_emb=self.br_emb[level](br),
            tl_off=self.tl_off[level](tl),
            br_off=self.br_off[level](br),
        )
