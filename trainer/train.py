"""``python -m trainer.train``: train CornerNet the mmdet way on 1..N GPUs and nodes, resumable.

Examples::

    python -m trainer.train --gpus 8 --coco data/coco                          # mmdet's 8x6 recipe
    python -m trainer.train --gpus 2 --accum 4 --coco data/coco                # the same recipe on 2 GPUs
    python -m trainer.train --gpus 8 --coco data/coco --resume auto            # continue after a crash
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m trainer.train --preset 32x3 --coco data/coco                        # 4 nodes
    python -m trainer.data.synthetic --out-dir data/synthetic
    python -m trainer.train --preset tiny --gpus 0 --coco data/synthetic       # CPU, minutes

Checkpoints (``OUT_DIR/epoch_N.pth``) load directly in ``python -m runtime.eval`` and the exporters.
``OUT_DIR/log.jsonl``, ``OUT_DIR/tb/`` (TensorBoard), ``OUT_DIR/loss.png`` and ``map.png`` show the run.

Exit codes: 0 done, 1 the loss became NaN/inf (training stops, the last good checkpoint is kept),
2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from runtime.errors import EXIT_BAD_INPUT, UserError
from trainer import safe_load
from trainer.config import AMP_MODES, PRESETS, TrainConfig, preset
from trainer.distributed import launch, torchrun_env
from trainer.loop import find_resume, run_worker

# CLI option (argparse dest) -> TrainConfig field, for options that override the preset when given.
_OVERRIDES = {
    "limit": "limit",
    "crop": "crop_size",
    "photometric": "photometric",
    "workers": "workers",
    "batch": "batch",
    "accum": "accum",
    "lr": "lr",
    "scale_lr": "auto_scale_lr",
    "epochs": "epochs",
    "amp": "amp",
    "channels_last": "channels_last",
    "sync_bn": "sync_bn",
    "deterministic": "deterministic",
    "out_dir": "out_dir",
    "seed": "seed",
    "max_iters": "max_iters",
    "ckpt_interval": "ckpt_interval",
    "keep": "keep",
    "eval_interval": "eval_interval",
    "eval_limit": "eval_limit",
    "log_interval": "log_interval",
}


DEFAULT_COCO = "data/coco"  # COCO root used when no data flag is given


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="mmdet recipe GPUSxIMAGES (8x6 default: HG-104, 6 images per GPU on 8 GPUs, lr 5e-4) or tiny (CPU)",
    )
    data = p.add_argument_group("data (COCO format)")
    data.add_argument(
        "--coco",
        metavar="DIR",
        help="COCO layout: train on DIR/train2017, evaluate on DIR/val2017 (annotations/instances_*.json); "
        f"default {DEFAULT_COCO} when it exists and no other data is given",
    )
    data.add_argument("--ann", metavar="FILE", help="training annotation file (with --images)")
    data.add_argument("--images", metavar="DIR", help="training image folder")
    data.add_argument("--val-ann", metavar="FILE", help="validation annotation file (with --val-images)")
    data.add_argument("--val-images", metavar="DIR", help="validation image folder")
    data.add_argument("--limit", type=int, metavar="N", help="train on the first N images only (0: all)")
    data.add_argument(
        "--crop", type=int, metavar="PX", help="network input side (511 for HG-104; 32k-1 for tiny)"
    )
    data.add_argument(
        "--photometric", action=argparse.BooleanOptionalAction, default=None, help="mmdet's colour distortion"
    )
    data.add_argument("--workers", type=int, metavar="N", help="DataLoader workers per process")
    run = p.add_argument_group("processes and batch")
    run.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="GPUs on this node, one process each (default: all visible; 0 = CPU). Under torchrun it is ignored",
    )
    run.add_argument(
        "--procs", type=int, default=1, metavar="N", help="CPU processes with --gpus 0 (gloo DDP)"
    )
    run.add_argument(
        "--batch", type=int, metavar="N", help="images per GPU per forward (mmdet samples_per_gpu)"
    )
    run.add_argument(
        "--accum", type=int, metavar="N", help="forwards per step: N GPUs x --accum A trains like N*A GPUs"
    )
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, metavar="N", help="epochs (mmdet: 210, lr step after 180)")
    opt.add_argument(
        "--lr", type=float, help="Adam lr at the preset's batch (scaled by total batch / base batch)"
    )
    opt.add_argument(
        "--scale-lr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mmdet auto_scale_lr (default on)",
    )
    opt.add_argument("--amp", choices=AMP_MODES, help="autocast precision (fp16 uses a dynamic loss scale)")
    opt.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC memory format"
    )
    opt.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BatchNorm statistics across GPUs",
    )
    opt.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic cuDNN (slower)",
    )
    opt.add_argument("--seed", type=int, help="initialisation, data order and augmentation seed")
    out = p.add_argument_group("checkpoints, evaluation, logs")
    out.add_argument(
        "--out-dir",
        metavar="DIR",
        help="checkpoints and logs (default: work_dirs/cornernet_hg104_8x6, ..._tiny: per preset)",
    )
    out.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue exactly from a checkpoint; auto: the newest in --out-dir (a fresh start if there is none)",
    )
    out.add_argument("--ckpt-interval", type=int, metavar="N", help="also checkpoint every N iterations")
    out.add_argument("--keep", type=int, metavar="K", help="keep the last K checkpoints (0: all)")
    out.add_argument("--eval-interval", type=int, metavar="N", help="evaluate every N epochs (0: never)")
    out.add_argument(
        "--eval-limit", type=int, metavar="N", help="evaluate on the first N validation images (0: all)"
    )
    out.add_argument("--log-interval", type=int, metavar="N", help="iterations per log record")
    out.add_argument(
        "--max-iters", type=int, metavar="N", help="stop after N iterations, schedule unchanged (0: no limit)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _data_paths(args: argparse.Namespace) -> dict[str, str]:
    """Train/val paths given on the command line (validated), as TrainConfig fields."""
    paths: dict[str, str] = {}
    coco = args.coco
    if coco is None and args.ann is None and not args.resume and Path(DEFAULT_COCO).is_dir():
        coco = DEFAULT_COCO  # the README's `python -m trainer.train --gpus 8`
    if coco:
        root = Path(coco)
        paths["train_ann"] = str(root / "annotations" / "instances_train2017.json")
        paths["train_images"] = str(root / "train2017")
        val_ann, val_images = root / "annotations" / "instances_val2017.json", root / "val2017"
        if val_ann.is_file() and val_images.is_dir():
            paths["val_ann"], paths["val_images"] = str(val_ann), str(val_images)
    if (args.ann is None) != (args.images is None):
        raise UserError("--ann and --images go together: the annotation file and its image folder")
    if args.ann:
        paths["train_ann"], paths["train_images"] = args.ann, args.images
    if (args.val_ann is None) != (args.val_images is None):
        raise UserError("--val-ann and --val-images go together: the annotation file and its image folder")
    if args.val_ann:
        paths["val_ann"], paths["val_images"] = args.val_ann, args.val_images
    return paths


def _check_paths(cfg: TrainConfig) -> None:
    if not cfg.train_ann or not cfg.train_images:
        raise UserError(
            f"no training set: put COCO in {DEFAULT_COCO} (annotations/ + train2017/), or pass --coco DIR or --ann FILE --images DIR"
        )
    for name, path, is_dir in (
        ("training annotations", cfg.train_ann, False),
        ("training images", cfg.train_images, True),
        ("validation annotations", cfg.val_ann, False),
        ("validation images", cfg.val_images, True),
    ):
        if path is not None and not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            raise UserError(
                f"{path}: {name} not found; check --coco / --ann / --images / --val-ann / --val-images"
            )


def saved_config(path: Path) -> TrainConfig:
    """The ``train_config`` of a training checkpoint, read without loading its tensors (mmap) or running code."""
    obj = safe_load.load(path, mmap=True).obj  # unreadable files: one-line UserError naming what is wrong
    if not isinstance(obj, dict) or not isinstance(obj.get("train_config"), dict):
        raise UserError(
            f"{path}: not a training checkpoint of this trainer (no train_config); pass another --resume"
        )
    return TrainConfig.from_dict(obj["train_config"])


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The run's config and the checkpoint to resume: preset (or the checkpoint's config), then the options given."""
    overrides: dict[str, Any] = {
        f: getattr(args, a) for a, f in _OVERRIDES.items() if getattr(args, a) is not None
    }
    for name in ("limit", "max_iters", "eval_limit"):  # 0 lifts a limit (e.g. one saved in a checkpoint)
        if overrides.get(name) == 0:
            overrides[name] = None
    overrides.update(_data_paths(args))
    base = preset(args.preset or "8x6")
    resume: Path | None = None
    if args.resume == "auto":
        out_dir = Path(overrides.get("out_dir", base.out_dir))
        resume = find_resume(out_dir)
        if resume is None:
            print(f"resume   nothing to resume in {out_dir}; starting a new run", file=sys.stderr)
        overrides.setdefault("out_dir", str(out_dir))
    elif args.resume:
        resume = Path(args.resume)
        if not resume.is_file():
            raise UserError(f"{resume}: checkpoint not found; pass --resume PATH or --resume auto")
        overrides.setdefault("out_dir", str(resume.parent))
    elif find_resume(Path(overrides.get("out_dir", base.out_dir))) is not None:
        print(
            f"warning: {overrides.get('out_dir', base.out_dir)} holds checkpoints of an earlier run; starting a new "
            "run there replaces its log and, with --keep, its checkpoints (pass --resume auto to continue it)",
            file=sys.stderr,
        )
    if resume is not None:
        base = saved_config(resume)
        if args.preset and args.preset != base.preset:
            print(
                f"warning: --preset {args.preset} ignored: resuming the {base.preset} run of {resume}",
                file=sys.stderr,
            )
        changed = {k: v for k, v in overrides.items() if getattr(base, k) != v}
        for k, v in changed.items():
            print(f"resume   {k}: {getattr(base, k)} -> {v}", file=sys.stderr)
    try:
        cfg = base.replace(**overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_paths(cfg)
    return cfg, resume


def train(
    cfg: TrainConfig, gpus: int = 0, procs: int = 1, resume: str | Path | None = None, progress: bool = True
) -> int:
    """Train ``cfg`` on ``gpus`` GPUs (0: the CPU with ``procs`` processes), resuming from ``resume`` if given.

    The library form of ``python -m trainer.train``; returns its exit code. Checkpoints, logs and curves go
    to ``cfg.out_dir`` (``epoch_N.pth`` after each epoch).
    """
    _check_paths(cfg)
    return launch(run_worker, gpus, procs, (cfg, str(resume) if resume else None, progress))


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        cfg, resume = resolve(args)
        gpus = args.gpus if args.gpus is not None else torch.cuda.device_count()
        if gpus < 0:
            raise UserError(f"--gpus must be 0 (CPU) or more, got {gpus}")
        if gpus > 0 and args.procs != 1:
            raise UserError("--procs is for CPU runs (--gpus 0); with GPUs there is one process per GPU")
        if gpus == 0 and not torchrun_env() and cfg.model == "hg104":
            print(
                "warning: training HG-104 on the CPU is impractically slow; use GPUs or --preset tiny",
                file=sys.stderr,
            )
        return train(cfg, gpus, args.procs, resume, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
