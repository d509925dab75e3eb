"""Drawing detections with OpenCV: boxes, class names and scores, and titled side-by-side panels.

Library code shared by ``python -m runtime.detect`` and ``runtime.eval --verify --pictures``. Images
are RGB ``uint8`` in and out (what :func:`runtime.image_io.read_image` returns); nothing here reads
or writes files. Colours are a pure function of the class label, so one class has one colour in
every picture and every run.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from runtime.decode import Detections

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN_RATIO = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label``: hues a golden-ratio step apart, bright and saturated.

    Neighbouring labels get far-apart hues and no two of the first few dozen labels look alike.
    """
    hue = (0.08 + int(label) * _GOLDEN_RATIO) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (RGB), by Rec. 601 luma."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A writable, contiguous ``(h, w, 3)`` uint8 copy of a gray, RGB or RGBA image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) image, got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).copy()


def line_width(height: int, width: int) -> int:
    """Box line width in pixels for an image of this size: 1 up to ~900 px (h + w), 2 for COCO, more for large."""
    return max(1, round((height + width) / 600))


def _label(
    canvas: np.ndarray, text: str, x: int, y_top: int, y_bottom: int, color: tuple[int, int, int], lw: int
) -> None:
    """A filled tag with ``text`` just above ``y_top`` (or just below it when there is no room), left at ``x``."""
    w = canvas.shape[1]
    scale = 0.3 + 0.15 * lw
    thick = max(1, lw // 2)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = max(1, lw)
    tag_h = th + base + 2 * pad
    top = y_top - tag_h if y_top - tag_h >= 0 else min(y_top, max(0, y_bottom - tag_h))
    left = max(0, min(x, w - tw - 2 * pad))
    cv2.rectangle(canvas, (left, top), (left + tw + 2 * pad, top + tag_h), color, -1)
    cv2.putText(
        canvas, text, (left + pad, top + pad + th), _FONT, scale, text_color(color), thick, cv2.LINE_AA
    )


def draw_detections(
    image_rgb: np.ndarray,
    dets: Detections,
    classes: Sequence[str],
    score_thr: float = 0.3,
) -> np.ndarray:
    """Draw the detections scoring at least ``score_thr``: a box and a ``"name 0.87"`` tag each.

    Lower-scoring boxes are drawn first so the best ones stay on top. Boxes are clipped to the
    image; labels beyond ``classes`` are named ``class<N>``.

    Args:
        image_rgb: ``(h, w, 3)`` uint8 RGB (gray ``(h, w)`` and RGBA are accepted too).
        dets: detections in ``image_rgb``'s pixels (xyxy).
        classes: class names indexed by label.
        score_thr: smallest score drawn.

    Returns:
        A new ``(h, w, 3)`` uint8 RGB image; ``image_rgb`` is not modified.
    """
    canvas = _as_rgb(image_rgb)
    h, w = canvas.shape[:2]
    lw = line_width(h, w)
    scores = np.asarray(dets.scores, dtype=np.float64)
    keep = np.flatnonzero(scores >= score_thr)
    for i in keep[np.argsort(scores[keep], kind="stable")]:
        label = int(dets.labels[i])
        color = class_color(label)
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        if not all(np.isfinite((x1, y1, x2, y2))):
            continue
        x1, x2 = (round(min(max(v, 0.0), w - 1)) for v in (x1, x2))
        y1, y2 = (round(min(max(v, 0.0), h - 1)) for v in (y1, y2))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, lw)
        name = classes[label] if 0 <= label < len(classes) else f"class{label}"
        _label(canvas, f"{name} {scores[i]:.2f}", x1, y1, y2, color, lw)
    return canvas


def side_by_side(
    panels: Sequence[tuple[str, np.ndarray]],
    gap: int = 8,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Panels next to each other, each under a one-line title, on a ``background`` canvas.

    Args:
        panels: ``(title, image)`` pairs; images ``(h, w, 3)`` uint8 RGB of any sizes (top-aligned).
        gap: pixels between panels and around the edge.
        background: RGB fill.

    Returns:
        ``(H, W, 3)`` uint8 RGB; each panel is at least as wide as its title.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    images = [_as_rgb(img) for _, img in panels]
    max_w = max(img.shape[1] for img in images)
    scale = float(np.clip(max_w / 900, 0.45, 2.0))
    thick = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(title, _FONT, scale, thick) for title, _ in panels]
    title_h = max(th + base for (_, th), base in sizes) + 2 * gap
    widths = [max(img.shape[1], tw + 2 * gap) for img, ((tw, _), _) in zip(images, sizes, strict=True)]
    out_h = title_h + max(img.shape[0] for img in images) + gap
    out_w = sum(widths) + gap * (len(panels) + 1)
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[:] = background
    x = gap
    for (title, _), img, pw, ((_, th), _) in zip(panels, images, widths, sizes, strict=True):
        cv2.putText(canvas, title, (x, gap + th), _FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
        canvas[title_h : title_h + img.shape[0], x : x + img.shape[1]] = img
        x += pw + gap
    return canvas
