"""Conv/BN/ReLU building blocks with mmdet's module names, so checkpoints load without renaming."""

from __future__ import annotations

from torch import Tensor, nn


class ConvModule(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU, named ``conv``/``bn``/``activate`` like mmcv's ConvModule.

    The conv has a bias only when no norm layer follows (mmcv's ``bias='auto'``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class BasicBlock(nn.Module):
    """ResNet basic block (expansion 1): two 3x3 convs and a shortcut, mmdet's ``BasicBlock`` names."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def res_layer(
    in_channels: int, out_channels: int, num_blocks: int, stride: int = 1, downsample_first: bool = True
) -> nn.Sequential:
    """mmdet's ``ResLayer`` of basic blocks, children named ``0, 1, ...``.

    ``downsample_first=False`` (the hourglass ``low3`` layers) keeps the width for all but the
    last block, which changes ``in_channels -> out_channels``. Like mmdet, ``num_blocks=0`` still
    builds one block (a 1-stack HourglassNet has an unused ``inters.0``), so its checkpoints load as they are.
    """
    blocks: list[nn.Module] = []
    if downsample_first:
        blocks.append(BasicBlock(in_channels, out_channels, stride))
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    else:
        blocks += [BasicBlock(in_channels, in_channels) for _ in range(num_blocks - 1)]
        blocks.append(BasicBlock(in_channels, out_channels, stride))
    return nn.Sequential(*blocks)
