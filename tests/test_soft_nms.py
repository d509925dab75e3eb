"""Gaussian soft-NMS: hand cases with known answers, and a literal re-statement of mmcv's loop that both
implementations (compiled ``soft_nms``, numpy ``soft_nms_reference``) must reproduce bit for bit.

mmcv itself is not installed here; the end-to-end check against mmcv's compiled op is
``tests/test_decode.py`` (the golden detections went through it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.soft_nms import batched_soft_nms, class_offset_boxes, soft_nms, soft_nms_reference

F = np.float32
W_IDENTICAL = F(math.exp(-1.0 / 0.5))  # weight for IoU 1 with sigma 0.5


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def scores(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_two_identical_boxes():
    keep, new = soft_nms(boxes((0, 0, 10, 10), (0, 0, 10, 10)), scores(0.9, 0.8))
    assert keep.tolist() == [0, 1]
    assert new.dtype == np.float32
    assert new[0] == F(0.9)
    assert new[1] == F(0.8) * W_IDENTICAL


def test_half_overlap_weight():
    # IoU = 50 / 150 = 1/3 -> weight exp(-(1/9) / 0.5)
    keep, new = soft_nms(boxes((0, 0, 10, 10), (5, 0, 15, 10)), scores(0.9, 0.8))
    assert keep.tolist() == [0, 1]
    assert new[1] == pytest.approx(0.8 * math.exp(-(1 / 9) / 0.5), rel=1e-6)


def test_disjoint_boxes_unchanged_in_score_order():
    b = boxes((0, 0, 1, 1), (10, 10, 11, 11), (20, 0, 30, 5))
    keep, new = soft_nms(b, scores(0.3, 0.9, 0.6))
    assert keep.tolist() == [1, 2, 0]
    assert new.tolist() == scores(0.9, 0.6, 0.3).tolist()


def test_touching_boxes_do_not_overlap():
    # offset 0: boxes sharing an edge have zero intersection
    keep, new = soft_nms(boxes((0, 0, 10, 10), (10, 0, 20, 10)), scores(0.9, 0.8))
    assert keep.tolist() == [0, 1]
    assert new.tolist() == scores(0.9, 0.8).tolist()


def test_output_is_selection_order_after_reweighting():
    # B overlaps A almost fully and drops below C, so the order is A, C, B.
    b = boxes((0, 0, 10, 10), (0, 0, 10, 9), (50, 50, 60, 60))
    keep, new = soft_nms(b, scores(0.9, 0.85, 0.5))
    assert keep.tolist() == [0, 2, 1]
    assert new[1] == F(0.5)
    assert new[2] < F(0.5)
    assert np.all(np.diff(new) <= 0)


def test_equal_scores_lowest_index_first():
    b = boxes((0, 0, 1, 1), (10, 10, 11, 11), (20, 20, 21, 21))
    keep, _ = soft_nms(b, scores(0.5, 0.7, 0.7))
    assert keep.tolist() == [1, 2, 0]


def test_min_score_discards():
    # 0.005 * exp(-2) = 0.00068 < 1e-3: discarded after the weighting.
    keep, _ = soft_nms(boxes((0, 0, 10, 10), (0, 0, 10, 10)), scores(0.9, 0.005))
    assert keep.tolist() == [0]
    # mmcv discards every box below min_score, overlapping or not ...
    keep, _ = soft_nms(boxes((0, 0, 1, 1), (5, 5, 6, 6)), scores(0.5, 0.0005))
    assert keep.tolist() == [0]
    # ... but only after the first selection: the best box is always returned.
    keep, new = soft_nms(boxes((0, 0, 1, 1)), scores(0.0005))
    assert keep.tolist() == [0] and new[0] == F(0.0005)
    keep, _ = soft_nms(boxes((0, 0, 10, 10), (0, 0, 10, 10)), scores(0.9, 0.005), min_score=1e-4)
    assert keep.tolist() == [0, 1]


def test_sigma():
    _, new = soft_nms(boxes((0, 0, 10, 10), (0, 0, 10, 10)), scores(0.9, 0.8), sigma=2.0)
    assert new[1] == F(0.8) * F(math.exp(-1.0 / 2.0))


def test_empty():
    keep, new = soft_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert keep.shape == (0,) and new.shape == (0,)
    keep, new = batched_soft_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert keep.shape == (0,) and new.shape == (0,)


def test_class_aware():
    b = boxes((0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10))
    keep, new = batched_soft_nms(b, scores(0.9, 0.8, 0.7), np.array([0, 1, 0]))
    # different classes never suppress each other; the same class does
    assert keep.tolist() == [0, 1, 2]
    assert new[1] == F(0.8)
    assert new[2] == F(0.7) * W_IDENTICAL


def test_class_offsets_in_float32():
    b = boxes((0.5, 1.0, 10.25, 20.0), (3.0, 4.0, 100.0, 7.0))
    shifted = class_offset_boxes(b, np.array([0, 3]))
    assert shifted.dtype == np.float32
    step = F(100.0) + F(1.0)
    assert np.array_equal(shifted[0], b[0])
    assert np.array_equal(shifted[1], b[1] + F(3) * step)


def test_class_offset_rounding_reaches_the_iou():
    # A thin box shifted far enough loses its width in float32; mmcv's IoU sees the shifted box.
    # Two thin boxes 0.001 apart: unshifted IoU 0 (disjoint), shifted both collapse to width 0 and
    # become identical zero-area boxes whose IoU is 0/0.
    b = boxes((0.0, 0.0, 0.001, 10.0), (0.002, 0.0, 0.003, 10.0), (1000.0, 0.0, 1001.0, 1.0))
    labels = np.array([200, 200, 0])
    shifted = class_offset_boxes(b, labels)
    assert shifted[0, 2] - shifted[0, 0] == 0.0
    keep, new = batched_soft_nms(b, scores(0.9, 0.8, 0.7), labels)
    ref_keep, ref_new = literal_soft_nms(shifted, scores(0.9, 0.8, 0.7))
    assert keep.tolist() == ref_keep.tolist()
    assert np.array_equal(new, ref_new, equal_nan=True)


# --- a literal, slow re-statement of mmcv's CPU loop, for random cases --------------------------


def literal_soft_nms(b: np.ndarray, s: np.ndarray, sigma: float = 0.5, min_score: float = 1e-3):
    """mmcv's ``softnms_cpu`` step by step in Python scalars (gaussian, offset 0)."""
    x1, y1, x2, y2 = (b[:, j].astype(F).copy() for j in range(4))
    sc = s.astype(F).copy()
    areas = (x2 - x1) * (y2 - y1)
    inds = np.arange(len(sc))
    out = np.zeros(len(sc), F)
    n = len(sc)
    cols = (x1, y1, x2, y2, sc, areas, inds)
    i = 0
    while i < n:
        best = i
        for p in range(i + 1, n):
            if sc[best] < sc[p]:
                best = p
        for a in cols:
            a[i], a[best] = a[best], a[i]
        out[i] = sc[i]
        p = i + 1
        while p < n:
            w = max(F(0), min(x2[i], x2[p]) - max(x1[i], x1[p]))
            h = max(F(0), min(y2[i], y2[p]) - max(y1[i], y1[p]))
            inter = F(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = F(inter / F(F(areas[i] + areas[p]) - inter))
            weight = F(math.exp(float(F(-F(ovr * ovr)) / F(sigma)))) if ovr == ovr else F("nan")
            sc[p] = F(sc[p] * weight)
            if sc[p] < F(min_score):
                for a in cols:
                    a[p] = a[n - 1]
                n -= 1
                p -= 1
            p += 1
        i += 1
    return inds[:n], out[:n]


@pytest.mark.parametrize("impl", [soft_nms, soft_nms_reference], ids=["compiled", "numpy"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_mmcv_loop(seed, impl):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 50))
        if seed % 2:  # integer grid: many identical boxes and exact ties
            xy = rng.integers(0, 20, (n, 2)).astype(F)
            wh = rng.integers(0, 10, (n, 2)).astype(F)  # includes zero-area boxes
            s = rng.choice(scores(0.9, 0.5, 0.5, 0.3, 0.01, 0.002, 0.0005), n)
        else:
            xy = (rng.random((n, 2)) * 40).astype(F)
            wh = (rng.random((n, 2)) * 20).astype(F)
            s = rng.random(n).astype(F)
        b = np.concatenate([xy, xy + wh], axis=1)
        keep, new = impl(b, s)
        ref_keep, ref_new = literal_soft_nms(b, s)
        assert keep.tolist() == ref_keep.tolist()
        assert np.array_equal(new, ref_new, equal_nan=True)


@pytest.mark.parametrize("impl", [soft_nms, soft_nms_reference], ids=["compiled", "numpy"])
def test_300_clustered_boxes_match_literal_mmcv_loop(impl):
    # A trained model's candidates: clusters of overlapping boxes, removals at most steps.
    rng = np.random.default_rng(11)
    centers = rng.random((6, 2)) * 200
    c = centers[rng.integers(0, 6, 300)] + rng.normal(0, 5, (300, 2))
    wh = rng.uniform(10, 60, (300, 2))
    b = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(F)
    s = (rng.random(300) ** 2).astype(F)
    keep, new = impl(b, s)
    ref_keep, ref_new = literal_soft_nms(b, s)
    assert keep.tolist() == ref_keep.tolist() and np.array_equal(new, ref_new)
    assert 10 < len(keep) < 300


def test_2000_boxes_in_80_classes():
    # Flip TTA's largest input; the speed is measured by benchmarks/bench_decode.py, not here.
    rng = np.random.default_rng(0)
    xy = (rng.random((2000, 2)) * 600).astype(F)
    b = np.concatenate([xy, xy + (rng.random((2000, 2)) * 100 + 5).astype(F)], axis=1)
    s = rng.random(2000).astype(F)
    labels = rng.integers(0, 80, 2000)
    keep, new = batched_soft_nms(b, s, labels)
    assert len(keep) > 0 and np.all(np.diff(new) <= 0)
    ref_keep, ref_new = soft_nms_reference(class_offset_boxes(b, labels), s)
    assert keep.tolist() == ref_keep.tolist() and np.array_equal(new, ref_new)
