"""mmdet's CornerNet train-time augmentation in numpy/cv2, image kept RGB throughout.

The pipeline of ``cornernet_hourglass104_mstest_8x6_210e_coco.py`` after loading
(``../shared/reference/cornernet_mmdet.md`` section 6), in order:

1. :func:`photometric_distortion` (mmdet ``PhotoMetricDistortion``)
2. :func:`random_center_crop_pad` (``RandomCenterCropPad``, train mode)
3. :func:`resize` to 511x511, aspect not kept (``Resize(keep_ratio=False)``)
4. :func:`random_horizontal_flip` (``RandomFlip(flip_ratio=0.5)``)
5. :func:`normalize` (``Normalize``): ``(x - mean) / std`` in float32

Every transform has the same signature ``f(image, boxes, labels, rng) -> (image, boxes, labels)``:

- ``image``: (H, W, 3) float32 RGB, 0-255 scale until :func:`normalize`;
- ``boxes``: (N, 4) float32 ``x1, y1, x2, y2`` in pixels, ``x2`` one past the last column (mmdet's
  convention: a box covering the whole image is ``[0, 0, W, H]``);
- ``labels``: (N,) int64;
- ``rng``: a ``numpy.random.Generator``; the only source of randomness, so a seed reproduces a sample.

mmdet loads images BGR and converts to RGB only in ``Normalize``; keeping RGB from the start changes
nothing: the HSV conversion is done as RGB<->HSV (same hue), the random channel permutation has the
same distribution, and padding uses the mean in RGB order, which is still exactly 0 after normalising.
Inputs are never modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from runtime.meta import MMDET_MEAN_RGB, MMDET_STD_RGB
from runtime.preprocess import normalize as normalize_rgb

# (image (H, W, 3) float32, boxes (N, 4) float32, labels (N,) int64)
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], Sample]

CROP_RATIOS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)


# --------------------------------------------------------------------------- photometric


def photometric_distortion(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18.0,
) -> Sample:
    """mmdet ``PhotoMetricDistortion``: each step applied with probability 0.5.

    Order: brightness (+U(-d, d)); contrast (x U(lo, hi)) either here or at the end, 50/50; to HSV;
    saturation (S x U(lo, hi)); hue (H + U(-d, d) degrees, wrapped to [0, 360]); back to RGB; contrast
    if not done before; random channel permutation. All draws are made up front, as mmdet 3.x does.
    Values are not clipped to [0, 255] (mmdet does not clip either). Boxes and labels pass through.
    """
    contrast_last = bool(rng.integers(2))
    do_brightness, do_contrast, do_saturation, do_hue, do_swap = rng.integers(2, size=5).astype(bool)
    delta = rng.uniform(-brightness_delta, brightness_delta)
    alpha = rng.uniform(*contrast_range)
    saturation = rng.uniform(*saturation_range)
    hue = rng.uniform(-hue_delta, hue_delta)
    order = rng.permutation(3)

    img = image.astype(np.float32, copy=True)
    if do_brightness:
        img += np.float32(delta)
    if do_contrast and not contrast_last:
        img *= np.float32(alpha)
    # cv2 keeps float HSV unscaled: H in degrees [0, 360), S in [0, 1], V = max(R, G, B).
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    if do_saturation:
        hsv[..., 1] *= np.float32(saturation)
    if do_hue:
        h = hsv[..., 0]
        h += np.float32(hue)
        h[h > 360] -= 360  # one wrap is enough: |hue| <= hue_delta < 360
        h[h < 0] += 360
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if do_contrast and contrast_last:
        img *= np.float32(alpha)
    if do_swap:
        img = np.ascontiguousarray(img[..., order])
    return img, boxes, labels


# --------------------------------------------------------------------------- crop / pad


def _get_border(border: int, size: int) -> int:
    """mmdet ``RandomCenterCropPad._get_border``: shrink ``border`` until the centre range is non-empty.

    With ``k = 2 * border / size``, the border is divided by the smallest power of two ``i`` with
    ``border / i < size / 2`` (mmdet writes this as ``2 ** (ceil(log2(ceil(k))) + (k is integer))``).
    The crop centre is then drawn from ``[border, size - border)``.
    """
    k = 2 * border / size
    i = 2 ** (math.ceil(math.log2(math.ceil(k))) + (k == int(k)))
    return int(border // i)


def crop_patch(center: tuple[int, int], size: tuple[int, int], img_h: int, img_w: int) -> np.ndarray:
    """``[x0, y0, x1, y1]``: the part of the image that a ``size`` (th, tw) window centred at
    ``center`` (cy, cx) covers. As in mmdet the window spans ``2 * (tw // 2)`` columns, one short of
    an odd ``tw`` (the last canvas column is then always padding).
    """
    cy, cx = center
    th, tw = size
    return np.array(
        [max(0, cx - tw // 2), max(0, cy - th // 2), min(cx + tw // 2, img_w), min(cy + th // 2, img_h)]
    )


def crop_and_paste(
    image: np.ndarray, center: tuple[int, int], size: tuple[int, int], pad_value: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmdet ``_crop_image_and_paste``: a ``size`` canvas of ``pad_value`` whose centre is ``center`` of ``image``.

    Args:
        image: (H, W, C).
        center: (cy, cx) in ``image``.
        size: (th, tw) of the output canvas.
        pad_value: per-channel fill for the part of the canvas outside the image.

    Returns:
        canvas (th, tw, C) of ``image.dtype``; border float32 ``[top, bottom, left, right]`` of the
        pasted region in the canvas; patch ``[x0, y0, x1, y1]`` (:func:`crop_patch`).
    """
    cy, cx = center
    th, tw = size
    x0, y0, x1, y1 = (int(v) for v in crop_patch(center, size, *image.shape[:2]))
    left, right, top, bottom = cx - x0, x1 - cx, cy - y0, y1 - cy
    canvas = np.empty((th, tw, image.shape[2]), dtype=image.dtype)
    _fill_pixels(canvas, pad_value)
    ccy, ccx = th // 2, tw // 2
    canvas[ccy - top : ccy + bottom, ccx - left : ccx + right] = image[y0:y1, x0:x1]
    border = np.array([ccy - top, ccy + bottom, ccx - left, ccx + right], dtype=np.float32)
    return canvas, border, np.array([x0, y0, x1, y1])


def _fill_pixels(image: np.ndarray, value: Sequence[float]) -> None:
    """Set every pixel of a C-contiguous (H, W, C) array to ``value`` in place.

    Same result as ``image[...] = value``, ~20x faster: numpy broadcasts a length-3 last axis slowly,
    so assign one pre-tiled row of ``W * C`` values instead.
    """
    h, w, c = image.shape
    image.reshape(h, w * c)[:] = np.tile(np.asarray(value, dtype=image.dtype), w)


def centers_in_patch(boxes: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """(N,) bool: box centre strictly inside ``patch`` ``[x0, y0, x1, y1]`` (mmdet ``_filter_boxes``)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > patch[0]) & (cy > patch[1]) & (cx < patch[2]) & (cy < patch[3])


def crop_boxes(
    boxes: np.ndarray, labels: np.ndarray, center: tuple[int, int], size: tuple[int, int], patch: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of :func:`crop_and_paste`'s output: keep centres inside ``patch``, shift, clip, drop empty.

    The shift maps image point ``center`` (cy, cx) to canvas point ``(th // 2, tw // 2)``.
    """
    cy, cx = center
    th, tw = size
    keep = centers_in_patch(boxes, patch)
    out = boxes[keep].astype(np.float32, copy=True)
    out[:, 0::2] = np.clip(out[:, 0::2] + (tw // 2 - cx), 0, tw)
    out[:, 1::2] = np.clip(out[:, 1::2] + (th // 2 - cy), 0, th)
    nonempty = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[nonempty], labels[keep][nonempty]


def sample_center_crop(
    rng: np.random.Generator,
    img_h: int,
    img_w: int,
    boxes: np.ndarray,
    *,
    crop_size: tuple[int, int] = (511, 511),
    ratios: Sequence[float] = CROP_RATIOS,
    border: int = 128,
    max_rounds: int = 100,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The random part of ``RandomCenterCropPad`` (train): returns ``(center (cy, cx), size (th, tw))``.

    mmdet's loop: draw a scale from ``ratios`` (canvas ``int(crop_size * scale)``), then up to 50
    centres uniformly in ``[border, size - border)`` per axis (border from :func:`_get_border`);
    accept the first window whose patch holds at least one box centre (any window when there are no
    boxes), else draw a new scale. mmdet loops forever when no window can hold a box centre;
    ``max_rounds`` (x 50 tries) bounds that and then returns the last window drawn.
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    h_border, w_border = _get_border(border, img_h), _get_border(border, img_w)
    for _ in range(max_rounds):
        scale = ratios[int(rng.integers(len(ratios)))]
        size = (int(crop_size[0] * scale), int(crop_size[1] * scale))
        for _ in range(50):
            cx = int(rng.integers(w_border, img_w - w_border))
            cy = int(rng.integers(h_border, img_h - h_border))
            patch = crop_patch((cy, cx), size, img_h, img_w)
            if len(boxes) == 0 or centers_in_patch(boxes, patch).any():
                return (cy, cx), size
    return (cy, cx), size


def random_center_crop_pad(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: tuple[int, int] = (511, 511),
    ratios: Sequence[float] = CROP_RATIOS,
    border: int = 128,
    pad_value: Sequence[float] = MMDET_MEAN_RGB,
    max_rounds: int = 100,
) -> Sample:
    """mmdet ``RandomCenterCropPad`` in train mode.

    A window drawn by :func:`sample_center_crop` becomes the new image (:func:`crop_and_paste`),
    padded with ``pad_value`` outside the original image (the normalisation mean, so padding is
    exactly 0 after :func:`normalize`). Boxes whose centre is not strictly inside the patch are
    dropped; the rest are shifted and clipped to the canvas (:func:`crop_boxes`).

    Args:
        crop_size: (h, w) before scaling by a ratio.
    """
    center, size = sample_center_crop(
        rng,
        image.shape[0],
        image.shape[1],
        boxes,
        crop_size=crop_size,
        ratios=ratios,
        border=border,
        max_rounds=max_rounds,
    )
    canvas, _, patch = crop_and_paste(image, center, size, pad_value)
    new_boxes, new_labels = crop_boxes(boxes, labels, center, size, patch)
    return canvas, new_boxes, new_labels


# --------------------------------------------------------------------------- resize / flip / normalise


def resize(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    size: tuple[int, int] = (511, 511),
) -> Sample:
    """mmdet ``Resize(keep_ratio=False)``: bilinear (cv2 ``INTER_LINEAR``) to ``size`` (h, w).

    Boxes are scaled by ``(new_w / w, new_h / h)`` and clipped to the new image.
    """
    h, w = image.shape[:2]
    new_h, new_w = size
    out = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    new_boxes = boxes.astype(np.float32) * scale
    new_boxes[:, 0::2] = np.clip(new_boxes[:, 0::2], 0, new_w)
    new_boxes[:, 1::2] = np.clip(new_boxes[:, 1::2], 0, new_h)
    return out, new_boxes, labels


def flip_horizontal(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; boxes become ``[w - x2, y1, w - x1, y2]`` (mmdet: no -1, x2 is exclusive)."""
    w = image.shape[1]
    flipped = boxes.astype(np.float32, copy=True)
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    # cv2.flip gives the same pixels as image[:, ::-1] but ~10x faster than copying that view.
    return cv2.flip(np.ascontiguousarray(image), 1), flipped


def random_horizontal_flip(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, prob: float = 0.5
) -> Sample:
    """mmdet ``RandomFlip(flip_ratio=prob, direction='horizontal')``."""
    if rng.random() < prob:
        image, boxes = flip_horizontal(image, boxes)
    return image, boxes, labels


def normalize(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    mean: Sequence[float] = MMDET_MEAN_RGB,
    std: Sequence[float] = MMDET_STD_RGB,
) -> Sample:
    """``(x - mean) / std`` in float32, per RGB channel: the test-time normalisation, shared."""
    return normalize_rgb(image, mean, std), boxes, labels


# --------------------------------------------------------------------------- composition


@dataclass(frozen=True)
class TrainTransformConfig:
    """mmdet CornerNet train pipeline settings; the defaults are the HG-104 config's.

    Sizes are (height, width). ``photometric`` and ``flip_prob`` let tests and ablations switch steps off.
    """

    photometric: bool = True
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: float = 18.0
    crop_size: tuple[int, int] = (511, 511)
    crop_ratios: tuple[float, ...] = CROP_RATIOS
    border: int = 128
    input_size: tuple[int, int] = (511, 511)
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = MMDET_MEAN_RGB
    std: tuple[float, float, float] = MMDET_STD_RGB


class TrainTransform:
    """The composed pipeline: ``TrainTransform(cfg)(image, boxes, labels, rng) -> (image, boxes, labels)``.

    ``image`` may be uint8 or float32 (H, W, 3) RGB; the output image is (input_size, 3) float32,
    normalised. Boxes are xyxy pixels; labels pass through with the boxes that survive the crop.
    """

    def __init__(self, cfg: TrainTransformConfig | None = None) -> None:
        self.cfg = cfg = cfg or TrainTransformConfig()
        # Each step is a plain transform with its settings bound, called as step(image, boxes, labels, rng).
        steps: list[Transform] = []
        if cfg.photometric:
            steps.append(
                partial(
                    photometric_distortion,
                    brightness_delta=cfg.brightness_delta,
                    contrast_range=cfg.contrast_range,
                    saturation_range=cfg.saturation_range,
                    hue_delta=cfg.hue_delta,
                )
            )
        steps += [
            partial(
                random_center_crop_pad,
                crop_size=cfg.crop_size,
                ratios=cfg.crop_ratios,
                border=cfg.border,
                pad_value=cfg.mean,
            ),
            partial(resize, size=cfg.input_size),
            partial(random_horizontal_flip, prob=cfg.flip_prob),
            partial(normalize, mean=cfg.mean, std=cfg.std),
        ]
        self.steps = steps

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> Sample:
        # mmdet's LoadImageFromFile(to_float32=True): everything after works in float32.
        sample: Sample = (
            image.astype(np.float32),
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64).reshape(-1),
        )
        for step in self.steps:
            sample = step(*sample, rng)
        return sample


def train_transform(cfg: TrainTransformConfig | None = None) -> TrainTransform:
    """The mmdet CornerNet train pipeline for ``cfg`` (defaults: the HG-104 config)."""
    return TrainTransform(cfg)
