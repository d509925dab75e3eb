"""Everything a deployed model needs besides its weights: classes, normalisation, test settings.

This travels inside our checkpoints, in ONNX ``metadata_props`` and in the TensorRT sidecar JSON,
so a model file alone can be evaluated. Plain dataclasses; JSON in and out, never executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

MMDET_MEAN_RGB = (123.675, 116.28, 103.53)
MMDET_STD_RGB = (58.395, 57.12, 57.375)

# mmdet's test padding: centre the image in a canvas of (h | 127, w | 127).
PAD_RULE = "center_logical_or_127"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (provenance of checkpoints, ONNX files, engines and plugin libraries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TestConfig:
    """mmdet CornerHead test settings (``test_cfg``); defaults are the HG-104 config's.

    ``score_thr`` is not here on purpose: mmdet's config carries 0.05 but CornerHead never applies it.
    """

    corner_topk: int = 100
    local_maximum_kernel: int = 3
    distance_threshold: float = 0.5
    num_dets: int = 1000
    max_per_img: int = 100
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 1e-3

    __test__ = False  # not a pytest class, despite the name


@dataclass(frozen=True)
class ModelMeta:
    """What the runtime needs to turn images into COCO detections for one model."""

    classes: tuple[str, ...]
    mean: tuple[float, float, float] = MMDET_MEAN_RGB
    std: tuple[float, float, float] = MMDET_STD_RGB
    test_cfg: TestConfig = field(default_factory=TestConfig)
    pad_rule: str = PAD_RULE

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "test_cfg": dataclasses.asdict(self.test_cfg),
            "pad_rule": self.pad_rule,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model metadata") -> ModelMeta:
        """From :meth:`to_dict`'s output. Keys this version does not know are named in a warning
        (``where`` says which file), then ignored: a newer writer's additions must not pass unseen."""
        known = {f.name for f in dataclasses.fields(TestConfig)}
        test_cfg_in = d.get("test_cfg", {})
        unknown = [str(k) for k in d if k not in {f.name for f in dataclasses.fields(cls)}]
        unknown += [f"test_cfg.{k}" for k in test_cfg_in if k not in known]
        if unknown:
            warnings.warn(
                f"{where}: ignoring keys this version does not know ({', '.join(unknown)}); "
                "written by a newer cornernet-deploy? upgrade it to use them",
                stacklevel=2,
            )
        test_cfg = TestConfig(**{k: v for k, v in test_cfg_in.items() if k in known})
        return cls(
            classes=tuple(d["classes"]),
            mean=tuple(float(v) for v in d.get("mean", MMDET_MEAN_RGB)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d.get("std", MMDET_STD_RGB)),  # type: ignore[arg-type]
            test_cfg=test_cfg,
            pad_rule=d.get("pad_rule", PAD_RULE),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "model metadata") -> ModelMeta:
        return cls.from_dict(json.loads(text), where)


# COCO's 80 detection classes in mmdet's order (used when an mmdet checkpoint carries no class names).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
