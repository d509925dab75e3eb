"""``runtime.Detector``: mmdet's detections for .pth and .onnx, identical to ``runtime.eval``, order kept in
streams, bounded waiting, clear errors, and the README example run as written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import Detector, Result
from runtime.decode import Detections
from runtime.errors import UserError
from runtime.eval import main as eval_main
from runtime.image_io import read_image
from runtime.matching import match_detections

ROOT = Path(__file__).resolve().parents[1]


def _golden_dets(golden_dir: Path, key: str) -> dict[str, Detections]:
    out = {}
    for rec in json.loads((golden_dir / "detections.json").read_text()):
        d = rec[key]
        out[rec["file"]] = Detections(
            np.asarray([x["bbox"] for x in d], np.float32).reshape(-1, 4),
            np.asarray([x["score"] for x in d], np.float32),
            np.asarray([x["label"] for x in d], np.int64),
        )
    return out


@pytest.fixture(scope="module")
def golden_onnx(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.onnx_export import export_onnx

    return Path(export_onnx(golden_dir / "mmdet_checkpoint.pth", tmp_path_factory.mktemp("onnx") / "golden.onnx"))


def _images(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "coco" / "images").iterdir())


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_detector_reproduces_mmdet(golden_dir: Path, golden_onnx: Path, kind: str, flip: bool) -> None:
    model = golden_dir / "mmdet_checkpoint.pth" if kind == "pth" else golden_onnx
    want = _golden_dets(golden_dir, "detections_flip" if flip else "detections")
    paths = _images(golden_dir)
    with Detector(model, device="cpu", flip=flip) as det:
        results = det(paths)
    assert [Path(str(r.source)).name for r in results] == [p.name for p in paths]
    for path, r in zip(paths, results, strict=True):
        assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(r), 4)
        assert r.scores.dtype == np.float32 and r.labels.dtype == np.int64
        assert r.classes == ("shape0", "shape1", "shape2") and len(r.names) == len(r)
        m = match_detections(want[path.name], r.detections())
        assert m.ok and m.rate == 1.0, f"{path.name}: {m}"


def test_detector_equals_eval_out_image_by_image(golden_dir: Path, golden_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    ann = golden_dir / "coco" / "annotations.json"
    argv = [str(golden_onnx), "--ann", str(ann), "--images", str(golden_dir / "coco" / "images")]
    assert eval_main([*argv, "--out", str(out), "--no-progress", "--batch", "2"]) == 0
    coco = json.loads(ann.read_text())
    id_of = {im["file_name"]: im["id"] for im in coco["images"]}
    cat_ids = [c["id"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    written = json.loads(out.read_text())
    with Detector(golden_onnx) as det:
        for path in _images(golden_dir):
            r = det(str(path))
            mine = [d for d in written if d["image_id"] == id_of[path.name]]
            assert len(mine) == len(r)
            for d, box, score, label in zip(mine, r.boxes, r.scores, r.labels, strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                assert d["category_id"] == cat_ids[int(label)]
                assert d["score"] == pytest.approx(float(score), abs=1e-6)
                assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)


def test_arrays_paths_lists_and_streams_agree(golden_dir: Path, golden_onnx: Path) -> None:
    paths = _images(golden_dir)
    with Detector(golden_onnx, batch_size=3) as det:
        one = det(paths[0])
        from_array = det(read_image(paths[0]))
        assert isinstance(one, Result) and one.source == str(paths[0]) and from_array.source is None
        assert np.array_equal(one.boxes, from_array.boxes) and np.array_equal(one.scores, from_array.scores)
        # Mixed shapes, repeated: results come back in input order whatever the batching.
        order = [paths[i] for i in (0, 1, 0, 1, 0)]  # two padded shapes (the golden images)
        streamed = list(det.stream(iter(order), keep_outputs=True))
        assert [r.source for r in streamed] == [str(p) for p in order]
        assert streamed[0].outputs is not None and streamed[0].outputs["tl_scores"].shape[0] == 1
        # The three copies of paths[0] were batched together (same padded shape), and agree.
        assert 3 in det.times.batch_sizes
        for r in (streamed[2], streamed[4]):
            assert match_detections(streamed[0].detections(), r.detections()).ok
    with Detector(golden_onnx) as single:
        for a, b in zip(streamed, single(order), strict=True):
            assert match_detections(b.detections(), a.detections()).ok


def test_waiting_images_are_bounded(golden_dir: Path, golden_onnx: Path) -> None:
    """With a batch size no shape fills, images still flow: partial batches leave once 4x batch wait."""
    paths = _images(golden_dir)  # the golden images, one padded shape each
    with Detector(golden_onnx, batch_size=2) as det:
        results = list(det.stream(paths * 2))
    assert [r.source for r in results] == [str(p) for p in paths * 2]
    assert sum(det.times.batch_sizes) == 2 * len(paths) and max(det.times.batch_sizes) <= 2


def test_unreadable_images_skip_or_raise(golden_dir: Path, golden_onnx: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = _images(golden_dir)[1]
    with Detector(golden_onnx) as det:
        with pytest.raises(UserError, match=r"broken\.jpg"):
            det(bad)
        skipped: list[str] = []
        results = list(det.stream([good, bad, good], on_skip=lambda src, why: skipped.append(src)))
        assert [r.source for r in results] == [str(good), str(good)] and skipped == [str(bad)]
        with pytest.raises(UserError, match="HxWx3 uint8"):
            det(np.zeros((10, 10), np.uint8))
        with pytest.raises(UserError, match="HxWx3 uint8"):
            det(np.zeros((10, 10, 3), np.float32))
        with pytest.raises(UserError, match="not found"):
            det(tmp_path / "missing.png")
    with pytest.raises(UserError, match="unknown model file type"):
        Detector(tmp_path / "model.xyz")
    with pytest.raises(UserError, match="batch_size"):
        Detector(golden_onnx, batch_size=0)


def test_close_is_idempotent(golden_onnx: Path) -> None:
    det = Detector(golden_onnx)
    det.close()
    det.close()


def test_readme_api_example_runs_as_written(
    golden_dir: Path, golden_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from runtime import Detector" in b]
    assert blocks, "README shows no Detector example"
    code = blocks[0]
    # Lay out the files the example names (the demo's outputs) in a fresh folder.
    for name in re.findall(r'"([^"]+\.(?:onnx|jpg|png|pth))"', code):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = golden_onnx if name.endswith(".onnx") else golden_dir / "coco" / "images" / "synthetic_2_420x300.jpg"
        if name.endswith(".png"):
            cv2.imwrite(str(target), cv2.imread(str(source)))
        else:
            shutil.copy(source, target)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(line.split()[0] in ("shape0", "shape1", "shape2") for line in printed)
