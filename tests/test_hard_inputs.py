"""Hard inputs through the real command lines (``runtime.detect``, ``runtime.eval``): what works, what
exits 2 with one line naming the file, what a folder run skips and counts.

Also the pictures themselves: ``runtime.detect`` output and ``runtime.eval --verify --pictures`` are
read back with cv2 and checked for size and drawn boxes.

A full disk while writing a checkpoint is covered in ``tests/test_checkpoint.py``
(``test_full_disk_keeps_previous_checkpoint``: the previous file survives, no temp file is left,
one-line ``UserError``); a full disk while writing a picture is covered here.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime import detect, detector, image_io
from runtime import eval as eval_cli
from runtime.backends.base import Backend
from runtime.decode import Detections
from runtime.draw import class_color, draw_detections, side_by_side
from runtime.image_io import read_image
from runtime.meta import ModelMeta
from runtime.names import HEAD_OUTPUTS
from runtime.preprocess import feature_shape
from runtime.verify_pictures import rank_differences
from trainer.data.coco import CocoDetection
from trainer.data.transforms import TrainTransformConfig, train_transform

SMALL = "synthetic_1_255x383.png"  # the golden image with the smallest canvas (255x383): fastest to run


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(golden_dir: Path) -> str:
    return str(golden_dir / "mmdet_checkpoint.pth")


@pytest.fixture(scope="module")
def small_rgb(golden_dir: Path) -> np.ndarray:
    return read_image(golden_dir / "coco" / "images" / SMALL)


def _run(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _detect(
    ckpt: str, source: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    return _run(
        detect.main, [ckpt, str(source), "--out-dir", str(out_dir), "--device", "cpu", *extra], capsys
    )


def _eval_args(model: str, ann: Path, images: Path, *extra: str) -> list[str]:
    return [model, "--ann", str(ann), "--images", str(images), "--device", "cpu", "--no-progress", *extra]


def _assert_one_line(err: str, name: str | Path, *phrases: str) -> None:
    """stderr is exactly one ``error: ...`` line that names ``name`` (and says each of ``phrases``)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("error: ") and str(name) in lines[0], lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _write(path: Path, image: np.ndarray) -> Path:
    """Write with cv2 as is (BGR/BGRA/gray order does not matter for these tests)."""
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _boxes_drawn(picture: np.ndarray, original: np.ndarray) -> int:
    """Pixels that changed between the input and the picture (both RGB, same size)."""
    assert picture.shape == original.shape
    return int(np.any(picture != original, axis=2).sum())


def _golden_ann(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "coco" / "annotations.json").read_text())


# --- images that must work ----------------------------------------------------------------------


def _variants(rgb: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    alpha = np.full(gray.shape, 128, np.uint8)
    return {
        "gray_png": (".png", gray),
        "gray_jpg": (".jpg", gray),
        "rgba_png": (".png", np.dstack([bgr, alpha])),
        "rgb16_png": (".png", bgr.astype(np.uint16) * 257),
        "gray16_png": (".png", gray.astype(np.uint16) * 257),
        "tiny_1x1_png": (".png", np.full((1, 1, 3), 200, np.uint8)),
    }


@pytest.mark.parametrize("kind", list(_variants(np.zeros((2, 2, 3), np.uint8))))
def test_unusual_images_work(
    kind: str, ckpt: str, small_rgb: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gray, RGBA, 16-bit and 1x1 images are detected on (read as mmdet reads them: 3 channels, 8 bit)."""
    suffix, pixels = _variants(small_rgb)[kind]
    src = _write(tmp_path / f"{kind}{suffix}", pixels)
    rc, out, err = _detect(ckpt, src, tmp_path / "out", capsys, "--score-thr", "0")
    assert rc == 0, err
    assert f"{src}: 100 detections >= 0" in out and err == ""
    picture = cv2.imread(str(tmp_path / "out" / src.name), cv2.IMREAD_UNCHANGED)
    assert picture.dtype == np.uint8 and picture.shape == (*pixels.shape[:2], 3)
    assert _boxes_drawn(picture[:, :, ::-1], read_image(src)) > 0


def test_huge_image_with_a_stub_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4000x4000 image goes through reading, the 4095x4095 canvas, decoding, drawing and writing.

    The network is replaced by fixed heads with one strong corner pair: the golden model needs
    ~100 s and 4.3 GB on the 2-core CPU for this size (measured), too slow for the suite. The real
    model runs on a 2000x3000 image in the ``slow`` test below.
    """
    meta = ModelMeta(classes=("shape0", "shape1", "shape2"))

    class OnePair(Backend):
        name, output_names, info = "stub", HEAD_OUTPUTS, {}

        def __init__(self) -> None:
            self.meta = meta

        def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
            n, _, h, w = images.shape
            fh, fw = feature_shape(h, w)
            heads = {
                "tl_heat": np.full((n, 3, fh, fw), -20, np.float32),
                "br_heat": np.full((n, 3, fh, fw), -20, np.float32),
                "tl_emb": np.zeros((n, 1, fh, fw), np.float32),
                "br_emb": np.zeros((n, 1, fh, fw), np.float32),
                "tl_off": np.zeros((n, 2, fh, fw), np.float32),
                "br_off": np.zeros((n, 2, fh, fw), np.float32),
            }
            heads["tl_heat"][:, 1, fh // 4, fw // 4] = 5.0
            heads["br_heat"][:, 1, 3 * fh // 4, 3 * fw // 4] = 5.0
            return heads

    monkeypatch.setattr(detector, "open_backend", lambda path, device=None, **_: OnePair())
    yy, xx = np.mgrid[0:4000, 0:4000]
    image = np.dstack([(xx // 16) % 256, (yy // 16) % 256, np.full_like(xx, 60)]).astype(np.uint8)
    src = _write(tmp_path / "huge.jpg", image)
    rc, out, err = _detect("stub.pth", src, tmp_path / "out", capsys)
    assert rc == 0, err
    assert "1 detection >= 0.3 (1 shape1)" in out
    picture = cv2.imread(str(tmp_path / "out" / "huge.jpg"))[:, :, ::-1]
    assert picture.shape == (4000, 4000, 3)
    # the box spans the middle half of the canvas: its left edge crosses the image centre row
    row = picture[2000, 900:1100].astype(int)
    assert (np.abs(row - np.array(class_color(1))).sum(axis=1) < 60).any()


@pytest.mark.slow
def test_large_image_real_model(ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2000x3000 with the real golden model (~30 s on 2 CPU cores; 4000x4000 takes ~100 s and 4.3 GB)."""
    rng = np.random.default_rng(0)
    image = np.full((2000, 3000, 3), 120, np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, 2700)), int(rng.integers(0, 1700))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + 250, y + 250), color, -1)
    src = _write(tmp_path / "large.png", image)
    rc, out, err = _detect(ckpt, src, tmp_path / "out", capsys, "--score-thr", "0")
    assert rc == 0, err
    assert "100 detections >= 0" in out
    picture = cv2.imread(str(tmp_path / "out" / "large.png"))
    assert picture.shape == image.shape and _boxes_drawn(picture, image) > 0


# --- images that must not work, alone (exit 2) and in a folder (skipped and counted) -----------


def _bad_files(golden_dir: Path) -> dict[str, bytes]:
    jpeg = (golden_dir / "coco" / "images" / "synthetic_2_420x300.jpg").read_bytes()
    corrupt = bytearray(jpeg)
    corrupt[2:400] = b"\x13" * 398  # the header segments destroyed
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.jpg": bytes(corrupt),
        "notes.jpg": b"this is a text file with an image suffix\n",
        "notes.txt": b"plain text\n",
        "empty.png": b"",
    }


@pytest.mark.parametrize("name", ["truncated.jpg", "corrupt.jpg", "notes.jpg", "notes.txt", "empty.png"])
def test_bad_image_file_exits_2(
    name: str, ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / name
    src.write_bytes(_bad_files(golden_dir)[name])
    rc, _, err = _detect(ckpt, src, tmp_path / "out", capsys)
    assert rc == 2
    _assert_one_line(err, src, "empty" if name == "empty.png" else "not a decodable image")
    assert not list((tmp_path / "out").glob("*"))


def test_missing_image_exits_2(ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _detect(ckpt, tmp_path / "nope.jpg", tmp_path / "out", capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path / "nope.jpg", "no such image file or folder")


def test_folder_skips_bad_images_and_counts_them(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name, data in _bad_files(golden_dir).items():
        (images / name).write_bytes(data)
    (images / SMALL).write_bytes((golden_dir / "coco" / "images" / SMALL).read_bytes())
    rc, out, err = _detect(ckpt, images, tmp_path / "out", capsys)
    assert rc == 0
    lines = err.strip().splitlines()
    bad = ["corrupt.jpg", "empty.png", "notes.jpg", "truncated.jpg"]  # notes.txt: no image suffix, left alone
    assert len(lines) == len(bad) + 1
    for line, name in zip(lines, bad, strict=False):
        assert line.startswith(f"warning: skipping {images / name}:")
    assert lines[-1] == "warning: skipped 4 of 5 images (unreadable)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [SMALL]
    assert "wrote    1 picture to" in out


def test_folder_of_unreadable_images_exits_2(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "truncated.jpg").write_bytes(_bad_files(golden_dir)["truncated.jpg"])
    rc, _, err = _detect(ckpt, images, tmp_path / "out", capsys)
    assert rc == 2
    *warnings, last = err.strip().splitlines()
    assert len(warnings) == 1 and str(images / "truncated.jpg") in warnings[0]
    assert last.startswith(f"error: {images}: none of the 1 images could be read")


@pytest.mark.parametrize("content", [[], ["notes.txt", "labels.json"]], ids=["empty", "no-images"])
def test_empty_folder_exits_2(
    content: list[str], ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in content:
        (images / name).write_text("{}")
    rc, _, err = _detect(ckpt, images, tmp_path / "out", capsys)
    assert rc == 2
    _assert_one_line(err, images, "is empty" if not content else "2 files but none with an image suffix")


def test_eval_empty_image_folder_exits_2(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty image folder: one error line naming the folder, no per-image warnings."""
    ann = golden_dir / "coco" / "annotations.json"
    rc, _, err = _run(eval_cli.main, _eval_args(ckpt, ann, tmp_path), capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path, "image folder is empty")


def test_eval_skips_truncated_and_non_image_files(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = _golden_ann(golden_dir)
    ann["images"] = [im for im in ann["images"] if im["file_name"] == SMALL]
    ann["images"] += [
        {"id": 10, "file_name": "truncated.jpg", "height": 420, "width": 300},
        {"id": 11, "file_name": "notes.jpg", "height": 10, "width": 10},
    ]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("truncated.jpg", "notes.jpg"):
        (images / name).write_bytes(_bad_files(golden_dir)[name])
    (images / SMALL).write_bytes((golden_dir / "coco" / "images" / SMALL).read_bytes())
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    rc, _, err = _run(eval_cli.main, _eval_args(ckpt, tmp_path / "ann.json", images), capsys)
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "warning: skipped 2 of 3 unreadable images"
    assert str(images / "truncated.jpg") in err and str(images / "notes.jpg") in err


# --- outputs ------------------------------------------------------------------------------------


def test_detect_pictures_keep_format_and_size(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PNG in, PNG out; JPEG in, JPEG out; same size; boxes drawn; one stdout line per image."""
    images = tmp_path / "images"
    images.mkdir()
    names = [SMALL, "synthetic_2_420x300.jpg"]
    for name in names:
        (images / name).write_bytes((golden_dir / "coco" / "images" / name).read_bytes())
    rc, out, err = _detect(ckpt, images, tmp_path / "out", capsys)
    assert rc == 0 and err == ""
    golden = {d["file"]: d["detections"] for d in json.loads((golden_dir / "detections.json").read_text())}
    for name in names:
        n = sum(d["score"] >= 0.3 for d in golden[name])
        assert f"{images / name}: {n} detections >= 0.3 (" in out
        written = (tmp_path / "out" / name).read_bytes()
        assert written.startswith(b"\x89PNG" if name.endswith(".png") else b"\xff\xd8")
        picture = cv2.imdecode(np.frombuffer(written, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        original = read_image(images / name)
        assert picture.shape == original.shape
        changed = np.any(np.abs(picture.astype(int) - original) > 40, axis=2).mean()
        assert changed > 0.01, f"{name}: no boxes drawn"  # JPEG noise stays below the threshold


def test_detect_refuses_to_overwrite_inputs(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / SMALL).write_bytes((golden_dir / "coco" / "images" / SMALL).read_bytes())
    rc, _, err = _detect(ckpt, tmp_path, tmp_path, capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path, "would replace them")


def test_detect_full_disk_is_one_line(
    ckpt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _write(tmp_path / "one.png", np.full((1, 1, 3), 200, np.uint8))

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_io, "open", full_disk, raising=False)  # only write_image's open
    monkeypatch.setattr(image_io, "_read_bytes", lambda path: np.fromfile(path, np.uint8))
    rc, _, err = _detect(ckpt, src, tmp_path / "out", capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path / "out" / "one.png", "No space left on device")


def test_verify_pictures(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--verify --pictures``: side-by-side PNGs, PyTorch left and the backend right, boxes on both."""
    ann = _golden_ann(golden_dir)
    ann["images"] = [im for im in ann["images"] if im["file_name"] in (SMALL, "synthetic_2_420x300.jpg")]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    pictures, report = tmp_path / "pictures", tmp_path / "report.json"
    argv = _eval_args(ckpt, tmp_path / "ann.json", golden_dir / "coco" / "images", "--verify")
    rc, out, _ = _run(
        eval_cli.main,
        [*argv, "--pictures", str(pictures), "--pictures-count", "4", "--report", str(report)],
        capsys,
    )
    assert rc == 0 and "wrote    2 pictures to" in out
    files = sorted(pictures.iterdir())
    assert [p.name for p in files] == ["01_synthetic_1_255x383.png", "02_synthetic_2_420x300.png"]
    assert json.loads(report.read_text())["verify"]["pictures"] == [str(p) for p in files]
    for path, (h, w) in zip(files, [(255, 383), (420, 300)], strict=True):
        picture = cv2.imread(str(path))[:, :, ::-1]
        assert picture.shape[0] > h and picture.shape[1] >= 2 * w + 3 * 8
        half = picture.shape[1] // 2
        for side in (picture[:, :half], picture[:, half:]):  # each panel has boxes in class colours
            assert any((side == class_color(c)).all(axis=2).sum() > 50 for c in range(3))


def test_pictures_need_verify(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = golden_dir / "coco"
    argv = _eval_args(ckpt, coco / "annotations.json", coco / "images", "--pictures", str(tmp_path))
    rc, _, err = _run(eval_cli.main, argv, capsys)
    assert rc == 2
    _assert_one_line(err, "--pictures", "needs --verify")


def test_rank_differences_worst_first() -> None:
    one = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([0]))
    two = Detections(
        np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32),
        np.array([0.9, 0.5], np.float32),
        np.array([0, 1]),
    )
    ranked = rank_differences({1: one, 2: two, 3: one}, {1: one, 2: one, 3: Detections.empty(), 4: one})
    assert [(d.image_id, d.unmatched, d.count_difference) for d in ranked] == [
        (2, 1, 1),
        (3, 1, 1),
        (1, 0, 0),
    ]


def test_draw_detections_is_deterministic_and_safe() -> None:
    image = np.full((60, 80, 3), 255, np.uint8)
    dets = Detections(
        np.array([[10, 10, 50, 40], [-30, -30, 500, 500], [5, 5, 6, 6]], np.float32),
        np.array([0.9, 0.5, 0.1], np.float32),
        np.array([0, 7, 1]),
    )
    a = draw_detections(image, dets, ("a", "b"), 0.3)
    assert np.array_equal(a, draw_detections(image, dets, ("a", "b"), 0.3)) and (image == 255).all()
    assert (a == class_color(0)).all(axis=2).any() and (a == class_color(7)).all(axis=2).any()
    assert not (a == class_color(1)).all(axis=2).any()  # below the threshold
    assert len({class_color(i) for i in range(20)}) == 20
    assert draw_detections(np.zeros((1, 1), np.uint8), dets, (), 0.0).shape == (1, 1, 3)
    assert side_by_side([("left", a), ("right", a[:10, :10])]).shape[1] >= 80 + 10 + 3 * 8


# --- annotation files ---------------------------------------------------------------------------


def _mutations() -> dict[str, Callable[[dict], object]]:
    return {
        "image-without-file_name": lambda d: d["images"][0].pop("file_name"),
        "image-id-not-int": lambda d: d["images"][0].update(id="one"),
        "annotation-without-bbox": lambda d: d["annotations"][0].pop("bbox"),
        "bbox-of-3-numbers": lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
        "category-without-id": lambda d: d["categories"][0].pop("id"),
        "no-categories": lambda d: d.pop("categories"),
        "images-not-a-list": lambda d: d.update(images={"id": 1}),
        "unknown-category-id": lambda d: d["annotations"][0].update(category_id=99),
    }


@pytest.mark.parametrize("mutation", list(_mutations()))
def test_annotation_file_missing_fields_exits_2(
    mutation: str, ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = _golden_ann(golden_dir)
    _mutations()[mutation](ann)
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    rc, _, err = _run(
        eval_cli.main, _eval_args(ckpt, tmp_path / "ann.json", golden_dir / "coco" / "images"), capsys
    )
    assert rc == 2
    _assert_one_line(err, tmp_path / "ann.json")


def _odd_boxes(ann: dict, image_id: int) -> dict:
    """Boxes partly outside, fully outside, zero-area and negative-size on image ``image_id``."""
    odd = [[300, 200, 200, 200], [1000, 1000, 20, 20], [10, 10, 0, 30], [40, 40, -5, 20]]
    first = max((a["id"] for a in ann["annotations"]), default=0) + 1
    ann["annotations"] += [
        {
            "id": first + i,
            "image_id": image_id,
            "category_id": 5,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": 0,
        }
        for i, b in enumerate(odd)
    ]
    return ann


def test_eval_works_with_boxes_outside_the_image_and_zero_area(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = _odd_boxes(_golden_ann(golden_dir), image_id=2)  # synthetic_1, 255x383
    ann["images"] = [im for im in ann["images"] if im["id"] == 2]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    report = tmp_path / "report.json"
    argv = _eval_args(ckpt, tmp_path / "ann.json", golden_dir / "coco" / "images", "--report", str(report))
    rc, _, err = _run(eval_cli.main, argv, capsys)
    assert rc == 0 and err == ""
    stats = json.loads(report.read_text())["stats"]
    assert 0.0 < stats["AP50"] <= 1.0


def test_training_dataset_drops_degenerate_boxes(golden_dir: Path, tmp_path: Path) -> None:
    """``CocoDetection`` (mmdet's rules): zero-area, negative-size and fully-outside boxes are dropped;
    a box partly outside is kept unclipped in the record and clipped by the train transform."""
    ann = _golden_ann(golden_dir)
    ann["images"] = [im for im in ann["images"] if im["id"] == 2]
    ann["annotations"] = []
    ann = _odd_boxes(ann, image_id=2)
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    data = CocoDetection(tmp_path / "ann.json", golden_dir / "coco" / "images", transform=None)
    (record,) = data.records
    np.testing.assert_array_equal(record.boxes, [[300, 200, 500, 400]])  # beyond 383x255, as written
    np.testing.assert_array_equal(record.labels, [1])  # category id 5 -> label 1
    data.transform = train_transform(TrainTransformConfig(photometric=False))
    for seed in range(4):
        data.seed = seed
        boxes = data[0]["boxes"]
        assert boxes.shape[1] == 4 and ((boxes >= 0) & (boxes <= 511)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_categories_not_matching_the_model_exit_2(
    ckpt: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = golden_dir / "coco" / "images"
    more = _golden_ann(golden_dir)
    more["categories"].append({"id": 9, "name": "shape3"})
    (tmp_path / "more.json").write_text(json.dumps(more))
    rc, _, err = _run(eval_cli.main, _eval_args(ckpt, tmp_path / "more.json", images), capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path / "more.json", "4 categories", "3 classes")

    renamed = _golden_ann(golden_dir)
    for c, name in zip(renamed["categories"], ["cat", "dog", "bird"], strict=True):
        c["name"] = name
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    rc, _, err = _run(eval_cli.main, _eval_args(ckpt, tmp_path / "renamed.json", images), capsys)
    assert rc == 2
    _assert_one_line(err, tmp_path / "renamed.json", "3 of 3 names differ", "'cat' vs model class 0 'shape0'")


# --- model files --------------------------------------------------------------------------------


def _bad_models(golden_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, phrase its one-line error must contain)."""
    import onnx
    from onnx import TensorProto, helper

    data = (golden_dir / "mmdet_checkpoint.pth").read_bytes()
    out: dict[str, tuple[Path, str]] = {}
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    out["truncated-pth"] = (tmp_path / "truncated.pth", "truncated checkpoint")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    out["text-pth"] = (tmp_path / "text.pth", "not a PyTorch checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    out["list-pth"] = (tmp_path / "list.pth", "not a checkpoint dict")
    sd = torch.load(golden_dir / "mmdet_checkpoint.pth", map_location="cpu", weights_only=True)
    sd["meta"]["dataset_meta"]["classes"] = ("a", "b", "c", "d")
    torch.save(sd, tmp_path / "four_names.pth")
    out["class-count-pth"] = (tmp_path / "four_names.pth", "names 4 classes but its heads predict 3")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "plain.onnx")
    out["foreign-onnx"] = (tmp_path / "plain.onnx", "not exported by cornernet-deploy")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    out["garbage-onnx"] = (tmp_path / "garbage.onnx", "not a readable ONNX file")
    return out


@pytest.mark.parametrize("cli", ["detect", "eval"])
def test_bad_model_files_exit_2(
    cli: str, golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = golden_dir / "coco"
    for name, (model, phrase) in _bad_models(golden_dir, tmp_path).items():
        if cli == "detect":
            rc, _, err = _detect(str(model), coco / "images" / SMALL, tmp_path / "out", capsys)
        else:
            rc, _, err = _run(
                eval_cli.main, _eval_args(str(model), coco / "annotations.json", coco / "images"), capsys
            )
        assert rc == 2, name
        _assert_one_line(err, model, phrase)
