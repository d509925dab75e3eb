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


def _require(ann_file: Path, where: str, entry: Any, fields: dict[str, type], fix: str) -> None:
    """One-line :class:`UserError` unless ``entry`` is a dict holding ``fields`` of those types.

    Integers may be written as integral floats (``5.0``), which compare and hash like ints; strings
    are refused since results would never match them.
    """
    if not isinstance(entry, dict):
        raise UserError(f"{ann_file}: {where} is not an object (got {type(entry).__name__}); {fix}")
    missing = [k for k in fields if k not in entry]
    if missing:
        raise UserError(f"{ann_file}: {where} has no {'/'.join(missing)}; {fix}")
    for key, kind in fields.items():
        value = entry[key]
        if kind is int:
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer()
            )
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise UserError(
                f"{ann_file}: {where} {key} is {value!r}, not {'an integer' if kind is int else 'a ' + kind.__name__}; {fix}"
            )


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
    if dataset.get("annotations") is None:
        dataset["annotations"] = []
    for key in ("images", "categories", "annotations"):
        if not isinstance(dataset[key], list):
            raise UserError(
                f"{ann_file}: '{key}' is not a list (got {type(dataset[key]).__name__}); pass a COCO-format instances file"
            )
    images = []
    for i, im in enumerate(dataset["images"]):
        _require(
            ann_file, f"images[{i}]", im, {"id": int, "file_name": str}, "every image needs id and file_name"
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
    for i, c in enumerate(dataset["categories"]):
        _require(ann_file, f"categories[{i}]", c, {"id": int}, "every category needs an id")
    cats = sorted(dataset["categories"], key=lambda c: c["id"])
    for i, a in enumerate(dataset["annotations"]):
        _require(
            ann_file,
            f"annotations[{i}]",
            a,
            {"image_id": int, "category_id": int, "bbox": list},
            "fix or regenerate the file",
        )
        bbox = a["bbox"]
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise UserError(
                f"{ann_file}: annotations[{i}] bbox {bbox!r} is not 4 numbers [x, y, w, h]; fix or regenerate the file"
            )
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        if "area" not in a:
            a["area"] = float(bbox[2]) * float(bbox[3])
    return CocoSet(
        ann_file,
        image_dir,
        dataset,
        images,
        [int(c["id"]) for c in cats],
        [str(c.get("name", c["id"])) for c in cats],
    )


def _same_name(a: str, b: str) -> bool:
    """Class names equal up to case and ``_``/space (mmdet 1.x wrote ``traffic_light``)."""
    return a.strip().lower().replace("_", " ") == b.strip().lower().replace("_", " ")


def check_classes(coco: CocoSet, classes: tuple[str, ...], model_path: str) -> None:
    """The model's labels must map onto the annotation file's categories one to one.

    Label ``i`` is the ``i``-th sorted category id (mmdet's rule), so the counts must agree, and every
    annotation must use a listed category id (else its objects would silently never count). When the
    model carries real names (not the ``class<N>`` placeholders of unnamed checkpoints) and fewer
    than half of them agree with the file's category names at the same position, the file is another
    data set: that is an error too, rather than a silently meaningless AP.
    """
    if len(coco.category_ids) != len(classes):
        raise UserError(
            f"{coco.ann_file}: {len(coco.category_ids)} categories but {model_path} predicts {len(classes)} classes; evaluate on a data set with the model's classes"
        )
    known = set(coco.category_ids)
    for i, a in enumerate(coco.dataset["annotations"]):
        if a["category_id"] not in known:
            raise UserError(
                f"{coco.ann_file}: annotations[{i}] has category_id {a['category_id']}, which is not among the file's "
                f"categories {coco.category_ids}; fix the file or its categories list"
            )
    unnamed_model = all(c == f"class{i}" for i, c in enumerate(classes))
    unnamed_file = all(n == str(c) for n, c in zip(coco.category_names, coco.category_ids, strict=True))
    if unnamed_model or unnamed_file:
        return
    differ = [
        i for i, (a, b) in enumerate(zip(classes, coco.category_names, strict=True)) if not _same_name(a, b)
    ]
    if 2 * len(differ) > len(classes):
        i = differ[0]
        raise UserError(
            f"{coco.ann_file}: its categories are not {model_path}'s classes ({len(differ)} of {len(classes)} names differ, "
            f"e.g. category id {coco.category_ids[i]} '{coco.category_names[i]}' vs model class {i} '{classes[i]}'); "
            "evaluate on a data set with the model's classes"
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
