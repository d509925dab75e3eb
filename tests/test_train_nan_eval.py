"""A NaN loss stops training with a clear message and exit code 1, keeping the last good checkpoint;
checkpoints are what ``runtime.eval`` takes, and the in-training evaluation is runtime's own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.loop
from runtime import eval as runtime_eval
from runtime.backends.pytorch import ModelBackend, PyTorchBackend
from runtime.coco import load_coco_set
from trainer import train
from trainer.checkpoint import build_model, load_checkpoint
from trainer.data import synthetic
from trainer.evaluation import evaluate_model

ARGS = ["--preset", "tiny", "--gpus", "0", "--batch", "2", "--crop", "127", "--workers", "0", "--no-progress",
        "--log-interval", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), 6, 2, seed=4)["root"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(
    tmp_path: Path, coco: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = trainer.loop.corner_losses
    calls = {"n": 0}

    def nan_at_step_5(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        out = real(*args, **kwargs)
        return {k: v * math.nan for k, v in out.items()} if calls["n"] == 5 else out

    monkeypatch.setattr(trainer.loop, "corner_losses", nan_at_step_5)
    out = tmp_path / "run"
    code = train.main([*ARGS, "--coco", str(coco), "--out-dir", str(out), "--epochs", "3", "--ckpt-interval", "2",
                       "--eval-interval", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "loss is not finite at iteration 5 (epoch 2; loss=nan" in err
    assert f"the last good checkpoint is {out / 'iter_4.pth'}" in err  # 3 steps/epoch, a checkpoint every 2
    assert (out / "last_checkpoint").read_text().strip() == "iter_4.pth"
    assert not list(out.glob("*_5.pth")) and not list(out.glob(".*.tmp"))
    # --keep 2 (the tiny preset's): iter_2.pth was dropped when iter_4.pth was written
    assert sorted(p.name for p in out.glob("*.pth")) == ["epoch_1.pth", "iter_4.pth"]
    ckpt = load_checkpoint(out / "iter_4.pth")
    assert ckpt.extra["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r["type"] == "train"] == [1, 2, 3, 4]
    assert log[-1]["event"] == "nonfinite" and log[-1]["iter"] == 5


def test_checkpoint_runs_in_runtime_eval_and_matches_training_evaluation(
    tmp_path: Path, coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = train.main(
        [*ARGS, "--coco", str(coco), "--out-dir", str(out), "--epochs", "1", "--eval-interval", "1"]
    )
    assert code == 0, capsys.readouterr().err
    ckpt_path = out / "epoch_1.pth"
    val = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r for r in val if r["type"] == "val"]
    assert len(val) == 1 and (out / "map.png").is_file() and (out / "loss.png").is_file()

    # runtime.eval takes the training checkpoint as it is and reports the same 12 stats
    report = tmp_path / "report.json"
    assert runtime_eval.main([str(ckpt_path), "--coco", str(coco), "--device", "cpu", "--no-progress",
                              "--report", str(report)]) == 0  # fmt: skip
    stats = json.loads(report.read_text())["stats"]
    assert stats == {k: val[0][k] for k in stats}

    # the in-memory backend and the checkpoint backend give identical outputs
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)
    x = np.random.default_rng(0).standard_normal((1, 3, 255, 383)).astype(np.float32)
    ours = ModelBackend(model, ckpt.meta, torch.device("cpu")).infer(x)
    theirs = PyTorchBackend(ckpt_path, device="cpu").infer(x)
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    assert evaluate_model(model, ckpt.meta, load_coco_set(coco / "annotations" / "instances_val2017.json",
                                                          coco / "val2017")) == stats  # fmt: skip
