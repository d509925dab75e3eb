"""mmdet's ``HourglassNet`` backbone, module for module (keys ``backbone.*``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .layers import ConvModule, res_layer


class HourglassModule(nn.Module):
    """One recursive hourglass level: ``up1(x) + upsample(low3(low2(low1(x))))``.

    Args:
        depth: levels below this one (1 = innermost).
        stage_channels: channels of this level and the ones below.
        stage_blocks: residual blocks of this level and the ones below.
    """

    def __init__(self, depth: int, stage_channels: tuple[int, ...], stage_blocks: tuple[int, ...]) -> None:
        super().__init__()
        cur, nxt = stage_channels[0], stage_channels[1]
        blocks, next_blocks = stage_blocks[0], stage_blocks[1]
        self.up1 = res_layer(cur, cur, blocks)
        # mmdet always downsamples with a strided block (with a 1x1 shortcut even when cur == nxt).
        self.low1 = res_layer(cur, nxt, blocks, stride=2)
        self.low2: nn.Module = (
            HourglassModule(depth - 1, stage_channels[1:], stage_blocks[1:])
            if depth > 1
            else res_layer(nxt, nxt, next_blocks)
        )
        self.low3 = res_layer(nxt, cur, blocks, downsample_first=False)

    def forward(self, x: Tensor) -> Tensor:
        up1 = self.up1(x)
        low3 = self.low3(self.low2(self.low1(x)))
        return up1 + F.interpolate(low3, size=up1.shape[2:], mode="nearest")


class HourglassNet(nn.Module):
    """Stacked hourglass: a stride-4 stem, then ``num_stacks`` hourglasses with intermediate supervision.

    Input ``[N, 3, H, W]``; output one ``[N, feat_channel, H/4, W/4]`` map per stack
    (index -1 is the final stack, the one used at test time).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.stage_channels[0]
        self.num_stacks = cfg.num_stacks
        self.stem = nn.Sequential(
            ConvModule(3, ch // 2, 7, stride=2, padding=3),
            res_layer(ch // 2, ch, 1, stride=2),
        )
        self.hourglass_modules = nn.ModuleList(
            HourglassModule(cfg.downsample_times, cfg.stage_channels, cfg.stage_blocks)
            for _ in range(cfg.num_stacks)
        )
        self.inters = res_layer(ch, ch, cfg.num_stacks - 1)
        self.conv1x1s = nn.ModuleList(ConvModule(ch, ch, 1, act=False) for _ in range(cfg.num_stacks - 1))
        self.out_convs = nn.ModuleList(
            ConvModule(ch, cfg.feat_channel, 3, padding=1) for _ in range(cfg.num_stacks)
        )
        self.remap_convs = nn.ModuleList(
            ConvModule(cfg.feat_channel, ch, 1, act=False) for _ in range(cfg.num_stacks - 1)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> list[Tensor]:
        inter = self.stem(x)
        outs: list[Tensor] = []
        for i in range(self.num_stacks):
            feat = self.out_convs[i](self.hourglass_modules[i](inter))
            outs.append(feat)
            if i < self.num_stacks - 1:
                inter = self.inters[i](self.relu(self.conv1x1s[i](inter) + self.remap_convs[i](feat)))
        return outs
