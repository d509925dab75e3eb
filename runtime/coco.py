"""COCO-format data sets for evaluation: reading the annotation file, mapping labels, scoring results.

Labels map to category ids through the annotation file's *sorted* category ids (mmdet's rule).
Scoring uses faster-coco-eval (identical numbers to pycocotools, ~12x faster); ``pycocotools`` is
available as the reference implementation.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
STAT_LABELS: tuple[str, ...] = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)


@dataclass
class CocoImage:
    id: int
    file_name: str
    path: Path
    height: int
    width: int


@dataclass
class CocoSet:
    """An annotation file and its image folder."""

    ann_file: Path
    image_dir: Path
    dataset: dict[str, Any]
    images: list[CocoImage]  # sorted by id
    category_ids: list[int]  # sorted; label i <-> category_ids[i]
    category_names: list[str]

    @property
    def num_annotations(self) -> int:
        return len(self.dataset.get("annotations", []))


def resolve_coco_paths(coco: str | None, ann: str | None, images: str | None) -> tuple[Path, Path]:
    """``--coco DIR`` (``annotations/instances_val2017.json`` + ``val2017/``) or ``--ann FILE --images DIR``."""
    if coco is not None:
        root = Path(coco)
        ann_path = Path(ann) if ann else root / "annotations" / "instances_val2017.json"
        img_dir = Path(images) if images else root / "val2017"
    elif ann is not None and images is not None:
        ann_path, img_dir = Path(ann), Path(images)
    else:
        raise UserError("give a data set: --coco DIR (COCO layout) or both --ann FILE and --images DIR")
    if not ann_path.is_file():
        raise UserError(
            f"{ann_path}: annotation file not found; pass --ann FILE or a --coco DIR with annotations/instances_val2017.json"
        )
    if not img_dir.is_dir():
        raise UserError(f"{img_dir}: image folder not found; pass --images DIR or a --coco DIR with val2017/")
    return ann_path, img_dir


def load_coco_set(ann_file: str | Path, image_dir: str | Path) -> CocoSet:
    """Read and validate a COCO-format annotation file (one-line errors for what is wrong)."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    try:
        dataset = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise UserError(f"{ann_file}: annotation file not found; check --ann / --coco") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{ann_file}: not valid JSON ({e}); pass a COCO-format instances file") from None
    if not isinstance(dataset, dict) or "images" not in dataset or "categories" not in dataset:
        raise UserError(f"{ann_file}: missing 'images' or 'categories'; pass a COCO-format instances file")
    dataset.setdefault("annotations", [])
    images = []
    for i, im in enumerate(dataset["images"]):
        missing = [k for k in ("id", "file_name") if k not in im]
        if missing:
            raise UserError(
                f"{ann_file}: images[{i}] has no {'/'.join(missing)}; every image needs id and file_name"
            )
        images.append(
            CocoImage(
                int(im["id"]),
                im["file_name"],
                image_dir / im["file_name"],
                int(im.get("height", 0)),
                int(im.get("width", 0)),
            )
        )
    images.sort(key=lambda im: im.id)
    cats = sorted(dataset["categories"], key=lambda c: c["id"])
    for i, a in enumerate(dataset["annotations"]):
        missing = [k for k in ("image_id", "category_id", "bbox") if k not in a]
        if missing:
            raise UserError(
                f"{ann_file}: annotations[{i}] has no {'/'.join(missing)}; fix or regenerate the file"
            )
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
    return CocoSet(
        ann_file,
        image_dir,
        dataset,
        images,
        [int(c["id"]) for c in cats],
        [str(c.get("name", c["id"])) for c in cats],
    )


def check_classes(coco: CocoSet, classes: tuple[str, ...], model_path: str) -> None:
    """The model's labels must map onto the annotation file's categories one to one."""
    if len(coco.category_ids) != len(classes):
        raise UserError(
            f"{coco.ann_file}: {len(coco.category_ids)} categories but {model_path} predicts {len(classes)} classes; evaluate on a data set with the model's classes"
        )


def to_coco_results(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, category_ids: list[int]
) -> list[dict[str, Any]]:
    """Detections (xyxy, original pixels) as COCO results ``{image_id, category_id, bbox: xywh, score}``."""
    out = []
    for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        out.append(
            {
                "image_id": image_id,
                "category_id": category_ids[int(lab)],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": s,
            }
        )
    return out


def evaluate(
    coco: CocoSet,
    results: list[dict[str, Any]],
    evaluator: str = "faster-coco-eval",
    image_ids: list[int] | None = None,
) -> dict[str, float]:
    """The 12 COCO bbox stats (fractions 0-1, -1 where a size range has no objects)."""
    if evaluator == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco.dataset))  # the evaluators may annotate it in place
        gt.createIndex()
        # loadRes adds 'area'/'id' to the dicts it is given: hand it copies.
        dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
        if not results:
            dt.dataset = {
                "images": gt.dataset["images"],
                "categories": gt.dataset["categories"],
                "annotations": [],
            }
            dt.createIndex()
        ev = Evaluator(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:12], strict=True)}


def format_stats(stats: dict[str, float]) -> str:
    """pycocotools' 12 summary lines."""
    return "\n".join(
        f" {label} = {stats[name]:.3f}" for name, label in zip(STAT_NAMES, STAT_LABELS, strict=True)
    )
