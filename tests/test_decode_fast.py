"""The compiled post-processing (``runtime/*_fast.py``) against the numpy references, bit for bit.

Fuzzed inputs aim at what decides exact output: equal scores, identical and zero-area boxes, scores
at and below ``min_score``, 0, 1 and 1000 candidates, several classes, ``sigma`` values whose
weights leave the fast exponential's range (the C library's ``exp`` then decides). ``tests/test_soft_nms.py`` holds both soft-NMS
implementations to a literal re-statement of mmcv's loop; ``tests/test_decode.py`` holds the
decode to mmdet's golden detections.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numba
import numpy as np
import pytest

from benchmarks import bench_decode
from runtime.decode import (
    CornerProposals,
    Detections,
    _topk_dense,
    pair_corners,
    pair_corners_reference,
    topk_corners,
)
from runtime.decode_fast import cells_above, kth_peak, pair_top
from runtime.jit import kernel
from runtime.meta import ModelMeta, TestConfig
from runtime.names import HEAD_OUTPUTS, PROPOSAL_OUTPUTS
from runtime.pipeline import outputs_to_proposals
from runtime.postprocess import postprocess
from runtime.preprocess import ImageMeta, feature_shape
from runtime.soft_nms import batched_soft_nms, class_offset_boxes, soft_nms, soft_nms_reference
from runtime.soft_nms_fast import exp_float32, soft_nms_kernel

F = np.float32
CFG = TestConfig()


def assert_same_nms(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    assert got[0].dtype == np.int64 and got[1].dtype == np.float32
    assert got[0].tolist() == want[0].tolist()
    assert np.array_equal(got[1], want[1], equal_nan=True)  # zero-area pairs give NaN, as in mmcv


def random_boxes(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (n, 4), scores (n,))`` of one of several kinds that stress ties and removals."""
    if kind == "grid":  # integer grid: identical boxes, zero widths/heights, exact score ties
        xy = rng.integers(0, 20, (n, 2)).astype(F)
        wh = rng.integers(0, 10, (n, 2)).astype(F)
        s = rng.choice(np.array([0.9, 0.5, 0.5, 0.3, 0.01, 0.002, 0.001, 0.0005], F), n)
    elif kind == "clusters":  # trained-model-like: many overlapping boxes per object
        centers = rng.random((8, 2)) * 300
        c = centers[rng.integers(0, 8, n)] + rng.normal(0, 4, (n, 2))
        wh = rng.uniform(10, 80, (n, 2))
        xy = c - wh / 2
        s = rng.random(n) ** 3
    else:  # uniform
        xy = rng.random((n, 2)) * 200
        wh = rng.random((n, 2)) * 60
        s = rng.random(n)
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(F)
    return boxes, s.astype(F)


# --- soft-NMS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, kind", enumerate(["grid", "clusters", "uniform"]))
def test_soft_nms_fast_equals_reference(seed, kind):
    rng = np.random.default_rng(seed)
    for n in [0, 1, 2, 3, 17, 64, 200]:
        # sigma 0.005 and -1 put weights' arguments outside the fast exp's range [-80, 0]
        for sigma, min_score in [(0.5, 1e-3), (2.0, 1e-3), (0.005, 1e-3), (-1.0, 1e-3), (0.5, 0.0), (0.5, 0.4)]:
            b, s = random_boxes(rng, n, kind)
            assert_same_nms(soft_nms(b, s, sigma, min_score), soft_nms_reference(b, s, sigma, min_score))


def test_soft_nms_fast_equals_reference_1000_candidates_several_classes():
    rng = np.random.default_rng(3)
    for kind in ["clusters", "uniform", "grid"]:
        b, s = random_boxes(rng, 1000, kind)
        labels = rng.integers(0, 3, 1000)
        shifted = class_offset_boxes(b, labels)
        want = soft_nms_reference(shifted, s)
        assert_same_nms(batched_soft_nms(b, s, labels), want)
        assert len(want[0]) > 1


def test_soft_nms_all_equal_scores_and_boxes():
    # Every selection is a tie: mmcv's order follows the positions its removals permute.
    b = np.tile(np.array([[0, 0, 10, 10]], F), (50, 1))
    b[::3] += F(1)
    for s in [np.full(50, 0.5, F), np.full(50, 0.001, F), np.full(50, 0.002, F)]:
        assert_same_nms(soft_nms(b, s), soft_nms_reference(b, s))


def test_soft_nms_rejects_mismatched_inputs():
    for impl in (soft_nms, soft_nms_reference):
        with pytest.raises(ValueError, match="disagree"):
            impl(np.zeros((3, 4), F), np.zeros(2, F))


def test_exp_float32_matches_numpy():
    # The weights' exponential: a polynomial where its rounding is certain, the C library elsewhere.
    # Every float32 <= 0 is checked by `python -m benchmarks.bench_decode --check-exp`; here a sample
    # over all exponents, the fast range's ends and the special values.
    rng = np.random.default_rng(0)
    bits = rng.integers(0x80000000, 0x100000000, 1_000_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, -10.0, np.nextafter(F(-10), F(-11)), -1e-45, -2.0, -87.5, -104.0,
                        -np.inf, np.nan, 1.0, 88.0, np.inf], F)  # fmt: skip
    dense = -rng.random(1_000_000).astype(F) * F(12)
    # Arguments whose exp lies nearest a float32 rounding boundary (found by the exhaustive check):
    # the polynomial defers them to the C library.
    near_ties = np.array([-2.9802317e-08, -8.940697e-08, -2.2351767e-06, -0.00020628315, -0.0017157304,
                          -0.027355066, -0.21816440, -0.96480668, -1.4971098, -3.8762939], F)  # fmt: skip
    args = np.concatenate([bits.view(F), special, dense, near_ties])
    got = np.empty_like(args)
    exp_float32(args, got)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.exp(args.astype(np.float64)).astype(F)
    assert np.array_equal(got, want, equal_nan=True)


# --- pairing ------------------------------------------------------------------------------------


def random_proposals(rng: np.random.Generator, kt: int, kb: int, classes: int = 3) -> CornerProposals:
    """Proposals on a 16x24 feature map with ties in scores and embeddings (no ordering promised)."""
    h, w = 16, 24
    levels = np.array([0.9, 0.7, 0.7, 0.5, 0.3, 0.3, 0.1, 0.01], F)

    def side(k: int) -> tuple[np.ndarray, ...]:
        scores = np.sort(rng.choice(levels, k))[::-1].copy()
        inds = rng.integers(0, classes * h * w, k).astype(np.int64)
        embs = rng.choice(np.array([0.0, 0.25, 0.5, 1.0, 2.0], F), k)
        offs = rng.choice(np.array([0.0, 0.5, 0.99], F), (k, 2))
        return scores, inds, embs, offs

    return CornerProposals((h, w), *side(kt), *side(kb))


META = ImageMeta(ori_shape=(50, 90), pad_shape=(64, 96), border=(7.0, 57.0, 3.0, 93.0))


@pytest.mark.parametrize("seed", range(4))
def test_pair_corners_fast_equals_reference(seed):
    rng = np.random.default_rng(seed)
    for kt, kb in [(0, 0), (0, 5), (1, 1), (3, 7), (40, 40), (100, 100)]:
        props = random_proposals(rng, kt, kb)
        for thr, num_dets in [(0.5, 1000), (0.3, 7), (10.0, 1), (0.0, 1000)]:
            got = pair_corners(props, META, thr, num_dets)
            want = pair_corners_reference(props, META, thr, num_dets)
            assert np.array_equal(got.boxes, want.boxes) and got.boxes.dtype == np.float32
            assert np.array_equal(got.scores, want.scores) and got.scores.dtype == np.float32
            assert np.array_equal(got.labels, want.labels) and got.labels.dtype == np.int64


def test_pair_corners_rejects_no_detections():
    props = random_proposals(np.random.default_rng(0), 4, 4)
    with pytest.raises(ValueError, match="num_dets"):
        pair_corners(props, META, num_dets=0)


# --- corner peaks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_topk_corners_equals_literal_for_every_kernel(kernel):
    rng = np.random.default_rng(kernel)
    maps = [
        rng.normal(-4, 2, (3, 17, 23)).astype(F),
        rng.integers(-6, 3, (2, 9, 31)).astype(F),  # plateaus: tied peaks
        np.full((1, 4, 4), -3.0, F),  # one value everywhere: every cell a peak
        rng.normal(0, 1, (2, 1, 40)).astype(F),  # a single row
        rng.normal(0, 1, (2, 40, 1)).astype(F),  # a single column
    ]
    for logits in maps:
        for k in sorted({1, 7, min(100, logits.size), logits.size}):
            got, want = topk_corners(logits, k, kernel), _topk_dense(logits, k, kernel)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (logits.shape, k)


def test_topk_corners_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        topk_corners(np.zeros((4, 4), F), 1)
    with pytest.raises(ValueError, match="odd"):
        topk_corners(np.zeros((1, 4, 4), F), 1, kernel=4)
    with pytest.raises(ValueError, match="top-k"):
        topk_corners(np.zeros((1, 2, 2), F), 0)


# --- the pipeline's post-processing on the trained golden model ---------------------------------


def reference_postprocess(props: CornerProposals, meta: ImageMeta, cfg: TestConfig) -> Detections:
    dets = pair_corners_reference(props, meta, cfg.distance_threshold, cfg.num_dets)
    keep, scores = soft_nms_reference(
        class_offset_boxes(dets.boxes, dets.labels), dets.scores, cfg.soft_nms_sigma, cfg.soft_nms_min_score
    )
    keep, scores = keep[: cfg.max_per_img], scores[: cfg.max_per_img]
    return Detections(dets.boxes[keep], scores, dets.labels[keep])


def test_pipeline_postprocess_equals_reference_on_golden(golden_dir: Path):
    records = json.loads((golden_dir / "detections.json").read_text())
    model = ModelMeta(classes=("a", "b", "c"))
    with np.load(golden_dir / "outputs.npz") as z:
        for r in records:
            outputs = {name: z[f"{r['file']}/{name}"] for name in HEAD_OUTPUTS}
            meta = ImageMeta(tuple(r["ori_shape"]), tuple(r["pad_shape"]), tuple(r["border"]))
            [props] = outputs_to_proposals(outputs, feature_shape(*meta.pad_shape), model)
            got = postprocess([props], [meta], model.test_cfg)
            want = reference_postprocess(props, meta, model.test_cfg)
            assert len(got) > 0
            assert np.array_equal(got.boxes, want.boxes), r["file"]
            assert np.array_equal(got.scores, want.scores), r["file"]
            assert np.array_equal(got.labels, want.labels), r["file"]


# --- compilation --------------------------------------------------------------------------------


def test_calls_never_compile_again():
    # Each kernel has one signature, compiled at import; the wrappers convert whatever they are given
    # (float64 boxes, int32 indices as TensorRT returns them) instead of triggering a new compile.
    kernels = [soft_nms_kernel, pair_top, kth_peak, cells_above, exp_float32]
    rng = np.random.default_rng(0)
    b, s = random_boxes(rng, 50, "clusters")
    soft_nms(b.astype(np.float64), s.astype(np.float64))
    batched_soft_nms(b.tolist(), s.tolist(), [0, 1] * 25)
    props = random_proposals(rng, 10, 10)
    narrow = {n: getattr(props, n) for n in PROPOSAL_OUTPUTS}
    narrow["tl_inds"] = narrow["tl_inds"].astype(np.int32)
    narrow["br_scores"] = narrow["br_scores"].astype(np.float64)
    pair_corners(CornerProposals(props.feat_shape, **narrow), META)
    topk_corners(rng.normal(0, 1, (2, 8, 8)), 5)  # float64 logits
    topk_corners(np.asfortranarray(rng.normal(0, 1, (2, 8, 8)).astype(F)), 5)
    for k in kernels:
        assert len(k.signatures) == 1, k


def test_kernels_compile_where_no_cache_location_is_writable(monkeypatch):
    # numba refuses cache=True when no cache folder is usable; the kernels then compile in memory.
    import numba.core.caching as caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit("int64(int64)", cache=True)(lambda x: x + 1)

    @kernel("int64(int64)")
    def plus_one(x):
        return x + 1

    assert plus_one(2) == 3


# --- the benchmark ------------------------------------------------------------------------------


def test_bench_decode_runs_and_rejects_bad_input(golden_dir: Path, tmp_path: Path, capsys):
    # Speed is the benchmark's to report; here only that it runs, checks its results and refuses bad input.
    before = os.sched_getaffinity(0)
    assert bench_decode.main(["--runs", "1", "--golden", str(golden_dir)]) == 0
    out = capsys.readouterr().out
    assert "fast == reference: True" in out and "fast == reference on every image: True" in out
    assert "matched 100/100" in out
    assert os.sched_getaffinity(0) == before  # pinned for the run only
    assert bench_decode.main(["--golden", str(tmp_path)]) == 2
    assert "no golden outputs" in capsys.readouterr().err
    assert bench_decode.main(["--model", str(tmp_path / "missing.onnx")]) == 2
    assert "--images" in capsys.readouterr().err
