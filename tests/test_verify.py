"""Backends agree: a checkpoint and its ``.onnx`` give identical AP, ``--verify`` passes at ΔAP 0.000 and
fails on a perturbed file; batching same-shape images changes nothing (issue: to_trt and the GPU runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.onnx_export import export_onnx
from runtime.backends import open_backend
from runtime.eval import main as eval_main
from runtime.matching import match_detections
from runtime.pipeline import batches_by_shape, prepare, run_batch


@pytest.fixture(scope="module")
def trained(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mmdet's golden model (trained, real heatmap peaks), its ONNX export, and the golden set.

    The demo test (tests/test_demo.py) covers a model trained here on the generated set.
    """
    root = tmp_path_factory.mktemp("verify")
    ckpt = root / "golden.pth"
    ckpt.write_bytes((golden_dir / "mmdet_checkpoint.pth").read_bytes())
    onnx_path = export_onnx(ckpt, root / "model.onnx")
    ann = golden_dir / "coco" / "annotations.json"
    return {
        "ann": ann,
        "images": golden_dir / "coco" / "images",
        "ckpt": ckpt,
        "onnx": onnx_path,
        "root": root,
    }


def _eval(model: Path, data: dict[str, Path], report: Path, *extra: str) -> tuple[int, dict]:
    code = eval_main(
        [
            str(model),
            "--ann",
            str(data["ann"]),
            "--images",
            str(data["images"]),
            "--device",
            "cpu",
            "--no-progress",
            "--report",
            str(report),
            *extra,
        ]
    )
    return code, json.loads(report.read_text()) if report.exists() else {}


def test_pth_and_onnx_give_identical_ap_and_verify_passes(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = trained["root"]
    code_pth, pth = _eval(trained["ckpt"], trained, root / "pth.json")
    code_onnx, ort = _eval(trained["onnx"], trained, root / "onnx.json", "--verify")
    assert code_pth == 0 and code_onnx == 0
    assert ort["stats"] == pth["stats"] and pth["stats"]["AP"] > 0.3
    v = ort["verify"]
    assert v["passed"] and v["reference"] == str(trained["ckpt"].resolve())  # found through the ONNX metadata
    assert all(abs(d) < 1e-9 for d in v["delta_ap"].values())
    n = 100 * len(list(trained["images"].iterdir()))  # 100 detections per golden image
    assert v["matched_rate"] == 1.0 and v["reference_detections"] == v["test_detections"] == n
    assert v["outputs"]["tl_embs"]["max_abs"] < 1e-4 and v["outputs"]["tl_offs"]["max_abs"] < 1e-4
    out = capsys.readouterr().out
    assert "+0.000" in out and "verify   PASSED" in out
    code, strict = _eval(trained["onnx"], trained, root / "strict.json", "--verify", "--min-match", "1.0")
    assert code == 0
    assert strict["verify"]["min_match"] == 1.0


def test_verify_fails_on_a_perturbed_onnx(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(str(trained["onnx"]))
    # Scale the largest convolution weight: a plausible export bug (wrong BN folding, say).
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    bad = trained["root"] / "perturbed.onnx"
    onnx.save(model, str(bad))
    code, report = _eval(bad, trained, trained["root"] / "bad.json", "--verify", str(trained["ckpt"]))
    assert code == 1
    assert not report["verify"]["passed"] and report["verify"]["reasons"]
    assert "verify   FAILED" in capsys.readouterr().out


def test_batching_same_shape_images_changes_nothing(trained: dict[str, Path]) -> None:
    images = sorted(trained["images"].iterdir())
    backend = open_backend(trained["onnx"])
    meta = backend.meta
    for flip in (False, True):
        prepared = [prepare(i, images[0], meta, flip) for i in range(3)]  # three copies: one padded shape
        assert [len(b) for b in batches_by_shape(prepared, 2)] == [2, 1]
        single = run_batch(backend, prepared[:1]).detections[0]
        batched = run_batch(backend, prepared[:2]).detections
        for dets in batched:
            m = match_detections(single, dets)
            assert m.ok and m.matched == len(single) == len(dets)


def test_batches_group_only_equal_padded_shapes(trained: dict[str, Path]) -> None:
    images = sorted(trained["images"].iterdir())
    meta = open_backend(trained["ckpt"], device="cpu").meta
    prepared = [prepare(i, p, meta, False) for i, p in enumerate(images)]
    batches = list(batches_by_shape(prepared, 4))
    assert sorted(p.key for b in batches for p in b) == list(range(len(images)))
    for b in batches:
        assert len({p.pad_shape for p in b}) == 1 and 1 <= len(b) <= 4
