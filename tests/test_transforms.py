"""Property tests of the CornerNet train transforms: annotations must follow the pixels.

A box of a unique colour is drawn into an image; after the transforms, the annotation box must be
where that colour now is (within the ~1-2 px a bilinear resize blurs an edge by).
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.meta import MMDET_MEAN_RGB, MMDET_STD_RGB
from trainer.data import transforms as T

# database=None: no .hypothesis/ folder in the repository; failures print their example instead.
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MEAN = np.array(MMDET_MEAN_RGB, np.float32)
STD = np.array(MMDET_STD_RGB, np.float32)


@st.composite
def image_with_box(draw: st.DrawFn, max_side: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """A black float32 image with one white filled box (at least 12 px a side); returns (image, box xyxy)."""
    h = draw(st.integers(48, max_side))
    w = draw(st.integers(48, max_side))
    bw = draw(st.integers(12, w))
    bh = draw(st.integers(12, h))
    x0 = draw(st.integers(0, w - bw))
    y0 = draw(st.integers(0, h - bh))
    image = np.zeros((h, w, 3), np.float32)
    image[y0 : y0 + bh, x0 : x0 + bw] = 255.0
    return image, np.array([[x0, y0, x0 + bw, y0 + bh]], np.float32)


def white_region_box(raw: np.ndarray) -> np.ndarray | None:
    """Tight xyxy box of the pixels that are grey and bright in an un-normalised image, or None.

    Photometric distortion maps grey g to a * (g + d) (hue, saturation and channel swap leave grey
    alone) with |d| <= 32 and a in [0.5, 1.5]: black lands at <= 48 and white at >= 111, so 80
    separates them. Padding (the RGB mean) is not grey, so it never counts.
    """
    grey = np.ptp(raw, axis=2) < 1.0
    bright = raw.mean(axis=2) > 80.0
    ys, xs = np.nonzero(grey & bright)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# --------------------------------------------------------------------------- full pipeline


@FAST
@given(sample=image_with_box(), seed=st.integers(0, 2**31 - 1), photometric=st.booleans())
def test_box_follows_pixels_through_pipeline(sample, seed, photometric):
    image, boxes = sample
    cfg = T.TrainTransformConfig(photometric=photometric)
    out, out_boxes, out_labels = T.train_transform(cfg)(
        image, boxes, np.array([2]), np.random.default_rng(seed)
    )

    assert out.shape == (511, 511, 3) and out.dtype == np.float32
    # One box: the crop is only accepted when its centre stays inside, so it always survives.
    assert out_boxes.shape == (1, 4) and out_labels.tolist() == [2]
    found = white_region_box(out * STD + MEAN)
    assert found is not None
    np.testing.assert_allclose(out_boxes[0], found, atol=2.0)


@FAST
@given(sample=image_with_box(), seed=st.integers(0, 2**31 - 1))
def test_crop_pad_box_matches_pixels_exactly(sample, seed):
    """Before the resize, the kept box is pixel-exact (up to mmdet's odd-size last padding column)."""
    image, boxes = sample
    canvas, out_boxes, _ = T.random_center_crop_pad(image, boxes, np.array([0]), np.random.default_rng(seed))
    found = white_region_box(canvas)
    assert found is not None and out_boxes.shape == (1, 4)
    expected = out_boxes[0].copy()
    th, tw = canvas.shape[:2]
    # mmdet clips boxes to the canvas [0, tw], but the window of an odd canvas covers only tw - 1 columns.
    expected[2] = min(expected[2], 2 * (tw // 2))
    expected[3] = min(expected[3], 2 * (th // 2))
    np.testing.assert_array_equal(found, expected)


# --------------------------------------------------------------------------- crop / pad


@FAST
@given(
    h=st.integers(32, 700),
    w=st.integers(32, 700),
    cy_frac=st.floats(0, 1),
    cx_frac=st.floats(0, 1),
    th=st.integers(100, 700),
    tw=st.integers(100, 700),
    near_edges=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3]),  # which patch edge the centre is near
            st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]),  # centre offset from that edge
            st.floats(0, 1),  # position along the edge
            st.one_of(st.just(0.0), st.floats(0.5, 80)),  # half width (0: degenerate box)
            st.one_of(st.just(0.0), st.floats(0.5, 80)),  # half height
        ),
        max_size=8,
    ),
)
def test_crop_boxes_drop_exactly_those_whose_centre_leaves(h, w, cy_frac, cx_frac, th, tw, near_edges):
    cy, cx = min(int(cy_frac * h), h - 1), min(int(cx_frac * w), w - 1)
    patch = T.crop_patch((cy, cx), (th, tw), h, w)
    x0, y0, x1, y1 = (float(v) for v in patch)
    # Box centres right at, just inside and just outside the patch edges: where an off-by-one shows.
    centres = []
    for edge, delta, along, _, _ in near_edges:
        if edge in (0, 2):
            centres.append(((x0, x1)[edge // 2] + delta, y0 + along * (y1 - y0)))
        else:
            centres.append((x0 + along * (x1 - x0), (y0, y1)[edge // 2] + delta))
    halves = np.array([[hw, hh] for *_, hw, hh in near_edges], np.float32).reshape(-1, 2)
    c = np.array(centres, np.float32).reshape(-1, 2)
    boxes = np.concatenate([c - halves, c + halves], axis=1)
    labels = np.arange(len(boxes), dtype=np.int64)
    out, kept = T.crop_boxes(boxes, labels, (cy, cx), (th, tw), patch)

    # The centre as float32 boxes give it (it can round away from c by an ulp).
    for i, (bx, by) in enumerate((boxes[:, :2] + boxes[:, 2:]) / 2):
        inside = x0 < bx < x1 and y0 < by < y1
        positive = halves[i, 0] > 0 and halves[i, 1] > 0
        assert (i in kept) == (inside and positive), (i, bx, by, patch)
    assert np.all(out[:, 2] > out[:, 0]) and np.all(out[:, 3] > out[:, 1])
    assert np.all(out >= 0) and np.all(out[:, 0::2] <= tw) and np.all(out[:, 1::2] <= th)
    # A kept box is the original shifted by (tw//2 - cx, th//2 - cy), then clipped to the canvas.
    shift = np.array([tw // 2 - cx, th // 2 - cy] * 2, np.float32)
    for j, i in enumerate(kept):
        expected = np.clip(boxes[i] + shift, 0, [tw, th, tw, th])
        np.testing.assert_allclose(out[j], expected, atol=1e-3)


@FAST
@given(
    h=st.integers(16, 900),
    w=st.integers(16, 900),
    n_boxes=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_sampled_crop_keeps_a_centre_and_respects_border(h, w, n_boxes, seed):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, w - 2, n_boxes)
    y0 = rng.uniform(0, h - 2, n_boxes)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, w - x0), y0 + rng.uniform(1, h - y0)], axis=1).astype(
        np.float32
    )
    (cy, cx), (th, tw) = T.sample_center_crop(rng, h, w, boxes)

    assert (th, tw) in {(int(511 * r), int(511 * r)) for r in T.CROP_RATIOS}
    hb, wb = T._get_border(128, h), T._get_border(128, w)
    assert hb <= cy < h - hb and wb <= cx < w - wb
    if n_boxes:
        assert T.centers_in_patch(boxes, T.crop_patch((cy, cx), (th, tw), h, w)).any()


def test_random_crop_pad_uses_the_sampled_window():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    image = np.random.default_rng(0).uniform(0, 255, (300, 420, 3)).astype(np.float32)
    boxes = np.array([[10, 20, 100, 90], [200, 150, 400, 290]], np.float32)
    labels = np.array([0, 1])
    canvas, out_boxes, out_labels = T.random_center_crop_pad(image, boxes, labels, rng_a)
    center, size = T.sample_center_crop(rng_b, 300, 420, boxes)
    expected, _, patch = T.crop_and_paste(image, center, size, MMDET_MEAN_RGB)
    np.testing.assert_array_equal(canvas, expected)
    exp_boxes, exp_labels = T.crop_boxes(boxes, labels, center, size, patch)
    np.testing.assert_array_equal(out_boxes, exp_boxes)
    np.testing.assert_array_equal(out_labels, exp_labels)


def _mmdet_get_border(border: int, size: int) -> float:
    """mmdet's expression, written out with numpy as it is there."""
    k = 2 * border / size
    i = pow(2, np.ceil(np.log2(np.ceil(k))) + (k == int(k)))
    return border // i


def test_get_border_matches_mmdet_formula():
    for size in range(1, 1500):
        ours = T._get_border(128, size)
        assert ours == _mmdet_get_border(128, size), size
        assert 2 * ours < size or ours == 0
    assert [T._get_border(128, s) for s in (512, 257, 256, 200, 128, 100)] == [128, 128, 64, 64, 32, 32]


def test_pad_is_zero_after_normalize():
    image = np.full((40, 50, 3), 200.0, np.float32)  # tiny image: most of the canvas is padding
    boxes = np.array([[5, 5, 30, 30]], np.float32)
    canvas, _, _ = T.random_center_crop_pad(image, boxes, np.array([0]), np.random.default_rng(3))
    normed, _, _ = T.normalize(canvas, boxes, np.array([0]))
    assert normed[0, 0].tolist() == [0.0, 0.0, 0.0] and normed[-1, -1].tolist() == [0.0, 0.0, 0.0]
    pad = np.all(canvas == MEAN, axis=2)
    assert pad.mean() > 0.9 and np.all(normed[pad] == 0.0)


def test_normalize_is_float32_mean_std():
    image = np.random.default_rng(1).uniform(0, 255, (8, 9, 3)).astype(np.float32)
    normed, _, _ = T.normalize(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert normed.dtype == np.float32
    np.testing.assert_array_equal(normed, (image - MEAN) / STD)


# --------------------------------------------------------------------------- resize / flip


@FAST
@given(sample=image_with_box(max_side=400), out_h=st.integers(64, 600), out_w=st.integers(64, 600))
def test_resize_moves_box_with_pixels(sample, out_h, out_w):
    image, boxes = sample
    h, w = image.shape[:2]
    out, out_boxes, _ = T.resize(image, boxes, np.array([0]), size=(out_h, out_w))
    assert out.shape == (out_h, out_w, 3)
    expected = boxes[0] * np.array([out_w / w, out_h / h] * 2, np.float32)
    np.testing.assert_allclose(out_boxes[0], expected, rtol=1e-6)
    # Bilinear blurs an edge over about one output pixel per input pixel of scale.
    tol = 1.0 + max(out_w / w, out_h / h)
    np.testing.assert_allclose(white_region_box(out), expected, atol=tol)


@FAST
@given(sample=image_with_box())
def test_flip_moves_box_with_pixels_and_twice_is_identity(sample):
    image, boxes = sample
    flipped, fboxes = T.flip_horizontal(image, boxes)
    np.testing.assert_array_equal(white_region_box(flipped), fboxes[0])
    w = image.shape[1]
    assert fboxes[0, 0] == w - boxes[0, 2] and fboxes[0, 2] == w - boxes[0, 0]  # w - x, no -1
    back, bboxes = T.flip_horizontal(flipped, fboxes)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(bboxes, boxes)


def test_random_flip_probability_extremes():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    boxes = np.array([[0, 0, 1, 2]], np.float32)
    rng = np.random.default_rng(0)
    same, same_boxes, _ = T.random_horizontal_flip(image, boxes, np.array([0]), rng, prob=0.0)
    np.testing.assert_array_equal(same, image)
    np.testing.assert_array_equal(same_boxes, boxes)
    flipped, b1, _ = T.random_horizontal_flip(image, boxes, np.array([0]), rng, prob=1.0)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    assert b1.tolist() == [[2, 0, 3, 2]]


# --------------------------------------------------------------------------- photometric


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_photometric_on_grey_is_affine_with_mmdet_ranges(seed):
    """On grey pixels every step but brightness and contrast is a no-op: out = a * (g + d)."""
    g = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.repeat(g[None, :, None], 3, axis=2)
    boxes, labels = np.array([[1, 2, 3, 4]], np.float32), np.array([1])
    out, out_boxes, out_labels = T.photometric_distortion(image, boxes, labels, np.random.default_rng(seed))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out_boxes is boxes and out_labels is labels
    np.testing.assert_allclose(np.ptp(out, axis=2), 0, atol=1e-3)
    slope, intercept = np.polyfit(g, out[0, :, 0], 1)
    np.testing.assert_allclose(out[0, :, 0], slope * g + intercept, atol=1e-2)
    assert 0.5 - 1e-4 <= slope <= 1.5 + 1e-4
    assert abs(intercept / slope) <= 32 + 1e-3


def test_photometric_is_pointwise_and_keeps_input():
    rng = np.random.default_rng(5)
    colours = rng.uniform(0, 255, (4, 3)).astype(np.float32)
    image = colours[rng.integers(0, 4, (20, 30))]
    before = image.copy()
    for seed in range(20):
        out, _, _ = T.photometric_distortion(
            image, np.zeros((0, 4), np.float32), np.zeros(0), np.random.default_rng(seed)
        )
        np.testing.assert_array_equal(image, before)
        # Same input colour -> same output colour, wherever it is.
        for c in colours:
            where = np.all(image == c, axis=2)
            assert np.ptp(out[where], axis=0).max() < 1e-3


def test_photometric_hue_only_rotates_hue():
    """With only hue (and the channel swap) possible: output = a channel permutation of the input with
    every pixel's hue turned by the same angle, at most 18 degrees."""
    image = np.array([[[200, 40, 40], [40, 180, 60], [30, 60, 220], [90, 200, 120]]], np.float32)
    hue_in = _hue(image)
    turned = 0
    for seed in range(40):
        out, _, _ = T.photometric_distortion(
            image,
            np.zeros((0, 4), np.float32),
            np.zeros(0),
            np.random.default_rng(seed),
            brightness_delta=0,
            contrast_range=(1, 1),
            saturation_range=(1, 1),
        )
        shifts = []
        for perm in itertools.permutations(range(3)):
            unswapped = np.empty_like(out)
            unswapped[..., list(perm)] = out  # undo out = x[..., perm]
            diff = (_hue(unswapped) - hue_in + 180) % 360 - 180
            if np.ptp(diff) < 0.05 and abs(diff.mean()) <= 18 + 0.05:
                shifts.append(diff.mean())
        assert shifts, f"seed {seed}: output is not a hue rotation of a channel permutation"
        turned += min(abs(v) for v in shifts) > 0.05
    assert turned > 0


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees as cv2 computes it for float images (the hue the transform rotates)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2HSV)[..., 0]


# --------------------------------------------------------------------------- composition


def test_train_transform_is_deterministic_for_a_generator_seed():
    image = np.random.default_rng(2).integers(0, 256, (230, 333, 3)).astype(np.uint8)
    boxes = np.array([[20, 30, 120, 150], [150, 40, 300, 200]], np.float32)
    labels = np.array([0, 2])
    tf = T.train_transform()
    a = tf(image, boxes, labels, np.random.default_rng(11))
    b = tf(image, boxes, labels, np.random.default_rng(11))
    c = tf(image, boxes, labels, np.random.default_rng(12))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (511, 511, 3) and a[1].dtype == np.float32 and a[2].dtype == np.int64


def test_config_defaults_are_mmdet_hg104():
    cfg = T.TrainTransformConfig()
    assert (cfg.brightness_delta, cfg.contrast_range, cfg.saturation_range, cfg.hue_delta) == (
        32,
        (0.5, 1.5),
        (0.5, 1.5),
        18,
    )
    assert cfg.crop_size == (511, 511) and cfg.border == 128 and cfg.input_size == (511, 511)
    assert cfg.crop_ratios == (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    assert cfg.flip_prob == 0.5 and cfg.mean == MMDET_MEAN_RGB and cfg.std == MMDET_STD_RGB


def test_sample_center_crop_rejects_zero_rounds():
    with pytest.raises(ValueError, match="max_rounds"):
        T.sample_center_crop(np.random.default_rng(0), 100, 100, np.zeros((0, 4)), max_rounds=0)
