"""DDP: 2 CPU processes (gloo) train exactly like 1 process over the same global batch.

What "the same global batch" must mean for CornerNet. mmdet's loss is per GPU: the focal and
offset losses are normalised by the number of corners in *that GPU's* images, pull/push are summed
over *its* images, and BatchNorm normalises with *its* batch statistics (no SyncBN in mmdet). DDP then
averages the gradients. So 2 processes x 2 images is not one process with a batch of 4 (a different
normaliser, twice the pull/push, BN statistics over 4 images; SyncBN would fix only the last, and has
no CPU implementation). It is, exactly, one process with ``--accum 2``: two forwards of 2 images, each
with its own loss and BN statistics, gradients averaged. The trainer gives micro-batch ``a`` of
process ``r`` the data shard ``r * accum + a``, so both runs see the same images in the same
micro-batches; BN running statistics follow the first micro-batch of rank 0 in both (DDP broadcasts
rank 0's buffers). Everything is then bit-identical on one machine: the averaged losses of every
step, the weights, the BN buffers and Adam's moments after K steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), 8, 1, seed=2)["root"]


def _train(out: Path, coco: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "trainer.train", "--preset", "tiny", "--gpus", "0", "--coco", str(coco),
           "--out-dir", str(out), "--batch", "2", "--crop", "127", "--epochs", "2", "--max-iters", str(STEPS),
           "--eval-interval", "0", "--log-interval", "1", "--workers", "0", "--no-progress", *extra]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }  # same threads per process in both runs
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.mark.slow  # ~35-45 s on the 2-core machine: two or three short training runs
def test_two_processes_equal_one_process_with_accumulation(tmp_path: Path, coco: Path) -> None:
    ddp = _train(tmp_path / "ddp", coco, "--procs", "2")
    one = _train(tmp_path / "one", coco, "--procs", "1", "--accum", "2")
    keys = ("loss", "det_loss", "pull_loss", "push_loss", "off_loss", "lr", "grad_norm")
    assert [r["iter"] for r in ddp] == list(range(1, STEPS + 1))
    assert [[r[k] for k in keys] for r in ddp] == [[r[k] for k in keys] for r in one]

    a = torch.load(tmp_path / "ddp" / f"iter_{STEPS}.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / f"iter_{STEPS}.pth", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():  # weights and BN running statistics
        assert torch.equal(v, b["state_dict"][k]), k
    for i, state in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], b["optimizer"]["state"][i][name]), (i, name)
    # and the weights did move: the comparison is not between two untouched initialisations
    start = ddp[0]["loss"]
    assert ddp[-1]["loss"] != start
