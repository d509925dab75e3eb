"""``python -m runtime.eval`` on the golden checkpoint writes mmdet's own detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.decode import Detections
from runtime.eval import main
from runtime.matching import match_detections


def _golden_args(golden_dir: Path) -> list[str]:
    return [
        str(golden_dir / "mmdet_checkpoint.pth"),
        "--ann", str(golden_dir / "coco" / "annotations.json"),
        "--images", str(golden_dir / "coco" / "images"),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def _per_image(results: list[dict], category_ids: list[int]) -> dict[int, Detections]:
    out: dict[int, list[dict]] = {}
    for r in results:
        out.setdefault(r["image_id"], []).append(r)
    dets = {}
    for image_id, rs in out.items():
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)], np.float32)
        scores = np.array([r["score"] for r in rs], np.float32)
        labels = np.array([category_ids.index(r["category_id"]) for r in rs], np.int64)
        dets[image_id] = Detections(boxes, scores, labels)
    return dets


def _golden(golden_dir: Path, key: str) -> dict[str, Detections]:
    out = {}
    for item in json.loads((golden_dir / "detections.json").read_text()):
        d = item[key]
        out[item["file"]] = Detections(
            np.array([x["bbox"] for x in d], np.float32).reshape(-1, 4),
            np.array([x["score"] for x in d], np.float32),
            np.array([x["label"] for x in d], np.int64),
        )
    return out


@pytest.mark.parametrize(("flip", "key"), [(False, "detections"), (True, "detections_flip")])
def test_eval_writes_mmdets_detections(
    golden_dir: Path, golden_info: dict, tmp_path: Path, flip: bool, key: str
) -> None:
    out, report = tmp_path / "results.json", tmp_path / "report.json"
    argv = [*_golden_args(golden_dir), "--out", str(out), "--report", str(report)] + (
        ["--flip"] if flip else []
    )
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    ann = json.loads((golden_dir / "coco" / "annotations.json").read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    ours = _per_image(results, golden_info["category_ids"])
    golden = _golden(golden_dir, key)
    assert {names[i] for i in ours} == set(golden)
    for image_id, dets in ours.items():
        ref = golden[names[image_id]]
        m = match_detections(ref, dets)
        assert len(dets) == len(ref) and m.rate >= 0.99, f"{names[image_id]}: {m}"
    stats = json.loads(report.read_text())["stats"]
    assert len(stats) == 12 and stats["AP"] > 0.3  # the golden model finds the synthetic shapes


def test_verify_against_itself_is_exact(
    golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    assert main([*_golden_args(golden_dir), "--limit", "2", "--verify", "--report", str(report)]) == 0
    v = json.loads(report.read_text())["verify"]
    assert v["passed"] and v["matched_rate"] == 1.0
    assert all(d == 0.0 for d in v["delta_ap"].values())
    scores = next(c for c in v["criteria"] if c["name"] == "tl_scores")
    assert scores["passed"] and scores["detail"].startswith("max abs ")
    assert "verify   PASSED" in capsys.readouterr().out


def test_bad_inputs_exit_2_with_one_line(
    golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(golden_dir / "mmdet_checkpoint.pth")
    assert main([ckpt, "--coco", str(tmp_path)]) == 2
    assert "instances_val2017.json" in capsys.readouterr().err
    assert (
        main(
            [
                str(tmp_path / "missing.pth"),
                "--ann",
                str(golden_dir / "coco" / "annotations.json"),
                "--images",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "missing.pth" in capsys.readouterr().err
    ann = json.loads((golden_dir / "coco" / "annotations.json").read_text())
    ann["categories"] = ann["categories"][:2]
    (tmp_path / "two.json").write_text(json.dumps(ann))
    assert (
        main([ckpt, "--ann", str(tmp_path / "two.json"), "--images", str(golden_dir / "coco" / "images")])
        == 2
    )
    err = capsys.readouterr().err
    assert "2 categories" in err and "3 classes" in err and err.count("\n") == 1
    assert main([str(tmp_path / "model.bin"), "--coco", str(tmp_path)]) == 2


def test_unreadable_images_are_skipped_with_a_warning(
    golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = json.loads((golden_dir / "coco" / "annotations.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    keep = ann["images"][1]
    (images / keep["file_name"]).write_bytes(
        (golden_dir / "coco" / "images" / keep["file_name"]).read_bytes()
    )
    (images / ann["images"][0]["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ann["images"] = ann["images"][:2]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    report = tmp_path / "report.json"
    args = [
        str(golden_dir / "mmdet_checkpoint.pth"),
        "--ann",
        str(tmp_path / "ann.json"),
        "--images",
        str(images),
    ]
    assert main([*args, "--no-progress", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 2" in err and ann["images"][0]["file_name"] in err
    assert json.loads(report.read_text())["dataset"]["images"] == 1
