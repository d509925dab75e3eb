"""The steps around the network, written once: read + pre-process one image, and decode a batch's outputs.

:class:`runtime.detector.Detector` strings them together (threads, batching by padded shape, order);
Triton's pre/post models and the benchmarks call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.decode import CornerProposals, Detections, corner_proposals
from runtime.image_io import read_image
from runtime.meta import ModelMeta
from runtime.names import HEAD_OUTPUTS
from runtime.postprocess import postprocess
from runtime.preprocess import ImageMeta, feature_shape, preprocess


@dataclass
class Prepared:
    """One image ready for the network: one view, or two with flip TTA ([original, flipped])."""

    key: int  # image id
    path: Path
    inputs: list[np.ndarray]  # each [3, H, W] float32
    metas: list[ImageMeta]
    seconds: float  # time spent reading + pre-processing
    source: str | None = None  # the image file, when it came from one

    @property
    def pad_shape(self) -> tuple[int, int]:
        return self.metas[0].pad_shape


def prepare(key: int, path: Path, meta: ModelMeta, flip: bool) -> Prepared:
    """Read and pre-process one image (raises ``UserError`` for unreadable files)."""
    t0 = time.perf_counter()
    prepared = prepare_image(key, path, read_image(path), meta, flip)
    prepared.seconds = time.perf_counter() - t0
    return prepared


def prepare_image(key: int, path: Path, image: np.ndarray, meta: ModelMeta, flip: bool) -> Prepared:
    """Pre-process an image already in memory (``(h, w, 3)`` uint8 RGB, as ``read_image`` returns it).

    For callers that need the pixels too (``runtime.detect`` draws on them); ``path`` is kept for messages.
    """
    t0 = time.perf_counter()
    views = [preprocess(image, meta.mean, meta.std, flip=False)]
    if flip:
        views.append(preprocess(image, meta.mean, meta.std, flip=True))
    return Prepared(key, Path(path), [v[0] for v in views], [v[1] for v in views], time.perf_counter() - t0)


def outputs_to_proposals(
    outputs: dict[str, np.ndarray], feat_hw: tuple[int, int], meta: ModelMeta
) -> list[CornerProposals]:
    """Backend outputs (raw heads or in-graph proposals) -> one ``CornerProposals`` per batch item."""
    tc = meta.test_cfg
    if all(name in outputs for name in HEAD_OUTPUTS):
        n = outputs[HEAD_OUTPUTS[0]].shape[0]
        return [
            corner_proposals(
                *(outputs[name][i] for name in HEAD_OUTPUTS), k=tc.corner_topk, kernel=tc.local_maximum_kernel
            )
            for i in range(n)
        ]
    return CornerProposals.from_arrays(feat_hw, **outputs)


def decode_outputs(
    outputs: dict[str, np.ndarray], views: Sequence[Sequence[ImageMeta]], meta: ModelMeta
) -> list[Detections]:
    """Network outputs of one batch -> final detections of each image.

    Args:
        outputs: proposal or raw-head outputs, batch first (``N`` = the total number of views).
        views: per image, the :class:`ImageMeta` of its views in batch order: ``[original]``, or
            ``[original, flipped]`` with flip TTA. All share one padded shape.
        meta: the model's test settings.
    """
    props = outputs_to_proposals(outputs, feature_shape(*views[0][0].pad_shape), meta)
    dets, i = [], 0
    for metas in views:
        dets.append(postprocess(props[i : i + len(metas)], metas, meta.test_cfg))
        i += len(metas)
    return dets


def decode_batch(outputs: dict[str, np.ndarray], batch: Sequence[Prepared], meta: ModelMeta) -> list[Detections]:
    """:func:`decode_outputs` for prepared images."""
    return decode_outputs(outputs, [p.metas for p in batch], meta)
