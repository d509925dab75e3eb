"""``Detector``: the one way images become detections, for checkpoints, ONNX files, engines and served models.

Example::

    from runtime import Detector

    with Detector("cornernet.onnx") as det:          # .pth, .onnx, .plan or grpc://host:8001/cornernet
        r = det("photo.jpg")                          # or an HxWx3 uint8 RGB array
        for box, score, name in zip(r.boxes, r.scores, r.names):
            print(name, round(float(score), 3), box)

``det([a, b])`` returns a list in input order; ``det.stream(images)`` is an iterator over any iterable of
arrays or paths that yields results in input order with bounded memory. In the stream, reading and
pre-processing run in ``workers`` threads, the network runs on the consumer's thread (CUDA contexts and
TensorRT execution contexts stay on the thread that made them) and decoding (pairing, soft-NMS) runs in
one more thread, so batch k+1 is being prepared and batch k-1 decoded while batch k is in the network.

Batching keeps CornerNet's padded-shape rule (contracts.md, "Batching"): only images whose padded canvas
``(h|127, w|127)`` is equal share a batch. Images wait in per-shape buckets; when more than
``4 * batch_size`` images wait, the oldest bucket goes out as a partial batch, which bounds memory on data
sets with many shapes. Results are identical for any batch size (each image still sees its own canvas).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from runtime.backends import Backend, is_served_address, open_backend
from runtime.decode import Detections
from runtime.errors import UserError
from runtime.image_io import read_image
from runtime.meta import ModelMeta
from runtime.pipeline import Prepared, decode_batch, prepare_image

#: What ``Detector`` accepts as one image: an ``(H, W, 3)`` uint8 RGB array or a path to an image file.
Image = Union[np.ndarray, str, os.PathLike]  # noqa: UP007 - a runtime alias, readable in 3.10

@dataclass(frozen=True)
class Result:
    """Detections of one image, best first.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in original image pixels.
        scores: ``(N,)`` float32.
        labels: ``(N,)`` int64 class indices ``0..C-1``.
        classes: the model's class names (``classes[labels[i]]``).
        source: the image's path when it came from a file.
        outputs: this image's raw network outputs (leading dimension = views: 1, or 2 with flip), only
            with ``keep_outputs=True`` and never for served models.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str | None = None
    outputs: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.classes[int(i)] for i in self.labels]

    def detections(self) -> Detections:
        return Detections(self.boxes, self.scores, self.labels)

    def above(self, score_thr: float) -> Result:
        """The detections scoring at least ``score_thr`` (e.g. for drawing)."""
        keep = self.scores >= score_thr
        return Result(self.boxes[keep], self.scores[keep], self.labels[keep], self.classes, self.source)


@dataclass
class StageTimes:
    """Busy seconds per stage, summed over threads, and the wall time of the stream.

    ``network_busy`` is the fraction of the wall time the network was running: near 1 means the host keeps
    up with it; well below 1 means reading, pre-processing or decoding starve it.
    """

    preprocess: float = 0.0
    inference: float = 0.0
    decode: float = 0.0
    wall: float = 0.0
    images: int = 0
    batch_seconds: list[float] = field(default_factory=list)  # network time of each batch
    batch_sizes: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    @property
    def network_busy(self) -> float:
        return self.inference / self.wall if self.wall > 0 else 0.0

    def per_image_ms(self) -> dict[str, float]:
        """The report's ``timings``: ms per image for each stage, ``fps`` and ``network_busy``."""
        n = max(self.images, 1)
        return {
            "preprocess_ms": 1e3 * self.preprocess / n,
            "inference_ms": 1e3 * self.inference / n,
            "decode_ms": 1e3 * self.decode / n,
            "fps": self.images / self.wall if self.wall > 0 else 0.0,
            "network_busy": self.network_busy,
        }


def _as_source(image: Image) -> str | None:
    return None if isinstance(image, np.ndarray) else os.fspath(image)


def _check_array(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(
            f"{where}: expected an HxWx3 uint8 RGB array, got shape {tuple(image.shape)} dtype {image.dtype}; "
            "convert it (e.g. cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) or pass the file path"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"{where}: the image is empty ({image.shape[0]}x{image.shape[1]})")
    return image


def load_image(image: Image, where: str = "image") -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from an array or a path (read as mmdet reads it)."""
    if isinstance(image, np.ndarray):
        return _check_array(image, where)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    raise UserError(f"{where}: expected an image path or an HxWx3 uint8 RGB array, got {type(image).__name__}")


class _Skipped:
    """Marks an input that could not be read (``on_skip`` was told)."""


_SKIPPED = _Skipped()


class Detector:
    """CornerNet detections for images, from any model file or a served model.

    Args:
        model: ``.pth`` checkpoint (ours or mmdet's), ``.onnx`` file, ``.plan`` TensorRT engine, a served
            model's address (``grpc://HOST:PORT/NAME``, ``http://HOST:PORT/NAME``), or an open
            :class:`runtime.backends.Backend` (e.g. the model being trained; the caller keeps ownership).
        device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when available.
        flip: flip test-time augmentation (mmdet's merge).
        batch_size: images per network call; only images with the same padded shape share a batch.
        workers: threads that read and pre-process images in :meth:`stream`.
        **backend_options: passed to the backend (e.g. ``cuda_graph=True``, ``plugin=PATH`` for engines,
            ``outputs="heads"``/``dtype="bf16"`` for checkpoints, ``threads=N`` for ONNX Runtime).

    Example::

        with Detector("model.onnx", batch_size=4) as det:
            for r in det.stream(paths):
                print(r.source, len(r), r.names[:3])
    """

    def __init__(
        self,
        model: str | os.PathLike | Backend,
        device: str | None = None,
        flip: bool = False,
        batch_size: int = 1,
        workers: int = 2,
        **backend_options: Any,
    ) -> None:
        if batch_size < 1 or workers < 0:
            raise UserError(f"batch_size must be at least 1 and workers at least 0 (got {batch_size}, {workers})")
        self.flip = flip
        self.batch_size = batch_size
        self.workers = workers
        self.times = StageTimes()
        self._owns_backend = not isinstance(model, Backend)
        self.backend: Backend | None = None
        self.client: Any = None
        if isinstance(model, Backend):
            self.backend = model
        elif is_served_address(model):
            if flip:
                raise UserError(f"{model}: flip TTA is not available for served models; drop --flip")
            from runtime.backends.triton import TritonClient

            self.client = TritonClient(str(model), **backend_options)
        else:
            self.backend = open_backend(model, device=device, **backend_options)
        # What the results came from, for messages: the path or address, or the open backend's name.
        self.model = model.name if isinstance(model, Backend) else os.fspath(model)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def meta(self) -> ModelMeta:
        """Classes, normalisation and test settings of the model."""
        return self.backend.meta if self.backend is not None else self.client.meta

    @property
    def info(self) -> dict[str, Any]:
        """Provenance for reports: backend, precision, source checkpoint and its sha256, versions."""
        return self.backend.info if self.backend is not None else self.client.info

    @property
    def name(self) -> str:
        """The backend's name: ``pytorch``, ``onnxruntime``, ``tensorrt`` or ``triton``."""
        return self.backend.name if self.backend is not None else "triton"

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the raw network outputs (empty for served models, which return detections)."""
        return self.backend.output_names if self.backend is not None else ()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    # -- one call ---------------------------------------------------------------------------------
    def __call__(self, images: Image | Sequence[Image]) -> Result | list[Result]:
        """Detections of one image (array or path), or of a list of them (a list, in order)."""
        if isinstance(images, (list, tuple)):
            return list(self.stream(images))
        return next(iter(self.stream([images])))

    # -- the stream -------------------------------------------------------------------------------
    def stream(
        self,
        images: Iterable[Image],
        keep_outputs: bool = False,
        on_skip: Callable[[str, str], None] | None = None,
    ) -> Iterator[Result]:
        """Results for ``images`` in input order, with the stages overlapped and memory bounded.

        Args:
            images: any iterable of ``(H, W, 3)`` uint8 RGB arrays or paths (read lazily, never all at once).
            keep_outputs: attach each image's raw network outputs to its result (for comparisons).
            on_skip: called as ``on_skip(source, reason)`` for an unreadable image, which is then left out;
                without it an unreadable image raises :class:`UserError`.
        """
        self.times = StageTimes()  # each stream reports its own stage times
        if self.client is not None:
            yield from self._stream_served(images, on_skip)
        else:
            yield from self._stream_local(images, keep_outputs, on_skip)

    def _prepare(self, index: int, image: Image) -> Prepared:
        t0 = time.perf_counter()
        where = _as_source(image) or f"image {index}"
        pixels = load_image(image, where)
        prepared = prepare_image(index, Path(where), pixels, self.meta, self.flip)
        prepared.source = _as_source(image)
        prepared.seconds = time.perf_counter() - t0
        self.times.add("preprocess", prepared.seconds)
        return prepared

    def _decode(self, batch: list[Prepared], outputs: dict[str, np.ndarray], keep: bool) -> list[tuple[int, Result]]:
        t0 = time.perf_counter()
        dets = decode_batch(outputs, batch, self.meta)
        results, row = [], 0
        for p, d in zip(batch, dets, strict=True):
            views = len(p.inputs)
            own = {k: v[row : row + views] for k, v in outputs.items()} if keep else None
            row += views
            results.append((p.key, Result(d.boxes, d.scores, d.labels, self.meta.classes, p.source, own)))
        self.times.add("decode", time.perf_counter() - t0)
        return results

    def _infer(self, batch: list[Prepared]) -> dict[str, np.ndarray]:
        from runtime.preprocess import batch_inputs

        assert self.backend is not None
        inputs = batch_inputs([x for p in batch for x in p.inputs])
        t0 = time.perf_counter()
        outputs = self.backend.infer(inputs)
        seconds = time.perf_counter() - t0
        self.times.add("inference", seconds)
        self.times.batch_seconds.append(seconds)
        self.times.batch_sizes.append(len(batch))
        return outputs

    def _in_order(
        self,
        pool: ThreadPoolExecutor | None,
        work: Callable[[int, Image], Any],
        images: Iterable[Image],
        ahead: int,
        on_skip: Callable[[str, str], None] | None,
    ) -> Iterator[tuple[int, Any]]:
        """``(index, work(index, image))`` in input order, at most ``ahead`` images in ``pool`` at once.

        ``pool=None`` runs ``work`` on this thread. An image whose ``work`` raises :class:`UserError` is
        reported through ``on_skip`` and yields ``_SKIPPED`` (without ``on_skip`` the error propagates).
        """
        pending: deque[tuple[int, Image, Future[Any]]] = deque()
        inputs = enumerate(images)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < ahead:
                    try:
                        index, image = next(inputs)
                    except StopIteration:
                        exhausted = True
                        break
                    if pool is None:
                        future: Future[Any] = Future()
                        try:
                            future.set_result(work(index, image))
                        except Exception as e:  # delivered below like a worker's error
                            future.set_exception(e)
                    else:
                        future = pool.submit(work, index, image)
                    pending.append((index, image, future))
                if not pending:
                    return
                index, image, future = pending.popleft()
                try:
                    yield index, future.result()
                except UserError as e:
                    if on_skip is None:
                        raise
                    on_skip(_as_source(image) or f"image {index}", str(e))
                    yield index, _SKIPPED
        finally:
            for _, _, future in pending:
                future.cancel()

    def _stream_local(
        self, images: Iterable[Image], keep: bool, on_skip: Callable[[str, str], None] | None
    ) -> Iterator[Result]:
        ahead = max(2 * max(self.workers, 1), 2 * self.batch_size)  # images being read at once
        max_waiting = 4 * self.batch_size  # images waiting in shape buckets
        max_decoding = 2  # batches between the network and the caller
        buckets: dict[tuple[int, int], list[Prepared]] = {}
        decoding: deque[Future[list[tuple[int, Result]]]] = deque()
        finished: dict[int, Result | _Skipped] = {}
        next_out = 0
        t_start = time.perf_counter()
        readers = ThreadPoolExecutor(max(self.workers, 1), thread_name_prefix="detector-read")
        decoder = ThreadPoolExecutor(1, thread_name_prefix="detector-decode")

        def collect(future: Future[list[tuple[int, Result]]]) -> None:
            for key, result in future.result():
                finished[key] = result

        def dispatch(shape: tuple[int, int]) -> None:
            batch = buckets.pop(shape)
            outputs = self._infer(batch)  # on this thread: see the module docstring
            decoding.append(decoder.submit(self._decode, batch, outputs, keep))
            while len(decoding) > max_decoding:
                collect(decoding.popleft())

        def oldest_bucket() -> tuple[int, int]:
            return min(buckets, key=lambda s: buckets[s][0].key)

        def hand_out() -> Iterator[Result]:
            """What is complete, in input order."""
            nonlocal next_out
            while next_out in finished:
                result = finished.pop(next_out)
                next_out += 1
                if not isinstance(result, _Skipped):
                    self.times.images += 1
                    self.times.wall = time.perf_counter() - t_start
                    yield result

        try:
            pool = readers if self.workers > 0 else None  # workers=0: read on this thread
            for index, prepared in self._in_order(pool, self._prepare, images, ahead, on_skip):
                if isinstance(prepared, _Skipped):
                    finished[index] = prepared
                else:
                    bucket = buckets.setdefault(prepared.pad_shape, [])
                    bucket.append(prepared)
                    if len(bucket) == self.batch_size:
                        dispatch(prepared.pad_shape)
                    elif sum(len(b) for b in buckets.values()) > max_waiting:
                        dispatch(oldest_bucket())
                yield from hand_out()
            while buckets:  # the input is exhausted: partial batches, oldest first
                dispatch(oldest_bucket())
                yield from hand_out()
            while decoding:
                collect(decoding.popleft())
                yield from hand_out()
            if finished:
                raise RuntimeError(f"detector stream lost track of images {sorted(finished)[:5]}")
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            decoder.shutdown(wait=True, cancel_futures=True)

    def _stream_served(
        self, images: Iterable[Image], on_skip: Callable[[str, str], None] | None
    ) -> Iterator[Result]:
        """Served models: several requests in flight (so the server can batch), results in input order."""
        from runtime.image_io import encode_png, read_file_bytes

        in_flight = max(4, 2 * self.batch_size, self.workers)

        def request(index: int, image: Image) -> Result:
            t0 = time.perf_counter()
            where = _as_source(image) or f"image {index}"
            if isinstance(image, np.ndarray):
                data = encode_png(_check_array(image, where))
            else:
                data = read_file_bytes(image)
            d = self.client.detect(data)
            self.times.add("inference", time.perf_counter() - t0)
            return Result(d.boxes, d.scores, d.labels, self.meta.classes, _as_source(image))

        t_start = time.perf_counter()
        pool = ThreadPoolExecutor(in_flight, thread_name_prefix="detector-request")
        try:
            for _, result in self._in_order(pool, request, images, in_flight, on_skip):
                if not isinstance(result, _Skipped):
                    self.times.images += 1
                    self.times.wall = time.perf_counter() - t_start
                    yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the backend (device memory, sessions) or the client connection. Idempotent."""
        if self.backend is not None and self._owns_backend:
            self.backend.close()
        if self.client is not None:
            self.client.close()
        self.backend = self.backend if not self._owns_backend else None
        self.client = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
