"""Training dataset over any COCO-format detection set (mmdet ``CocoDataset`` in train mode).

Annotations are parsed once, up front, with pycocotools; each item then reads one image
(:func:`runtime.image_io.read_image`, the decode mmdet uses) and runs the train transform.

Labels are the index of the category id in the annotation file's *sorted* category ids, so
COCO's 80 ids 1..90 become 0..79 and the synthetic set's 1, 3, 7 become 0, 1, 2. The reverse
mapping for writing results is ``dataset.category_ids[label]``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from runtime.errors import UserError
from runtime.image_io import read_image
from trainer.data.transforms import Sample

# f(image (H, W, 3) uint8 RGB, boxes (N, 4) float32 xyxy, labels (N,) int64, rng) -> transformed sample
SampleTransform = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], Sample]


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: its file, id, size and parsed ground truth (before any transform)."""

    path: Path
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 (x2 = x + w, mmdet 2.x convention)
    labels: np.ndarray  # (N,) int64


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools ``COCO`` for ``ann_file``, or a one-line :class:`UserError` saying what is wrong."""
    path = Path(ann_file)
    fix = "pass a COCO instances_*.json (with --coco DIR: DIR/annotations/instances_{train,val}2017.json)"
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({type(e).__name__}: {e}); {fix}") from None
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise UserError(f"{path}: not a COCO detection file (no {', '.join(missing)}); {fix}")
    coco = COCO()
    coco.dataset = data
    try:
        # pycocotools prints progress to stdout; keep our commands' output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: malformed COCO entry (missing or bad field {e}); {fix}") from None
    return coco


def parse_annotations(
    anns: list[dict[str, Any]], width: int, height: int, cat_to_label: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """mmdet ``CocoDataset._parse_ann_info`` for boxes: (boxes (N, 4) float32 xyxy, labels (N,) int64).

    Dropped, as in mmdet: crowd boxes (``iscrowd=1``; mmdet keeps them only as "ignore" boxes, which
    CornerNet never uses), ``ignore`` flags, boxes not overlapping the image, ``area <= 0``, width or
    height below 1 pixel, and categories not in the file's category list.
    """
    boxes, labels = [], []
    for ann in anns:
        if ann.get("ignore", False) or ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
        if inter_w * inter_h == 0 or ann.get("area", w * h) <= 0 or w < 1 or h < 1:
            continue
        if ann["category_id"] not in cat_to_label:
            continue
        boxes.append([x, y, x + w, y + h])
        labels.append(cat_to_label[ann["category_id"]])
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


class CocoDetection(Dataset):
    """COCO-format training set with mmdet's filtering and a per-sample train transform.

    Args:
        ann_file: COCO ``instances_*.json``.
        image_dir: folder holding the images named by ``file_name``.
        transform: ``f(image, boxes, labels, rng) -> (image, boxes, labels)``, e.g.
            :func:`trainer.data.transforms.train_transform`; ``None`` returns the decoded image as is.
        seed: base seed of the augmentation; sample ``i`` of epoch ``e`` uses
            ``np.random.default_rng([seed, e, i])``, so results do not depend on worker count or order.
        filter_empty_gt: drop images with no usable (non-crowd, non-degenerate) box. mmdet 2.x drops
            only images with no annotation at all, so it keeps crowd-only images as pure background.
        min_size: drop images whose shorter side is below this (mmdet ``_filter_imgs(min_size=32)``).

    Items are dicts: ``image`` (3, H, W) float32 tensor ((3, 511, 511) with the train transform),
    ``boxes`` (N, 4) float32 tensor xyxy in the output image, ``labels`` (N,) int64 tensor,
    ``image_id`` int. Call :meth:`set_epoch` before each epoch to get new augmentations (with
    ``persistent_workers=True`` the workers keep the epoch they started with).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        transform: SampleTransform | None,
        *,
        seed: int = 0,
        filter_empty_gt: bool = True,
        min_size: int = 32,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise UserError(
                f"{self.image_dir}: image directory not found; pass the folder holding the images"
            )
        coco = load_coco(self.ann_file)
        self.category_ids: list[int] = sorted(int(c) for c in coco.getCatIds())
        cats = coco.loadCats(self.category_ids)
        self.classes: tuple[str, ...] = tuple(str(c["name"]) for c in cats)
        self.cat_to_label = {cat_id: i for i, cat_id in enumerate(self.category_ids)}
        self.records = self._build_records(coco, filter_empty_gt, min_size)
        if not self.records:
            raise UserError(
                f"{self.ann_file}: no usable image (every image is too small or has no valid box)"
            )
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def _build_records(self, coco: COCO, filter_empty_gt: bool, min_size: int) -> list[ImageRecord]:
        records = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.imgs[image_id]
            width, height = int(info["width"]), int(info["height"])
            if min(width, height) < min_size:
                continue
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            boxes, labels = parse_annotations(anns, width, height, self.cat_to_label)
            if filter_empty_gt and len(boxes) == 0:
                continue
            path = self.image_dir / info["file_name"]
            records.append(ImageRecord(path, int(image_id), height, width, boxes, labels))
        return records

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream for ``epoch`` (see the class docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = read_image(rec.path)
        boxes, labels = rec.boxes, rec.labels
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, boxes, labels = self.transform(image, boxes.copy(), labels.copy(), rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.asarray(labels, np.int64).reshape(-1)),
            "image_id": rec.image_id,
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: images stacked to (B, 3, H, W); boxes, labels, image ids as lists.

    Boxes and labels stay lists because the number of objects differs per image.
    """
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "labels": [item["labels"] for item in batch],
        "image_id": [item["image_id"] for item in batch],
    }


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def loader_worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn`` (also fine to call in the main process): one OpenCV thread, and
    glibc malloc told to keep large buffers instead of returning them to the OS after every sample.

    Each sample allocates several 1-5 MB float32 images of varying size. With glibc's default dynamic
    thresholds these are mmapped and unmapped (or trimmed) each time, so every sample page-faults
    its memory in again; on the project's 2-core VM that took 2-3x the arithmetic itself
    (``python -m benchmarks.bench_data --malloc-default`` shows it). Fixed thresholds (64 MiB mmap,
    256 MiB trim) keep the memory in the heap, at the price of up to ~256 MiB kept per worker.
    Does nothing about malloc outside Linux/glibc.
    """
    cv2.setNumThreads(1)  # loader processes are the parallelism; OpenCV threads would oversubscribe
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave malloc alone
        pass
