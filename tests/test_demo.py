"""The README's main command, ``python -m runtime.demo``, end to end on the generated set (CPU).

Generates the set, trains the tiny preset, evaluates the checkpoint, exports ONNX, evaluates the ONNX
file and verifies it against PyTorch: the model trained here gives the same AP in both backends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime.demo import main


@pytest.mark.slow
def test_demo_trains_exports_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    code = main(["--data", str(tmp_path / "data"), "--out-dir", str(tmp_path / "demo"), "--no-progress"])
    minutes = (time.perf_counter() - t0) / 60
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    pth = json.loads((tmp_path / "demo" / "eval_pth.json").read_text())
    ort = json.loads((tmp_path / "demo" / "eval_onnx.json").read_text())
    assert pth["stats"]["AP"] > 0.3, "the tiny preset did not learn the generated shapes"
    assert ort["stats"] == pth["stats"]
    assert ort["verify"]["passed"] and all(d == 0.0 for d in ort["verify"]["delta_ap"].values())
    assert "ONNX Runtime (CPU)" in out and "verification PASSED" in out
    print(f"demo took {minutes:.1f} min, AP {100 * pth['stats']['AP']:.1f}")
