"""A small COCO-format detection set drawn on the fly: shapes on a noisy background.

The set is for smoke tests, the demo and CPU training runs: a tiny CornerNet learns the corners of
these shapes in minutes, and every part that reads COCO (training data, evaluation, ``--coco DIR``)
can run end to end without downloading anything. It deliberately exercises the awkward parts of COCO:

- category ids are not contiguous (1, 3, 7), so code must map label index <-> category id;
- image sizes vary (portrait and landscape, some not multiples of 32);
- one image per split also has an ``iscrowd=1`` annotation (a cluster of small discs) with an
  uncompressed-RLE segmentation, as COCO stores crowds;
- boxes are exact: ``bbox`` is the tight box of the drawn pixels, ``[x, y, w, h]`` with ``x + w``
  one past the last pixel column (the COCO convention), and ``area`` is the pixel count.

Layout (standard COCO, so ``--coco DIR`` works)::

    DIR/train2017/000000000001.jpg ...
    DIR/val2017/000000100001.jpg ...
    DIR/annotations/instances_train2017.json
    DIR/annotations/instances_val2017.json

Run ``python -m trainer.data.synthetic --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from runtime.errors import EXIT_BAD_INPUT, EXIT_OK, UserError

DEFAULT_OUT_DIR = Path("data/synthetic")  # relative to the repository root, where /data/ is gitignored
DEFAULT_NUM_TRAIN = 160
DEFAULT_NUM_VAL = 40
DEFAULT_SEED = 0
JPEG_QUALITY = 95

# Category ids are non-contiguous on purpose (see the module docstring).
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "disc", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
)
# One colour family per class (RGB) so the class can be told from colour as well as shape.
_BASE_COLOURS = {1: (220, 60, 50), 3: (60, 190, 70), 7: (60, 90, 230)}

# (height, width): portrait, landscape and square, several not multiples of 32.
IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (256, 320),
    (320, 256),
    (240, 352),
    (288, 288),
    (250, 330),
    (333, 241),
    (272, 304),
    (224, 360),
)
MIN_BOX, MAX_BOX = 24, 160
MAX_OBJECTS = 4
_GAP = 4  # pixels kept free between objects so every box is fully visible (no occlusion)

# Image ids: train from 1, val from 100001, so ids never collide between the splits.
_SPLITS = {"train": ("train2017", 1, 0), "val": ("val2017", 100_001, 1)}


@dataclass
class _Shape:
    """One drawn object: its pixel mask, category and COCO polygon."""

    mask: np.ndarray  # (H, W) bool
    category_id: int
    polygon: list[float]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted low-frequency colour blobs plus fine noise, (H, W, 3) float32 RGB."""
    gh, gw = rng.integers(3, 8, size=2)
    grid = rng.uniform(70, 190, size=(gh, gw, 3)).astype(np.float32)
    smooth = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    # Pull colours towards grey so the saturated shapes stand out.
    grey = smooth.mean(axis=2, keepdims=True)
    img = 0.5 * smooth + 0.5 * grey
    img += 10.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return img


def _box_size(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    """Box (height, width) between MIN_BOX and MAX_BOX, aspect 0.7-1.4, fitting the image."""
    side = int(rng.integers(MIN_BOX, MAX_BOX + 1))
    aspect = float(rng.uniform(0.7, 1.4))
    bw = int(np.clip(round(side * aspect), MIN_BOX, MAX_BOX))
    bh = side
    return min(bh, h - 2 * _GAP), min(bw, w - 2 * _GAP)


def _free_spot(
    rng: np.random.Generator, h: int, w: int, bh: int, bw: int, taken: list[tuple[int, int, int, int]]
) -> tuple[int, int] | None:
    """Top-left (x, y) for a bh x bw box that keeps _GAP pixels from every taken box, or None."""
    for _ in range(50):
        x = int(rng.integers(0, w - bw + 1))
        y = int(rng.integers(0, h - bh + 1))
        if all(
            x + bw + _GAP <= tx0 or tx1 + _GAP <= x or y + bh + _GAP <= ty0 or ty1 + _GAP <= y
            for tx0, ty0, tx1, ty1 in taken
        ):
            return x, y
    return None


def _draw_mask(
    category_id: int, h: int, w: int, x: int, y: int, bw: int, bh: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[float]]:
    """Rasterise one shape filling (most of) the box [x, x+bw) x [y, y+bh); returns (mask, polygon)."""
    mask = np.zeros((h, w), np.uint8)
    x1, y1 = x + bw - 1, y + bh - 1  # last pixel column/row, as cv2 draws inclusive coordinates
    if category_id == 1:  # square (axis-aligned rectangle): its corners are on the object
        cv2.rectangle(mask, (x, y), (x1, y1), 255, -1)
        poly = np.array([[x, y], [x1, y], [x1, y1], [x, y1]])
    elif category_id == 3:  # disc (ellipse): corners are off the object, as for most COCO things
        centre = (x + bw // 2, y + bh // 2)
        axes = ((bw - 1) // 2, (bh - 1) // 2)
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        poly = cv2.ellipse2Poly(centre, axes, 0, 0, 360, 12)
    else:  # triangle: apex somewhere on the top edge, base along the bottom
        apex_x = int(rng.integers(x, x1 + 1))
        poly = np.array([[apex_x, y], [x1, y1], [x, y1]])
        cv2.fillPoly(mask, [poly.astype(np.int32)], 255)
    return mask > 0, [float(v) for v in poly.reshape(-1)]


def _paint(img: np.ndarray, shape: _Shape, rng: np.random.Generator) -> None:
    """Fill the shape with its class colour (jittered) and a dark 2-px outline inside the mask."""
    base = np.array(_BASE_COLOURS[shape.category_id], np.float32)
    fill = np.clip(base + rng.uniform(-25, 25, size=3), 0, 255)
    m8 = shape.mask.astype(np.uint8)
    # Erode to find the inner outline: it stays inside the mask, so the tight box is unchanged.
    inner = cv2.erode(m8, np.ones((5, 5), np.uint8)) > 0
    img[shape.mask] = fill
    img[shape.mask & ~inner] = fill * 0.35


def _tight_box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of the True pixels: x + w is one past the last column."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major run lengths starting with a zero run), as crowds use."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:  # runs must start with zeros
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _crowd_mask(
    rng: np.random.Generator, h: int, w: int, taken: list[tuple[int, int, int, int]]
) -> np.ndarray | None:
    """A cluster of 5-8 small discs in free space (one crowd region), or None if there is no room."""
    spot = _free_spot(rng, h, w, 56, 64, taken)
    if spot is None:
        return None
    x, y = spot
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 9))):
        r = int(rng.integers(4, 8))
        cx = int(rng.integers(x + r, x + 64 - r))
        cy = int(rng.integers(y + r, y + 56 - r))
        cv2.circle(mask, (cx, cy), r, 255, -1)
    return mask > 0


def _render_image(
    rng: np.random.Generator, with_crowd: bool
) -> tuple[np.ndarray, list[_Shape], np.ndarray | None]:
    """Draw one image: (uint8 RGB image, objects, crowd mask or None)."""
    h, w = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    img = _background(rng, h, w)
    shapes: list[_Shape] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cat = int(CATEGORIES[int(rng.integers(len(CATEGORIES)))]["id"])
        bh, bw = _box_size(rng, h, w)
        spot = _free_spot(rng, h, w, bh, bw, taken)
        if spot is None:  # crowded image: fewer objects rather than overlapping ones
            continue
        x, y = spot
        mask, poly = _draw_mask(cat, h, w, x, y, bw, bh, rng)
        shapes.append(_Shape(mask, cat, poly))
        taken.append((x, y, x + bw, y + bh))
    crowd = _crowd_mask(rng, h, w, taken) if with_crowd else None
    for shape in shapes:
        _paint(img, shape, rng)
    if crowd is not None:
        img[crowd] = _BASE_COLOURS[3]
    # Noise over everything (objects included) so flat colour is not a give-away.
    img += 6.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), shapes, crowd


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok = cv2.imwrite(
        str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise UserError(f"could not write {path}: check that the directory is writable and the disk not full")


def _make_split(root: Path, split: str, num_images: int, seed: int, bar: tqdm | None) -> tuple[Path, Path]:
    """Write one split's JPEGs and annotation file; returns (image_dir, ann_file)."""
    dir_name, first_id, split_index = _SPLITS[split]
    image_dir = root / dir_name
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(num_images):
        # One generator per image: image i is the same whatever num_images is.
        rng = np.random.default_rng([seed, split_index, i])
        rgb, shapes, crowd = _render_image(rng, with_crowd=(i == 0))
        image_id = first_id + i
        file_name = f"{image_id:012d}.jpg"
        _write_jpeg(image_dir / file_name, rgb)
        images.append({"id": image_id, "file_name": file_name, "height": rgb.shape[0], "width": rgb.shape[1]})
        for shape in shapes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape.category_id,
                    "bbox": _tight_box(shape.mask),
                    "area": float(shape.mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [shape.polygon],
                }
            )
        if crowd is not None:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 3,
                    "bbox": _tight_box(crowd),
                    "area": float(crowd.sum()),
                    "iscrowd": 1,
                    "segmentation": _rle(crowd),
                }
            )
        if bar is not None:
            bar.update(1)
    ann_file = root / "annotations" / f"instances_{dir_name}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    coco = {
        "info": {"description": f"synthetic shapes, seed {seed}", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    ann_file.write_text(json.dumps(coco))
    return image_dir, ann_file


def generate(
    out_dir: str | Path = DEFAULT_OUT_DIR,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the synthetic set under ``out_dir`` (same files, byte for byte, for the same seed).

    Args:
        out_dir: root of the COCO layout; created if needed. Existing files of the same name are replaced.
        num_train, num_val: images per split (at least 1 each).
        seed: any non-negative integer.
        progress: show a tqdm bar on stderr.

    Returns:
        ``{"root", "train_images", "train_ann", "val_images", "val_ann"}`` as paths.
    """
    if num_train < 1 or num_val < 1:
        raise UserError(f"--num-train and --num-val must be at least 1, got {num_train} and {num_val}")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out-dir {root} is a file: pass a directory (it is created if missing)")
    with tqdm(total=num_train + num_val, desc="synthetic", unit="img", disable=not progress) as bar:
        train_images, train_ann = _make_split(root, "train", num_train, seed, bar)
        val_images, val_ann = _make_split(root, "val", num_val, seed, bar)
    return {
        "root": root,
        "train_images": train_images,
        "train_ann": train_ann,
        "val_images": val_images,
        "val_ann": val_ann,
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.data.synthetic",
        description=(
            "Write a small COCO-format detection set of coloured shapes (square, disc, triangle; "
            "category ids 1, 3, 7) as JPEGs plus instances_{train,val}2017.json, in the standard "
            "COCO layout so that `--coco DIR` works. Deterministic for a seed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="root directory of the set")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="validation images")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        paths = generate(args.out_dir, args.num_train, args.num_val, args.seed, progress=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"wrote {args.num_train} train + {args.num_val} val images to {paths['root']} (use --coco {paths['root']})"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
