"""A run killed with SIGKILL between checkpoints and resumed with ``--resume auto`` matches an uninterrupted run.

The kill lands after iteration 10 of 16 (4 steps per epoch, a checkpoint every 3 steps and at each
epoch end), so the newest checkpoint is ``iter_9.pth``: in the middle of epoch 3 and of a 2-step
log window. The resumed run must skip the data already seen in that epoch, restore the partial log
averages, drop the log records the killed run wrote after iteration 9, and then produce the same
losses at every logged step and the same final weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
KILL_AFTER = 10


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), 8, 1, seed=3)["root"]


def _cmd(out: Path, coco: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.train", "--preset", "tiny", "--gpus", "0", "--coco", str(coco),
            "--out-dir", str(out), "--batch", "2", "--crop", "127", "--epochs", "4", "--eval-interval", "0",
            "--log-interval", "2", "--ckpt-interval", "3", "--keep", "0", "--workers", "1", "--no-progress",
            *extra]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == kind]


def _logged_iters(out: Path) -> list[int]:
    log = out / "log.jsonl"
    if not log.exists():
        return []
    return [r["iter"] for r in map(json.loads, log.read_text().splitlines()[:-1]) if r["type"] == "train"]


@pytest.mark.slow  # ~35-45 s on the 2-core machine: two or three short training runs
def test_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path: Path, coco: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_cmd(ref, coco), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        _cmd(run, coco), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while KILL_AFTER not in _logged_iters(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (run / "last_checkpoint").read_text().strip() == "iter_9.pth"
    assert not (run / "epoch_4.pth").exists()

    resumed = subprocess.run(
        _cmd(run, coco, "--resume", "auto"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "iter_9.pth at epoch 3, iteration 9" in resumed.stderr
    events = [(e["event"], e["iter"]) for e in _records(run, "event")]
    assert ("resume", 9) in events and events[-1] == ("end", 16)

    keys = ("iter", "epoch", "loss", "det_loss", "pull_loss", "push_loss", "off_loss", "lr", "grad_norm")
    expected = [[r[k] for k in keys] for r in _records(ref, "train")]
    assert [[r[k] for k in keys] for r in _records(run, "train")] == expected
    assert [r[0] for r in expected] == [2, 4, 6, 8, 10, 12, 14, 16]

    a = torch.load(ref / "epoch_4.pth", weights_only=True)
    b = torch.load(run / "epoch_4.pth", weights_only=True)
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (4, 16)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
