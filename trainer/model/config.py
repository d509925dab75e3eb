"""Architecture of a CornerNet as a plain dataclass, with mmdet's HG-104 preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """mmdet ``HourglassNet`` + ``CornerHead`` settings.

    Args:
        downsample_times: depth of each hourglass (number of stride-2 levels).
        num_stacks: hourglass stacks; heads exist for every stack.
        stage_channels: channels per hourglass level, ``downsample_times + 1`` entries.
        stage_blocks: residual blocks per level, ``downsample_times + 1`` entries.
        feat_channel: channels of the backbone outputs (= head ``in_channels``).
        num_classes: object classes (80 for COCO).
    """

    downsample_times: int = 5
    num_stacks: int = 2
    stage_channels: tuple[int, ...] = (256, 256, 384, 384, 384, 512)
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2, 2, 4)
    feat_channel: int = 256
    num_classes: int = 80

    def __post_init__(self) -> None:
        n = self.downsample_times + 1
        if len(self.stage_channels) != n or len(self.stage_blocks) != n:
            raise ValueError(
                f"stage_channels and stage_blocks need downsample_times + 1 = {n} entries, "
                f"got {len(self.stage_channels)} and {len(self.stage_blocks)}"
            )
        if self.num_stacks < 1 or self.num_classes < 1:
            raise ValueError("num_stacks and num_classes must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stage_channels"] = list(self.stage_channels)
        d["stage_blocks"] = list(self.stage_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("stage_channels", "stage_blocks"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)


def hg104(num_classes: int = 80) -> ModelConfig:
    """mmdet's ``cornernet_hourglass104_mstest_*`` backbone and head."""
    return ModelConfig(num_classes=num_classes)


def tiny(num_classes: int = 80) -> ModelConfig:
    """A small hourglass that trains on a CPU in minutes (tests, demo)."""
    return ModelConfig(
        downsample_times=3,
        num_stacks=2,
        stage_channels=(32, 32, 48, 64),
        stage_blocks=(1, 1, 1, 2),
        feat_channel=32,
        num_classes=num_classes,
    )
