"""Image loading and test-time pre-processing against mmdet 3.3.0's golden network inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import UserError
from runtime.image_io import read_image
from runtime.meta import MMDET_MEAN_RGB, MMDET_STD_RGB
from runtime.preprocess import batch_inputs, feature_shape, pad_shape_for, preprocess
from tests.data.golden_codec import INPUT_SHA256, golden_images

GOLDEN_IMAGES = golden_images()


@pytest.fixture(scope="module")
def golden_outputs(golden_dir: Path) -> dict[str, np.ndarray]:
    """mmdet's network inputs kept as arrays (the others are kept as sha256 digests)."""
    with np.load(golden_dir / "outputs.npz") as z:
        return {name: z[f"{name}/input"] for name in GOLDEN_IMAGES if f"{name}/input" in z.files}


@pytest.fixture(scope="module")
def golden_dets(golden_dir: Path) -> dict[str, dict]:
    return {d["file"]: d for d in json.loads((golden_dir / "detections.json").read_text())}


# --- golden: bit-exact network inputs and geometry --------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_IMAGES)
def test_input_bit_exact_with_mmdet(name, golden_dir, golden_info, golden_outputs):
    image = read_image(golden_dir / "coco" / "images" / name)
    chw, _ = preprocess(image, golden_info["mean_rgb"], golden_info["std_rgb"])
    assert chw.dtype == np.float32
    if name in golden_outputs:  # mmdet's array, where kept: a failure shows where it differs
        ref = golden_outputs[name][0]  # [3, H, W]
        assert chw.shape == ref.shape
        # Compare the bits, so that -0.0 vs 0.0 or a 1-ulp difference would fail too.
        assert np.array_equal(chw.view(np.uint32), ref.view(np.uint32))
    # The sha256 of mmdet's array (kept for every image) covers its bits too.
    digest = json.loads((golden_dir / INPUT_SHA256).read_text())[name]
    assert [1, *chw.shape] == digest["shape"]
    assert hashlib.sha256(chw.tobytes()).hexdigest() == digest["sha256"]


def test_an_input_array_is_kept(golden_outputs) -> None:
    assert golden_outputs, "no network input array kept in tests/data/golden (make_golden_fixtures.KEEP_INPUTS)"


@pytest.mark.parametrize("name", GOLDEN_IMAGES)
def test_geometry_matches_mmdet_meta(name, golden_dir, golden_info, golden_dets):
    image = read_image(golden_dir / "coco" / "images" / name)
    _, meta = preprocess(image, golden_info["mean_rgb"], golden_info["std_rgb"])
    ref = golden_dets[name]
    assert meta.ori_shape == tuple(ref["ori_shape"])
    assert meta.pad_shape == tuple(ref["pad_shape"])
    assert meta.border == tuple(ref["border"])
    assert all(isinstance(v, float) for v in meta.border)
    assert meta.flip is False


# --- hand cases ---------------------------------------------------------------------------------


def _ramp(h: int, w: int) -> np.ndarray:
    """An RGB uint8 image whose pixels tell where they came from."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 251, x % 251, (y * 7 + x * 3) % 256], axis=2).astype(np.uint8)


def _unnormalise(chw: np.ndarray) -> np.ndarray:
    mean = np.array(MMDET_MEAN_RGB, np.float32)[:, None, None]
    std = np.array(MMDET_STD_RGB, np.float32)[:, None, None]
    return np.rint(chw * std + mean).transpose(1, 2, 0)


def test_pad_shape_for():
    assert pad_shape_for(300, 400) == (383, 511)
    assert pad_shape_for(480, 640) == (511, 767)
    assert pad_shape_for(255, 383) == (255, 383)  # already 128m-1: unchanged
    assert pad_shape_for(1, 128) == (127, 255)


def test_300x400_is_centred_in_383x511():
    image = _ramp(300, 400)
    chw, meta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    assert chw.shape == (3, 383, 511)
    assert meta.pad_shape == (383, 511)
    # centre 150 -> 191, 200 -> 255
    assert meta.border == (41.0, 341.0, 55.0, 455.0)
    top, bottom, left, right = (int(v) for v in meta.border)
    assert np.array_equal(_unnormalise(chw[:, top:bottom, left:right]), image)
    outside = np.ones(chw.shape[1:], bool)
    outside[top:bottom, left:right] = False
    assert np.all(chw[:, outside] == 0.0)


def test_side_already_127_mod_128_drops_last_row_and_column():
    # mmdet's quirk: with h = 255 the canvas is 255 too, y1 = 127 + 127 = 254, and row 254 is padding.
    image = _ramp(255, 383)
    image[-1, :, :] = 255
    image[:, -1, :] = 255
    chw, meta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    assert chw.shape == (3, 255, 383)
    assert meta.border == (0.0, 254.0, 0.0, 382.0)
    assert np.all(chw[:, 254, :] == 0.0) and np.all(chw[:, :, 382] == 0.0)
    assert np.array_equal(_unnormalise(chw[:, :254, :382]), image[:254, :382])


def test_only_one_side_127_mod_128():
    image = _ramp(127, 200)
    chw, meta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    assert meta.pad_shape == (127, 255)
    assert meta.border == (0.0, 126.0, 27.0, 227.0)
    assert np.array_equal(_unnormalise(chw[:, :126, 27:227]), image[:126])


def test_flip_flips_before_padding():
    image = _ramp(300, 400)
    plain, meta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    flipped, fmeta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB, flip=True)
    assert fmeta.flip is True
    assert fmeta.border == meta.border and fmeta.pad_shape == meta.pad_shape
    by_hand, _ = preprocess(np.ascontiguousarray(image[:, ::-1]), MMDET_MEAN_RGB, MMDET_STD_RGB)
    assert np.array_equal(flipped, by_hand)
    # 400 is even, so flipping the padded canvas instead would be off by one column; it is not that.
    assert not np.array_equal(flipped, plain[:, :, ::-1])


def test_normalisation_is_x_minus_mean_over_std_in_float32():
    image = np.full((4, 4, 3), (0, 128, 255), np.uint8)
    chw, meta = preprocess(image, MMDET_MEAN_RGB, MMDET_STD_RGB)
    top, left = int(meta.border[0]), int(meta.border[2])
    for c, v in enumerate((0, 128, 255)):
        want = (np.float32(v) - np.float32(MMDET_MEAN_RGB[c])) / np.float32(MMDET_STD_RGB[c])
        assert chw[c, top, left] == want


def test_feature_shape():
    assert feature_shape(511, 511) == (128, 128)
    assert feature_shape(383, 639) == (96, 160)
    assert feature_shape(511, 767) == (128, 192)
    assert feature_shape(255, 383) == (64, 96)
    # the general formula (two stride-2 stages), also for sizes that are not 128m-1
    assert feature_shape(512, 100) == (128, 25)
    assert feature_shape(1, 2) == (1, 1)


def test_batch_inputs():
    a = np.zeros((3, 127, 255), np.float32)
    b = np.ones((3, 127, 255), np.float32)
    batch = batch_inputs([a, b])
    assert batch.shape == (2, 3, 127, 255) and batch.dtype == np.float32
    assert np.array_equal(batch[1], b)
    with pytest.raises(ValueError, match="different shapes"):
        batch_inputs([a, np.zeros((3, 255, 255), np.float32)])
    with pytest.raises(ValueError):
        batch_inputs([])


# --- read_image ---------------------------------------------------------------------------------


def _jpeg_bytes() -> bytes:
    ok, buf = cv2.imencode(".jpg", _ramp(64, 80))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("truncated.jpg", _jpeg_bytes()[:300]),
        ("corrupt.jpg", _jpeg_bytes()[:4] + bytes(500)),
        ("notes.jpg", b"this is not an image\n"),
        ("empty.png", b""),
    ],
)
def test_read_image_bad_file_is_a_one_line_user_error(tmp_path, filename, content):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_read_image_missing_file_and_directory(tmp_path):
    for path in (tmp_path / "nope.jpg", tmp_path):
        with pytest.raises(UserError) as info:
            read_image(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_image_returns_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), bgr)
    rgb = read_image(path)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert np.all(rgb[..., 0] == 200) and np.all(rgb[..., 2] == 10)


def test_read_image_grayscale_rgba_and_16bit(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], gray) for c in range(3))

    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[..., 1] = 77
    bgra[..., 3] = 0  # fully transparent: the alpha is dropped, not applied
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.all(out[..., 1] == 77) and np.all(out[..., 0] == 0)

    deep = np.full((5, 7, 3), 0x8000, np.uint16)
    deep[..., 0] = 0xFFFF
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.all(out[..., 2] == 255) and np.all(out[..., 0] == 128)  # 16 -> 8 bit: the high byte


def test_read_image_non_ascii_path(tmp_path):
    folder = tmp_path / "bilder_ä_图像"
    folder.mkdir()
    path = folder / "café.png"
    cv2.imencode(".png", _ramp(6, 9))[1].tofile(str(path))
    assert read_image(path).shape == (6, 9, 3)
