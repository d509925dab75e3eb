"""Training building blocks without training: mmdet's lr schedule, the data order, presets, CLI, curves."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from torch.utils.data import DistributedSampler

from trainer import train
from trainer.config import PRESETS, TrainConfig, preset
from trainer.data.loader import ResumableBatchSampler
from trainer.loop import find_resume
from trainer.observe import read_log, truncate_log, write_curves
from trainer.schedule import WarmupStepSchedule


def test_schedule_is_mmdets_warmup_and_step() -> None:
    s = WarmupStepSchedule(base_lr=5e-4, iters_per_epoch=2443, step_epochs=(180,), warmup_iters=500)
    assert s.lr_at(0) == pytest.approx(5e-4 / 3)  # warmup starts at ratio 1/3
    assert s.lr_at(250) == pytest.approx(5e-4 * (1 - 0.5 * 2 / 3))  # linear in between
    assert s.lr_at(500) == pytest.approx(5e-4)
    assert s.lr_at(180 * 2443 - 1) == pytest.approx(5e-4)  # last iteration of epoch 180 (1-based)
    assert s.lr_at(180 * 2443) == pytest.approx(5e-5)  # first iteration of epoch 181
    assert s.lr_at(210 * 2443 - 1) == pytest.approx(5e-5)
    assert WarmupStepSchedule.from_state_dict(s.state_dict()) == s


def test_presets_are_mmdets_recipes() -> None:
    for name, (gpus, per_gpu) in {"8x6": (8, 6), "10x5": (10, 5), "32x3": (32, 3)}.items():
        cfg = preset(name)
        assert (cfg.batch, cfg.base_batch_size, cfg.model, cfg.crop_size) == (
            per_gpu,
            gpus * per_gpu,
            "hg104",
            511,
        )
        assert (cfg.lr, cfg.epochs, cfg.step_epochs, cfg.grad_clip) == (5e-4, 210, (180,), 35.0)
        assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.pull_weight, cfg.push_weight) == (
            500,
            1 / 3,
            0.1,
            0.1,
        )
        assert cfg.scaled_lr(gpus) == pytest.approx(5e-4)  # the recipe's own GPU count keeps lr 5e-4
        assert cfg.scaled_lr(gpus // 2) == pytest.approx(2.5e-4)  # auto_scale_lr: linear in the total batch
        assert cfg.replace(accum=2).scaled_lr(gpus // 2) == pytest.approx(5e-4)
    assert PRESETS["tiny"].model == "tiny"
    cfg = PRESETS["8x6"]
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="--crop must be 128 k - 1"):
        cfg.replace(crop_size=255 + 32)
    with pytest.raises(ValueError, match="--amp"):
        cfg.replace(amp="fp8")


def _distributed_batches(n: int, world: int, rank: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
    s.set_epoch(epoch)
    idx = list(s)
    return [idx[i : i + batch] for i in range(0, len(idx) - batch + 1, batch)]


def test_sampler_is_distributed_sampler_with_drop_last_and_resume() -> None:
    n, batch = 23, 3
    for rank in range(2):
        s = ResumableBatchSampler(n, batch, rank=rank, world_size=2, seed=7)
        s.set_epoch(4)
        expected = _distributed_batches(n, 2, rank, batch, 7, 4)
        assert list(s) == expected and len(s) == len(expected) == s.steps_per_epoch == 4  # 12 per rank // 3
        s.set_epoch(4, start_step=3)
        assert list(s) == expected[3:] and len(s) == 1


def test_sampler_micro_batches_do_not_depend_on_the_process_split() -> None:
    """2 processes x accum 2 and 1 process x accum 4 train on the same micro-batches (shard r*accum+a)."""
    n, batch = 40, 2
    four = list(ResumableBatchSampler(n, batch, rank=0, world_size=1, accum=4, seed=3))
    per_rank = [
        list(ResumableBatchSampler(n, batch, rank=r, world_size=2, accum=2, seed=3)) for r in range(2)
    ]
    for step in range(len(four) // 4):
        assert (
            four[4 * step : 4 * step + 4]
            == per_rank[0][2 * step : 2 * step + 2] + per_rank[1][2 * step : 2 * step + 2]
        )


def test_cli_resolves_presets_paths_and_resume(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    for d in ("train2017", "val2017", "annotations"):
        (coco / d).mkdir(parents=True)
    for split in ("train", "val"):
        (coco / "annotations" / f"instances_{split}2017.json").write_text("{}")
    args = train.make_parser().parse_args(["--coco", str(coco), "--amp", "bf16", "--accum", "2"])
    cfg, resume = train.resolve(args)
    assert resume is None
    assert (cfg.preset, cfg.amp, cfg.accum, cfg.batch) == ("8x6", "bf16", 2, 6)
    assert cfg.train_ann == str(coco / "annotations" / "instances_train2017.json")
    assert cfg.val_images == str(coco / "val2017")
    assert train.main(["--ann", str(tmp_path / "missing.json"), "--images", str(coco), "--gpus", "0"]) == 2
    assert train.main(["--coco", str(coco), "--gpus", "0", "--preset", "tiny", "--crop", "200"]) == 2
    # --resume auto picks what last_checkpoint names, else the newest checkpoint file
    out = tmp_path / "run"
    out.mkdir()
    assert find_resume(out) is None
    (out / "iter_3.pth").write_bytes(b"x")
    (out / "epoch_1.pth").write_bytes(b"x")
    assert find_resume(out) == out / "epoch_1.pth"
    (out / "last_checkpoint").write_text("iter_3.pth\n")
    assert find_resume(out) == out / "iter_3.pth"


def test_log_truncation_and_curves(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    records = [{"type": "train", "epoch": 1, "iter": i, "loss": 10 / i, "det_loss": 9 / i, "pull_loss": 0.1,
                "push_loss": 0.0, "off_loss": 1.0} for i in range(1, 7)]  # fmt: skip
    records.append({"type": "val", "epoch": 1, "iter": 6, "AP": 0.1, "AP50": 0.3, "AP75": 0.05})
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "tra')  # torn last line
    assert len(read_log(log)) == 7
    truncate_log(log, 4)
    assert [r["iter"] for r in read_log(log)] == [1, 2, 3, 4]
    write_curves(log, tmp_path)
    for name in ("loss.png", "map.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.shape == (480, 900, 3)
