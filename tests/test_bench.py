"""``runtime.bench``: the table, bad input, and memory that does not grow with the number of images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from runtime import bench
from runtime.meta import ModelMeta
from trainer.checkpoint import save_checkpoint
from trainer.model import CornerNet, ModelConfig

#: The smallest CornerNet the code builds (HG stem + one shallow hourglass): cheap, yet the real network.
MICRO = ModelConfig(
    downsample_times=2, num_stacks=1, stage_channels=(8, 8, 8), stage_blocks=(1, 1, 1), feat_channel=8, num_classes=3
)


def _summary(model: str, fps: float) -> dict[str, Any]:
    net = {"p50_ms": 1e3 / fps, "p90_ms": 1.1e3 / fps, "p99_ms": 1.2e3 / fps, "fps": fps}
    e2e = {"fps": fps / 2, "network_busy": 0.5, "preprocess_ms": 3.0, "decode_ms": 1.0, "inference_ms": 1e3 / fps}
    return {"model": model, "backend": "x", "device": "cpu", "precision": "fp32", "images": 4, "network": net, "end_to_end": e2e}


def test_bench_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = bench.format_table([_summary("a.pth", 2.0), _summary("b.onnx", 5.0)])
    assert "1.00x" in table and "2.50x" in table and "p99" in table and "busy" in table
    assert bench.main(["m.pth", "--images", str(tmp_path)]) == 2
    assert f"{tmp_path}: is empty" in capsys.readouterr().err
    assert bench.main(["m.pth"]) == 2
    assert "--images DIR" in capsys.readouterr().err
    assert bench.main(["m.pth", "--images", str(tmp_path), "--batch", "0"]) == 2


def test_bench_pth_and_onnx_on_cpu(golden_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.onnx_export import export_onnx

    ckpt = golden_dir / "mmdet_checkpoint.pth"
    onnx = export_onnx(ckpt, tmp_path / "golden.onnx")
    report = tmp_path / "bench.json"
    argv = [str(ckpt), str(onnx), "--images", str(golden_dir / "coco" / "images"), "--device", "cpu", "--no-progress"]
    assert bench.main([*argv, "--limit", "2", "--warmup", "1", "--iters", "3", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("mmdet_checkpoint.pth", "golden.onnx"))]
    assert len(rows) == 2 and "pytorch" in rows[0] and "onnxruntime" in rows[1] and "1.00x" in rows[0]
    results = json.loads(report.read_text())["results"]
    assert [r["backend"] for r in results] == ["pytorch", "onnxruntime"]
    for r in results:
        assert r["batches"] == 3 and r["images"] == 3 and r["device"] == "cpu"
        assert 0 < r["end_to_end"]["fps"] <= r["network"]["fps"]
        assert 0 < r["end_to_end"]["network_busy"] <= 1.0
        assert r["network"]["p50_ms"] <= r["network"]["p90_ms"] <= r["network"]["p99_ms"]


@pytest.mark.slow
def test_bench_memory_does_not_grow_with_the_images(tmp_path: Path) -> None:
    """500 images at 640x480 would take ~2 GB as pre-processed float canvases; streaming keeps the whole
    process (torch included) under 1.5 GB."""
    torch.manual_seed(0)
    ckpt = tmp_path / "micro.pth"
    save_checkpoint(ckpt, CornerNet(MICRO).eval(), MICRO, ModelMeta(classes=("a", "b", "c")))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (640, 480))
    for i in range(500):
        cv2.imwrite(str(images / f"{i:04d}.jpg"), np.roll(base, i, axis=1))
    report = tmp_path / "bench.json"
    # A wrapper process measures its one child, the bench, and nothing else of this test session.
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    cmd = [sys.executable, "-m", "runtime.bench", str(ckpt), "--images", str(images), "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd, "--warmup", "0", "--batch", "2", "--no-progress", "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
    assert json.loads(report.read_text())["results"][0]["images"] == 500
    assert peak_mb < 1500, f"runtime.bench peaked at {peak_mb:.0f} MB for 500 images"
    print(f"runtime.bench, 500 images at 640x480: peak RSS {peak_mb:.0f} MB")
