"""Images in, detections out, for any backend: pre-processing, batching by padded shape, decoding.

Written once and shared by every backend and command (eval, verify, bench, detect).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend
from runtime.decode import CornerProposals, Detections, corner_proposals
from runtime.errors import UserError
from runtime.image_io import read_image
from runtime.meta import ModelMeta
from runtime.names import HEAD_OUTPUTS
from runtime.postprocess import postprocess
from runtime.preprocess import ImageMeta, batch_inputs, feature_shape, preprocess


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


@dataclass
class Timings:
    """Accumulated seconds per stage; ``per_image_ms`` for reports."""

    preprocess: float = 0.0
    inference: float = 0.0
    decode: float = 0.0
    images: int = 0
    wall: float = 0.0

    def per_image_ms(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            "preprocess_ms": 1e3 * self.preprocess / n,
            "inference_ms": 1e3 * self.inference / n,
            "decode_ms": 1e3 * self.decode / n,
            "fps": self.images / self.wall if self.wall > 0 else 0.0,
        }


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


@dataclass
class BatchResult:
    """What one backend produced for a batch of images."""

    keys: list[int]
    outputs: dict[str, np.ndarray]
    detections: list[Detections] = field(default_factory=list)


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


def run_batch(backend: Backend, batch: list[Prepared], timings: Timings | None = None) -> BatchResult:
    """Inference + decoding for images that share one padded shape."""
    inputs = batch_inputs([x for p in batch for x in p.inputs])
    t0 = time.perf_counter()
    outputs = backend.infer(inputs)
    t1 = time.perf_counter()
    dets = decode_batch(outputs, batch, backend.meta)
    t2 = time.perf_counter()
    if timings is not None:
        timings.inference += t1 - t0
        timings.decode += t2 - t1
    return BatchResult([p.key for p in batch], outputs, dets)


def batches_by_shape(prepared: Iterable[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Group images with the same padded shape ``(h|127, w|127)`` into batches of ``batch_size``.

    Padding an image onto a larger canvas changes CornerNet's outputs, so only same-shape images
    share a batch; leftovers are flushed at the end.
    """
    pending: dict[tuple[int, int], list[Prepared]] = {}
    for p in prepared:
        bucket = pending.setdefault(p.pad_shape, [])
        bucket.append(p)
        if len(bucket) == batch_size:
            yield pending.pop(p.pad_shape)
    yield from pending.values()


def prepared_images(
    items: list[tuple[int, Path]],
    meta: ModelMeta,
    flip: bool,
    workers: int = 2,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Prepared]:
    """Pre-process in worker threads (cv2 releases the GIL) while the caller runs the network.

    Unreadable images are skipped through ``on_skip(path, reason)``; without it they raise.
    """
    ahead = max(2 * workers, 4)
    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="preprocess") as pool:
        futures = [pool.submit(prepare, key, path, meta, flip) for key, path in items[:ahead]]
        nxt = len(futures)
        for i in range(len(items)):
            future = futures[i]
            if nxt < len(items):
                futures.append(pool.submit(prepare, items[nxt][0], items[nxt][1], meta, flip))
                nxt += 1
            try:
                yield future.result()
            except UserError as e:
                if on_skip is None:
                    raise
                on_skip(items[i][1], str(e))
            futures[i] = None  # type: ignore[call-overload] - free the finished image
