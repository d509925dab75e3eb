"""With TensorRT and a GPU (marked ``tensorrt``, skipped with the reason elsewhere): build an engine from the golden
checkpoint and verify it with ``runtime.eval --verify`` (ΔAP 0.000 in fp32), batches, shapes and CUDA graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import runtime.cuda_env as cuda_env
from export import to_trt
from runtime.backends.tensorrt import TensorRTBackend
from runtime.engine_sidecar import (
    Sidecar,
    sidecar_path,
)
from runtime.errors import UserError

# ---------------------------------------------------------------------------------------------------
# Real TensorRT on a GPU


@pytest.fixture(scope="module")
def real_trt() -> None:
    reason = cuda_env.tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def golden_engine(real_trt: None, golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "golden.plan"
    assert (
        to_trt.main(
            [str(golden_dir / "mmdet_checkpoint.pth"), "--out", str(out), "--batch", "2", "--max", "767x767"]
        )
        == 0
    )
    return out


def _eval_golden(engine: Path, golden_dir: Path, report: Path, *extra: str) -> dict[str, Any]:
    from runtime.eval import main as eval_main

    args = [
        str(engine),
        "--ann",
        str(golden_dir / "coco" / "annotations.json"),
        "--images",
        str(golden_dir / "coco" / "images"),
    ]
    code = eval_main([*args, "--no-progress", "--verify", "--report", str(report), *extra])
    rep = json.loads(report.read_text())
    assert code == 0, rep.get("verify", {}).get("reasons")
    return rep


@pytest.mark.tensorrt
def test_golden_engine_verifies_exactly_in_fp32(
    golden_engine: Path, golden_dir: Path, tmp_path: Path
) -> None:
    sidecar = Sidecar.read(sidecar_path(golden_engine))
    pools = sum(n.op_type == "CornerPool" for n in onnx.load(sidecar.source.onnx).graph.node)
    assert sidecar.precision == "fp32" and sidecar.plugin is not None and sidecar.plugin.layers == pools == 4
    rep = _eval_golden(golden_engine, golden_dir, tmp_path / "report.json")
    v = rep["verify"]
    assert v["passed"] and v["matched_rate"] >= 0.99
    assert all(abs(d) < 5e-4 for d in v["delta_ap"].values()), v["delta_ap"]  # prints as 0.000
    assert rep["backend_info"]["tensorrt"] == sidecar.tensorrt_version


@pytest.mark.tensorrt
def test_golden_engine_batches_shapes_and_graphs(golden_engine: Path, golden_dir: Path) -> None:
    from runtime.pipeline import prepare

    items = [
        prepare(i, p, Sidecar.read(sidecar_path(golden_engine)).meta, False)
        for i, p in enumerate(sorted((golden_dir / "coco" / "images").iterdir()))
    ]
    with TensorRTBackend(golden_engine) as plain, TensorRTBackend(golden_engine, cuda_graph=True) as graph:
        for p in items:  # shapes go up and down: buffers grow, graphs are re-captured
            x = p.inputs[0][None]
            a, b = plain.infer(x), graph.infer(x)
            for n in a:
                np.testing.assert_array_equal(a[n], b[n])
            two = plain.infer(np.concatenate([x, x]))  # batch 2 may pick other tactics: scores agree closely;
            for n in ("tl_scores", "br_scores"):  # indices of tied (zero) scores may come in another order
                np.testing.assert_allclose(two[n][1], a[n][0], rtol=1e-4, atol=1e-5)
        with pytest.raises(UserError, match="--max 1023x767"):
            plain.infer(np.zeros((1, 3, 1023, 511), np.float32))


@pytest.mark.tensorrt
@pytest.mark.slow
def test_golden_engine_fp16_within_tolerance(real_trt: None, golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "golden.fp16.plan"
    assert to_trt.main([str(golden_dir / "mmdet_checkpoint.pth"), "--out", str(out), "--fp16"]) == 0
    rep = _eval_golden(out, golden_dir, tmp_path / "report.json")
    assert rep["backend_info"]["precision"] == "fp16" and rep["verify"]["passed"]
