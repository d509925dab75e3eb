"""Host post-processing per image on one core: the compiled path next to the numpy reference and mmdet.

Cases, each checked for identical results (fast vs reference, and vs mmdet where the golden data has it):

- ``decode_hg104`` (golden, 80 classes, 128x192 features, 511x767 input): corner proposals from the
  raw heads (sigmoid, local maximum, top-k; the ``--outputs heads`` path), then pairing + soft-NMS.
  mmdet 3.3.0 + mmcv took about 118 ms per image for the whole decode on a 2-core CPU.
- ``demo``: the trained golden model (3 classes, ``outputs.npz``, up to 1000 candidates per image):
  what the pipeline does per image after the network, ``outputs_to_proposals`` + ``postprocess``.
- ``worst``: synthetic candidate sets of 1000 boxes in 3 classes (clusters, and boxes that all overlap
  a little so that soft-NMS removes none), and 2000 (flip TTA's maximum): pairing-free soft-NMS.
- with ``--model``: any trained model (``.pth``, ``.onnx``, ``.plan``) run on ``--images``; the
  network runs once per image, untimed, and its post-processing is timed as in ``demo``.

The process is pinned to one CPU; the kernels compile (or load from numba's cache) at import, before
any timing. Medians of wall time, and of thread CPU time, which shared machines disturb less.

    python -m benchmarks.bench_decode [--runs 30] [--golden DIR] [--cpu N]
    python -m benchmarks.bench_decode --model runs/demo/tiny.onnx --images data/synthetic/val2017
    python -m benchmarks.bench_decode --check-exp    # the soft-NMS exp against numpy's, every float32 <= 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.cli import parser_from_doc, run_cli
from runtime.decode import (
    CornerProposals,
    Detections,
    _topk_dense,
    corner_proposals,
    pair_corners,
    pair_corners_reference,
)
from runtime.errors import UserError
from runtime.matching import match_detections
from runtime.meta import ModelMeta, TestConfig
from runtime.names import HEAD_OUTPUTS
from runtime.pipeline import outputs_to_proposals
from runtime.postprocess import postprocess
from runtime.preprocess import ImageMeta, feature_shape
from runtime.soft_nms import class_offset_boxes, soft_nms, soft_nms_reference
from runtime.soft_nms_fast import exp_float32

MMDET_MS = 118.0


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m benchmarks.bench_decode", __doc__)
    p.add_argument("--runs", type=int, default=30, help="timed runs per case (after 3 warm-up runs)")
    p.add_argument(
        "--golden", type=Path, default=None,
        help="the golden outputs folder (default: ../shared/golden, else the repository's tests/data/golden)",
    )  # fmt: skip
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--model", type=Path, help="also time a trained model's post-processing (.pth, .onnx, .plan)")
    p.add_argument("--images", type=Path, help="with --model: a folder of images (the first --limit)")
    p.add_argument("--limit", type=int, default=12, help="with --model: images to run (default 12)")
    p.add_argument("--check-exp", action="store_true", help="only the exhaustive exp check (a few minutes)")
    return p


# --- timing -------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and thread-CPU milliseconds of ``fn()`` over ``runs`` calls, after 3 warm-ups."""
    for _ in range(3):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def line(label: str, fast: tuple[float, float], ref: tuple[float, float] | None = None) -> str:
    text = f"  {label:<34} {fast[0]:8.3f} ms (cpu {fast[1]:7.3f})"
    if ref is not None:
        text += f"   reference {ref[0]:8.2f} ms   {ref[0] / fast[0]:6.1f}x"
    return text


# --- the reference path, composed from the numpy references --------------------------------------


def reference_nms_and_cap(dets: Detections, cfg: TestConfig) -> Detections:
    """``nms_and_cap`` with the numpy soft-NMS (fewer than mmcv's 10000 boxes: one soft-NMS)."""
    if len(dets) == 0:
        return dets
    keep, scores = soft_nms_reference(
        class_offset_boxes(dets.boxes, dets.labels), dets.scores, cfg.soft_nms_sigma, cfg.soft_nms_min_score
    )
    keep, scores = keep[: cfg.max_per_img], scores[: cfg.max_per_img]
    return Detections(dets.boxes[keep], scores, dets.labels[keep])


def reference_postprocess(props: CornerProposals, meta: ImageMeta, cfg: TestConfig) -> Detections:
    """Single-view ``postprocess`` on the numpy references."""
    dets = pair_corners_reference(props, meta, cfg.distance_threshold, cfg.num_dets)
    return reference_nms_and_cap(dets, cfg)


def same(a: Detections, b: Detections) -> bool:
    return (
        np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.scores, b.scores)
        and np.array_equal(a.labels, b.labels)
    )


# --- cases --------------------------------------------------------------------------------------


def bench_hg104(golden: Path, cfg: TestConfig, runs: int) -> tuple[bool, float]:
    record = json.loads((golden / "decode_hg104.json").read_text())
    with np.load(golden / "decode_hg104.npz") as z:
        heads = {name: z[name][0].astype(np.float32) for name in HEAD_OUTPUTS}  # stored as fp16
    m = record["meta"]
    meta = ImageMeta(tuple(m["ori_shape"][:2]), tuple(m["pad_shape"][:2]), tuple(m["border"]))
    mmdet = Detections(
        boxes=np.array([d["bbox"] for d in record["detections"]], np.float32).reshape(-1, 4),
        scores=np.array([d["score"] for d in record["detections"]], np.float32),
        labels=np.array([d["label"] for d in record["detections"]], np.int64),
    )

    def proposals() -> CornerProposals:
        return corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=cfg.corner_topk, kernel=cfg.local_maximum_kernel)

    def dense_topk() -> None:
        for name in ("tl_heat", "br_heat"):
            _topk_dense(heads[name], cfg.corner_topk, cfg.local_maximum_kernel)

    props = proposals()
    fast, ref = postprocess([props], [meta], cfg), reference_postprocess(props, meta, cfg)
    match = match_detections(mmdet, fast)
    t_props, t_dense = timed(proposals, runs), timed(dense_topk, max(3, runs // 5))
    t_post = timed(lambda: postprocess([props], [meta], cfg), runs)
    t_ref = timed(lambda: reference_postprocess(props, meta, cfg), runs)
    total = t_props[0] + t_post[0]
    print(f"decode_hg104 (80 classes, 128x192 features, {len(pair_corners(props, meta))} candidates):")
    print(line("proposals from heads", t_props, t_dense) + "  (reference: literal top-k only)")
    print(line("pairing + soft-NMS", t_post, t_ref))
    print(f"  whole decode {total:.2f} ms; mmdet 3.3.0 + mmcv {MMDET_MS:.0f} ms: {MMDET_MS / total:.0f}x faster")
    print(f"  fast == reference: {same(fast, ref)}; vs mmdet: {match}")
    return same(fast, ref) and match.ok, t_post[0]


def bench_demo(golden: Path, runs: int) -> tuple[bool, float]:
    records = json.loads((golden / "detections.json").read_text())
    info = json.loads((golden / "golden.json").read_text())
    model = ModelMeta(classes=tuple(info["classes"]))
    cfg = model.test_cfg
    ok = True
    per_image, per_image_ref = [], []
    with np.load(golden / "outputs.npz") as z:
        for r in records:
            outputs = {name: z[f"{r['file']}/{name}"] for name in HEAD_OUTPUTS}  # (1, C, H, W)
            meta = ImageMeta(tuple(r["ori_shape"]), tuple(r["pad_shape"]), tuple(r["border"]))
            feat = feature_shape(*meta.pad_shape)

            def pipeline(outputs=outputs, meta=meta, feat=feat) -> Detections:
                return postprocess(outputs_to_proposals(outputs, feat, model), [meta], cfg)

            props = outputs_to_proposals(outputs, feat, model)[0]
            n = len(pair_corners(props, meta, cfg.distance_threshold, cfg.num_dets))
            ok &= same(pipeline(), reference_postprocess(props, meta, cfg))
            t = timed(pipeline, runs)
            t_ref = timed(lambda props=props, meta=meta: reference_postprocess(props, meta, cfg), max(3, runs // 3))
            per_image.append(t)
            per_image_ref.append(t_ref)
            print(line(f"{r['file']} ({n} candidates)", t, t_ref))
    med = statistics.median(t[0] for t in per_image)
    med_ref = statistics.median(t[0] for t in per_image_ref)
    print(
        f"  per image, median over {len(records)} images: {med:.3f} ms "
        f"(cpu {statistics.median(t[1] for t in per_image):.3f}); reference pairing + soft-NMS {med_ref:.2f} ms; "
        f"mmdet {MMDET_MS:.0f} ms: {MMDET_MS / med:.0f}x faster"
    )
    print(f"  fast == reference on every image: {ok}")
    return ok, med


def bench_model(model: Path, images: Path, limit: int, runs: int) -> tuple[bool, float]:
    """Post-processing per image of ``model``'s own outputs on ``images`` (the network untimed)."""
    from runtime.backends import open_backend
    from runtime.detect import list_images
    from runtime.pipeline import prepare
    from runtime.preprocess import batch_inputs

    ok, per_image = True, []
    with open_backend(model) as backend:
        cfg = backend.meta.test_cfg
        for key, path in enumerate(list_images(images, limit)):
            prepared = prepare(key, path, backend.meta, flip=False)
            outputs = backend.infer(batch_inputs(prepared.inputs))
            feat = feature_shape(*prepared.pad_shape)
            [meta] = prepared.metas

            def pipeline(outputs=outputs, feat=feat, meta=meta) -> Detections:
                return postprocess(outputs_to_proposals(outputs, feat, backend.meta), [meta], cfg)

            props = outputs_to_proposals(outputs, feat, backend.meta)[0]
            n = len(pair_corners(props, meta, cfg.distance_threshold, cfg.num_dets))
            ok &= same(pipeline(), reference_postprocess(props, meta, cfg))
            per_image.append(timed(pipeline, runs))
            print(line(f"{path.name} ({n} candidates)", per_image[-1]))
    med = statistics.median(t[0] for t in per_image)
    print(
        f"  per image, median over {len(per_image)} images: {med:.3f} ms "
        f"(cpu {statistics.median(t[1] for t in per_image):.3f}); fast == reference on every image: {ok}"
    )
    return ok, med


def synthetic(n: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` candidates in 3 classes, as ``(boxes (n, 4) float32, scores (n,) float32, labels (n,))``.

    ``clusters``: jittered boxes around 40 objects, like a trained model's candidates.
    ``crossing``: soft-NMS's worst case: in each class, horizontal strips (one per row) cross vertical
    strips (one per column), so every box overlaps half the others a little and none is removed.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    if kind == "clusters":
        centers = rng.random((40, 2)) * [600, 400]
        sizes = rng.random((40, 2)) * 150 + 20
        obj = rng.integers(0, 40, n)
        c = centers[obj] + rng.normal(0, 8, (n, 2))
        wh = sizes[obj] * rng.uniform(0.8, 1.25, (n, 2))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).clip(0)
        scores = rng.uniform(0.001, 0.7, n) ** 2
    else:
        j = np.arange(n) // 2 * 4.0
        horizontal = np.arange(n) % 2 == 0
        span = 2.0 * n + 8
        boxes = np.where(
            horizontal[:, None],
            np.stack([np.zeros(n), j, np.full(n, span), j + 3], axis=1),
            np.stack([j, np.zeros(n), j + 3, np.full(n, span)], axis=1),
        )
        scores = rng.uniform(0.3, 0.9, n)
    return boxes.astype(np.float32), scores.astype(np.float32), labels


def bench_worst(cfg: TestConfig, runs: int) -> bool:
    ok = True
    sigma, min_score = cfg.soft_nms_sigma, cfg.soft_nms_min_score
    for n, kind in ((1000, "clusters"), (1000, "crossing"), (2000, "clusters")):
        boxes, scores, labels = synthetic(n, kind)
        shifted = class_offset_boxes(boxes, labels)
        keep, new = soft_nms(shifted, scores, sigma, min_score)
        keep_ref, new_ref = soft_nms_reference(shifted, scores, sigma, min_score)
        ok &= np.array_equal(keep, keep_ref) and np.array_equal(new, new_ref)
        t = timed(lambda b=shifted, s=scores: soft_nms(b, s, sigma, min_score), runs)
        t_ref = timed(lambda b=shifted, s=scores: soft_nms_reference(b, s, sigma, min_score), 3)
        print(line(f"{n} {kind} ({len(keep)} kept)", t, t_ref))
    print(f"  fast == reference: {ok}")
    return ok


def check_exp() -> int:
    """``exp_float32`` against ``float32(numpy.exp(float64(a)))`` for every float32 ``a <= 0`` (and -0, NaN)."""
    chunk = 1 << 24
    bad = 0
    t0 = time.perf_counter()
    for start in range(0x80000000, 0x100000000, chunk):
        args = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        with np.errstate(invalid="ignore"):
            want = np.exp(args.astype(np.float64)).astype(np.float32)
        got = np.empty_like(args)
        exp_float32(args, got)
        bad += int(np.count_nonzero(~((got == want) | (np.isnan(got) & np.isnan(want)))))
    print(f"exp: {bad} of 2^31 float32 arguments <= 0 differ from numpy ({time.perf_counter() - t0:.0f} s)")
    return 0 if bad == 0 else 1


def pin(cpu: int | None) -> str:
    """Pin this process to one CPU (``sched_setaffinity``) so every kernel and numpy call runs on it."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    if cpu not in allowed:
        raise UserError(f"--cpu {cpu}: this process may run on CPUs {allowed} only")
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} of {len(allowed)}"


def run(args: argparse.Namespace) -> int:
    if args.check_exp:
        return check_exp()
    if args.runs < 1:
        raise UserError(f"--runs must be at least 1, got {args.runs}")
    if args.golden is None:  # ../shared/golden, else the repository's trimmed copy (tests/data/golden)
        from tests.data.golden_codec import golden_folder

        args.golden = golden_folder()
    if args.model is not None and (args.images is None or not args.model.is_file()):
        raise UserError(f"--model {args.model}: needs an existing model file and --images DIR to run it on")
    if not (args.golden / "decode_hg104.npz").is_file() or not (args.golden / "outputs.npz").is_file():
        raise UserError(f"{args.golden}: no golden outputs there; pass --golden DIR (../shared/golden)")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        print(f"one core: {pin(args.cpu)}; load average {os.getloadavg()[0]:.1f} (others share this machine)")
        cfg = TestConfig()
        ok_hg, _ = bench_hg104(args.golden, cfg, args.runs)
        print("demo model (trained, 3 classes), per image, outputs_to_proposals + postprocess:")
        ok_demo, _ = bench_demo(args.golden, args.runs)
        print("synthetic candidate sets, class-aware soft-NMS only:")
        ok_worst = bench_worst(cfg, args.runs)
        ok_model = True
        if args.model is not None:
            print(f"{args.model}, per image, outputs_to_proposals + postprocess:")
            ok_model, _ = bench_model(args.model, args.images, args.limit, args.runs)
    finally:
        if allowed is not None:  # callers in-process (tests) get their CPUs back
            os.sched_setaffinity(0, allowed)
    return 0 if ok_hg and ok_demo and ok_worst and ok_model else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
