"""Test-time pre-processing, bit-exact with mmdet 3.3.0's CornerNet test pipeline.

mmdet's steps, and ours:

1. (flip TTA only) flip the image horizontally. mmdet 3.x's TTA pipeline flips *before* padding, so
   the flipped view has the same border as the original and the boxes map back with ``x' = w - x``.
2. ``RandomCenterCropPad(test_mode=True, test_pad_mode=['logical_or', 127])``: centre the image in a
   canvas of ``(h | 127, w | 127)`` filled with the mean colour.
3. ``DetDataPreprocessor``: BGR -> RGB, ``(x - mean) / std`` in float32. The mean-coloured padding
   becomes exactly 0.0, so we normalise the image pixels and leave the rest of the canvas at zero.

Everything here is numpy only; the same code feeds the PyTorch, ONNX Runtime and TensorRT backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of one network input, what decoding needs to map boxes back to the image.

    Attributes:
        ori_shape: ``(h, w)`` of the image as read.
        pad_shape: ``(th, tw)`` of the padded canvas the network saw.
        border: ``(top, bottom, left, right)`` of the image inside the canvas, in canvas pixels
            (mmdet's ``border``; ``bottom``/``right`` are exclusive ends).
        flip: whether the image was flipped horizontally before padding.
    """

    ori_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    border: tuple[float, float, float, float]
    flip: bool = False


def pad_shape_for(h: int, w: int) -> tuple[int, int]:
    """The padded canvas ``(h | 127, w | 127)`` mmdet's test ``RandomCenterCropPad`` uses.

    Every side becomes ``128 m - 1``, the sizes HourglassNet's strides divide cleanly.
    """
    return (int(h) | 127, int(w) | 127)


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution along one axis (PyTorch's floor rule, dilation 1)."""
    return (n + 2 * pad - kernel) // stride + 1


def feature_shape(pad_h: int, pad_w: int) -> tuple[int, int]:
    """Size ``(H, W)`` of HourglassNet's output maps for an input of ``(pad_h, pad_w)``.

    The stem is a 7x7 stride-2 conv (padding 3) followed by a 3x3 stride-2 residual block
    (padding 1); the hourglass modules keep that size. For ``128 m - 1`` inputs this is
    ``(pad + 1) / 4``: 511 -> 128, 383 -> 96, 639 -> 160.
    """

    def stem(n: int) -> int:
        return _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)

    return stem(pad_h), stem(pad_w)


def _paste_geometry(size: int, target: int) -> tuple[int, int, int, int]:
    """mmdet's test-mode crop-and-paste arithmetic along one axis.

    The image centre ``size // 2`` goes to the canvas centre ``target // 2``; the source span is
    ``[s0, s1)`` and lands at ``[d0, d1)``. When ``size`` is already ``128 m - 1`` the canvas is
    the same size and ``s1 = size - 1``: mmdet drops the last row/column and pads it instead. We
    keep that quirk, since the golden outputs (and mmdet's accuracy) include it.

    Returns:
        ``(s0, s1, d0, d1)`` with ``d0``/``d1`` equal to mmdet's border start/end on this axis.
    """
    centre = size // 2
    half = target // 2
    s0 = max(0, centre - half)
    s1 = min(centre + half, size)
    d0 = half - (centre - s0)
    d1 = half + (s1 - centre)
    return s0, s1, d0, d1


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per RGB channel in float32: ``(h, w, 3)`` any dtype -> ``(h, w, 3)`` float32.

    The two float32 roundings (subtract, then divide) of mmdet 3.x's ``DetDataPreprocessor``, bit for
    bit. Used at test time here and at train time by ``trainer.data.transforms``.
    """
    h, w, c = image.shape
    # The same float32 ops on (h, w*c) rows against a tiled mean/std: numpy broadcasts a length-3
    # last axis ~7x slower than one long row.
    rows = np.ascontiguousarray(image, dtype=np.float32).reshape(h, w * c)
    out = rows - np.tile(np.asarray(mean, dtype=np.float32), w)
    out /= np.tile(np.asarray(std, dtype=np.float32), w)
    return out.reshape(h, w, c)


def preprocess(
    image_rgb: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = False,
) -> tuple[np.ndarray, ImageMeta]:
    """Turn one RGB image into mmdet's normalised, padded network input.

    Args:
        image_rgb: ``(h, w, 3)`` uint8, RGB (as :func:`runtime.image_io.read_image` returns it).
        mean: per-channel RGB mean, e.g. ``(123.675, 116.28, 103.53)``.
        std: per-channel RGB std, e.g. ``(58.395, 57.12, 57.375)``.
        flip: flip horizontally before padding (the second view of flip TTA).

    Returns:
        ``(chw, meta)``: ``chw`` is ``(3, h | 127, w | 127)`` float32, ``(x - mean) / std`` inside
        the border and exactly 0.0 outside; ``meta`` its :class:`ImageMeta`.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {image_rgb.shape}")
    h, w = image_rgb.shape[:2]
    if flip:
        image_rgb = image_rgb[:, ::-1]
    th, tw = pad_shape_for(h, w)
    ys0, ys1, yd0, yd1 = _paste_geometry(h, th)
    xs0, xs1, xd0, xd1 = _paste_geometry(w, tw)

    out = np.zeros((3, th, tw), dtype=np.float32)
    out[:, yd0:yd1, xd0:xd1] = normalize(image_rgb[ys0:ys1, xs0:xs1], mean, std).transpose(2, 0, 1)

    meta = ImageMeta(
        ori_shape=(h, w),
        pad_shape=(th, tw),
        border=(float(yd0), float(yd1), float(xd0), float(xd1)),
        flip=bool(flip),
    )
    return out, meta


def batch_inputs(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Stack ``(3, H, W)`` inputs of one shape into ``(N, 3, H, W)`` float32.

    Images are never padded onto a larger canvas here: CornerNet's outputs depend on the canvas, so
    only images that share a padded shape can be batched (see contracts.md, "Batching").
    """
    if not inputs:
        raise ValueError("batch_inputs needs at least one input")
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise ValueError(
            f"cannot batch inputs of different shapes {sorted(shapes)}; group images by padded shape first"
        )
    return np.ascontiguousarray(np.stack(inputs).astype(np.float32, copy=False))
