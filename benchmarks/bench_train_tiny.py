"""Does training work? The tiny preset on the synthetic shapes set, on the CPU: COCO mAP before and after.

Generates the synthetic set (160 train / 40 val images, seed 0) if it is not there, evaluates the
freshly initialised tiny CornerNet (the exact weights training starts from), trains it with the
``tiny`` preset for a fixed number of epochs (the budget), and evaluates it again, all through the
same code as ``python -m trainer.train`` and ``python -m runtime.eval``.

    python benchmarks/bench_train_tiny.py                 # ~5-10 min on 2 shared cores
    python benchmarks/bench_train_tiny.py --epochs 14     # the preset's full schedule

One thread by default: on a shared 2-core machine two OpenMP threads per process made each step
4-10x slower than one (they spin while the other core is busy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.coco import load_coco_set  # noqa: E402
from trainer.config import preset  # noqa: E402
from trainer.data import synthetic  # noqa: E402
from trainer.distributed import DistInfo  # noqa: E402
from trainer.evaluation import evaluate_model  # noqa: E402
from trainer.loop import Trainer  # noqa: E402


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=ROOT / "data" / "synthetic", help="synthetic set (made if missing)"
    )
    p.add_argument("--out-dir", type=Path, default=ROOT / "work_dirs" / "bench_train_tiny", help="run folder")
    p.add_argument("--epochs", type=int, default=6, help="training budget in epochs of 20 steps x 8 images")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--report", type=Path, help="also write the numbers as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "annotations" / "instances_val2017.json").is_file():
        synthetic.generate(args.data, 160, 40, seed=0)
    train_ann = args.data / "annotations" / "instances_train2017.json"
    cfg = preset("tiny").replace(
        train_ann=str(train_ann),
        train_images=str(args.data / "train2017"),
        val_ann=str(args.data / "annotations" / "instances_val2017.json"),
        val_images=str(args.data / "val2017"),
        out_dir=str(args.out_dir),
        epochs=args.epochs,
        # the preset's step at ~86% of the schedule, whatever the budget
        step_epochs=(max(1, round(args.epochs * 12 / 14)),),
        eval_interval=args.epochs,
    )
    val = load_coco_set(cfg.val_ann, cfg.val_images)  # type: ignore[arg-type]

    # Trainer.train() is before_train + the epoch loop + after_train; run it in parts so the
    # initialised model can be evaluated before the first step.
    trainer = Trainer(cfg, DistInfo(), progress=True, tensorboard=False)
    trainer.before_train()
    t0 = time.perf_counter()
    before = evaluate_model(trainer.model, trainer.meta, val)
    eval_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    while trainer.epoch < cfg.epochs:
        trainer.before_epoch()
        trainer.train_in_epoch()
        trainer.after_epoch()
    trainer.after_train()
    trainer.observer.close()
    train_s = time.perf_counter() - t0
    after = trainer.metrics
    assert before is not None and after

    steps, images = trainer.iteration, trainer.iteration * cfg.total_batch(1)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)"
    print(
        f"\nbench_train_tiny: preset tiny, {cfg.crop_size}px crops, batch {cfg.batch}, lr {cfg.lr:g}; {machine}"
    )
    print(
        f"budget   {cfg.epochs} epochs = {steps} steps = {images} images in {train_s / 60:.1f} min (incl. final eval)"
    )
    print(
        f"{'':10s}{'AP':>7s}{'AP50':>7s}{'AP75':>7s}{'AR100':>7s}   (COCO box, %, {len(val.images)} val images)"
    )
    for name, s in (("untrained", before), ("trained", after)):
        print(f"{name:10s}" + "".join(f"{100 * s[k]:7.1f}" for k in ("AP", "AP50", "AP75", "AR100")))
    print(
        f"logs     {args.out_dir / 'log.jsonl'}, curves {args.out_dir / 'loss.png'}, {args.out_dir / 'map.png'}"
    )
    if args.report:
        report = {"untrained": before, "trained": after, "steps": steps, "images": images, "train_s": train_s,
                  "eval_untrained_s": eval_s, "machine": machine, "config": cfg.to_dict()}  # fmt: skip
        args.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
