"""CocoDetection: mmdet's filtering, sorted-id labels, item format, errors users can fix."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from runtime.errors import UserError
from trainer.data import synthetic
from trainer.data.coco import CocoDetection, collate, load_coco
from trainer.data.transforms import train_transform


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), 5, 2, seed=1)


def _write_set(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A hand-made COCO file plus plain grey JPEGs of the stated sizes."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for info in images:
        cv2.imwrite(
            str(root / "img" / info["file_name"]), np.full((info["height"], info["width"], 3), 90, np.uint8)
        )
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _ann(
    ann_id: int, image_id: int, cat: int, bbox: list[float], iscrowd: int = 0, area: float | None = None
) -> dict:
    area = bbox[2] * bbox[3] if area is None else area
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": area,
        "iscrowd": iscrowd,
    }


def test_filters_and_sorted_category_labels(tmp_path):
    images = [
        {"id": 10, "file_name": "a.jpg", "height": 100, "width": 120},  # kept: two good boxes + junk
        {"id": 11, "file_name": "b.jpg", "height": 100, "width": 120},  # crowd only: dropped
        {"id": 12, "file_name": "c.jpg", "height": 100, "width": 120},  # no annotation: dropped
        {"id": 13, "file_name": "d.jpg", "height": 20, "width": 120},  # shorter side < 32: dropped
        {"id": 14, "file_name": "e.jpg", "height": 100, "width": 120},  # only degenerate boxes: dropped
    ]
    anns = [
        _ann(1, 10, 7, [10, 20, 30, 40]),
        _ann(2, 10, 1, [50, 5, 20.5, 10]),
        _ann(3, 10, 3, [0, 0, 50, 50], iscrowd=1),
        _ann(4, 10, 3, [5, 5, 0.5, 10]),  # narrower than 1 px
        _ann(5, 10, 3, [5, 5, 10, 10], area=0),  # zero area
        _ann(6, 10, 3, [130, 5, 10, 10]),  # outside the image
        _ann(7, 11, 3, [10, 10, 20, 20], iscrowd=1),
        _ann(8, 13, 3, [10, 1, 20, 10]),
        _ann(9, 14, 1, [10, 10, 10, 0]),
    ]
    # Categories listed out of order: labels follow the sorted ids, not the file order.
    cats = [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}]
    ds = CocoDetection(_write_set(tmp_path, images, anns, cats), tmp_path / "img", transform=None)

    assert ds.category_ids == [1, 3, 7] and ds.classes == ("one", "three", "seven") and ds.num_classes == 3
    assert len(ds) == 1
    item = ds[0]
    assert item["image_id"] == 10
    assert item["image"].shape == (3, 100, 120) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["boxes"], torch.tensor([[10.0, 20, 40, 60], [50, 5, 70.5, 15]]))
    assert item["labels"].tolist() == [2, 0] and item["labels"].dtype == torch.int64


def test_keep_empty_images_when_asked(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64}]
    anns = [_ann(1, 1, 5, [1, 1, 10, 10], iscrowd=1)]
    ann_file = _write_set(tmp_path, images, anns, [{"id": 5, "name": "x"}])
    with pytest.raises(UserError, match="no usable image"):
        CocoDetection(ann_file, tmp_path / "img", transform=None)
    ds = CocoDetection(ann_file, tmp_path / "img", transform=train_transform(), filter_empty_gt=False)
    item = ds[0]
    assert (
        item["image"].shape == (3, 511, 511)
        and item["boxes"].shape == (0, 4)
        and item["labels"].shape == (0,)
    )


def test_train_items_and_collate_on_synthetic_set(synth):
    ds = CocoDetection(synth["train_ann"], synth["train_images"], train_transform(), seed=5)
    assert len(ds) == 5 and ds.category_ids == [1, 3, 7] and ds.classes == ("square", "disc", "triangle")
    item = ds[0]
    assert item["image"].shape == (3, 511, 511) and item["image"].dtype == torch.float32
    assert item["boxes"].shape[1] == 4 and item["boxes"].shape[0] == item["labels"].shape[0] >= 1
    assert item["labels"].max() < 3 and torch.all(item["boxes"] >= 0) and torch.all(item["boxes"] <= 511)

    # Same (seed, epoch, index) -> same sample; another epoch -> another augmentation.
    torch.testing.assert_close(ds[0]["image"], item["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], item["image"])

    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 511, 511)
    assert len(batch["boxes"]) == len(batch["labels"]) == len(batch["image_id"]) == 3
    assert batch["image_id"] == [r.image_id for r in ds.records[:3]]


def test_crowd_annotation_of_synthetic_set_is_skipped(synth):
    coco = load_coco(synth["train_ann"])
    crowd = next(a for a in coco.dataset["annotations"] if a["iscrowd"])
    ds = CocoDetection(synth["train_ann"], synth["train_images"], transform=None)
    rec = next(r for r in ds.records if r.image_id == crowd["image_id"])
    n_objects = sum(1 for a in coco.imgToAnns[crowd["image_id"]] if not a["iscrowd"])
    assert len(rec.boxes) == n_objects


def test_missing_annotation_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope\.json: annotation file not found; pass a COCO"):
        CocoDetection(tmp_path / "nope.json", tmp_path, transform=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"images": []}', "not a COCO detection file \\(no annotations, categories\\)"),
        ("[1, 2]", "not a COCO detection file"),
        ('{"images": [], "annotations": [{"id": 1}], "categories": []}', "malformed COCO entry"),
    ],
)
def test_invalid_annotation_file_is_a_one_line_user_error(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(UserError, match=message) as exc:
        CocoDetection(bad, tmp_path, transform=None)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_image_dir_is_a_user_error(synth, tmp_path):
    with pytest.raises(UserError, match="image directory not found"):
        CocoDetection(synth["train_ann"], tmp_path / "missing", transform=None)
