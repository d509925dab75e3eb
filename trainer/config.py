"""Training settings as one dataclass, with mmdet's CornerNet recipes as presets.

The presets are ``configs/cornernet/cornernet_hourglass104_mstest_{8x6,10x5,32x3}_210e_coco.py``
(``../shared/reference/cornernet_mmdet.md`` sections 4 and 6): HG-104, 511x511 random centre
crops, Adam lr 5e-4 without weight decay, grad-norm clip 35, linear warmup over 500 iterations from
lr/3, lr x0.1 after epoch 180 of 210, loss summed over both stacks, pull/push weights 0.1. The lr is
scaled by ``total batch / base_batch_size`` (mmdet's ``auto_scale_lr``), so a preset keeps its lr
on its own GPU count and scales linearly on any other.

``tiny`` is the CPU preset: the tiny hourglass, 191-px crops, a short schedule; it learns the
synthetic shapes set (``trainer.data.synthetic``) in minutes.

A config is plain data: it is saved in every checkpoint (``train_config``) and reloaded on resume;
nothing in it is ever executed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainer.model import ModelConfig, hg104, tiny

AMP_MODES = ("none", "bf16", "fp16")
MODELS = ("hg104", "tiny")
# crop_size + 1 must be a multiple of this (4 for the stem x 2^downsample_times of the hourglass).
_CROP_MULTIPLE = {"hg104": 4 * 2**5, "tiny": 4 * 2**3}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Data:
        train_ann, train_images: COCO-format training set (annotation file, image folder).
        val_ann, val_images: validation set for evaluation during training (``None``: no evaluation).
        limit: train on the first ``limit`` images only (smoke tests); ``None`` for all.
        crop_size: side of the square network input in pixels (mmdet: 511). ``crop + 1`` must divide
            by 4 x 2^depth so every hourglass level halves evenly: 128 k - 1 for HG-104 (383, 511...),
            32 k - 1 for the tiny model (127, 191, 255...).
        photometric: mmdet's ``PhotoMetricDistortion`` on or off.
        workers: DataLoader worker processes per training process (mmdet ``workers_per_gpu``).

    Batch:
        batch: images per process per forward (mmdet ``samples_per_gpu``).
        accum: forwards per optimiser step. The loss of each forward is mmdet's loss of one GPU's
            batch, so ``G`` GPUs with ``accum A`` train exactly like ``G x A`` GPUs (e.g. the 8x6
            recipe on 2 GPUs with ``accum 4``).

    Optimisation (mmdet's names and values):
        lr: Adam lr at ``base_batch_size`` images per step; no weight decay.
        base_batch_size, auto_scale_lr: the lr used is ``lr * total_batch / base_batch_size`` where
            ``total_batch = processes * batch * accum`` (when ``auto_scale_lr``).
        epochs, step_epochs, gamma: lr x ``gamma`` after each epoch in ``step_epochs``.
        warmup_iters, warmup_ratio: linear warmup from ``ratio * lr`` over the first iterations.
        grad_clip: max L2 norm of all gradients (``None``: no clipping).
        pull_weight, push_weight: associative-embedding loss weights.

    Speed:
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (fp16 with a dynamic loss scale) autocast.
        channels_last: NHWC memory format for model and images.
        sync_bn: BatchNorm statistics over all processes (CUDA only; mmdet does not use it).

    Run:
        out_dir: checkpoints, ``log.jsonl``, TensorBoard events and curves.
        seed: model initialisation, data order and augmentation.
        deterministic: deterministic cuDNN algorithms (slower) instead of autotuned ones.
        max_iters: stop after this many iterations in total (the schedule still follows ``epochs``).
        ckpt_interval: also checkpoint every N iterations (0: only at epoch ends).
        keep: keep the last K periodic checkpoints (0: keep all).
        eval_interval: evaluate every N epochs and after the last one (0: never).
        eval_limit: evaluate on the first N validation images only.
        log_interval: iterations per ``log.jsonl`` / TensorBoard record (values are averaged over them).
    """

    preset: str = "8x6"
    model: str = "hg104"
    # data
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    limit: int | None = None
    crop_size: int = 511
    photometric: bool = True
    workers: int = 3
    # batch
    batch: int = 6
    accum: int = 1
    # optimisation
    lr: float = 5e-4
    base_batch_size: int = 48
    auto_scale_lr: bool = True
    epochs: int = 210
    step_epochs: tuple[int, ...] = (180,)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    grad_clip: float | None = 35.0
    pull_weight: float = 0.1
    push_weight: float = 0.1
    # speed
    amp: str = "none"
    channels_last: bool = False
    sync_bn: bool = False
    # run
    out_dir: str = "work_dirs/cornernet_hg104_8x6"
    seed: int = 0
    deterministic: bool = False
    max_iters: int | None = None
    ckpt_interval: int = 0
    keep: int = 3
    eval_interval: int = 1
    eval_limit: int | None = None
    log_interval: int = 50

    def __post_init__(self) -> None:
        problems = []
        if self.model not in MODELS:
            problems.append(f"model must be one of {MODELS}, got {self.model!r}")
        if self.amp not in AMP_MODES:
            problems.append(f"--amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.model in MODELS and (self.crop_size + 1) % _CROP_MULTIPLE[self.model]:
            # Every hourglass level halves the stride-4 features: (crop + 1) / 4 must divide by 2^depth.
            m = _CROP_MULTIPLE[self.model]
            problems.append(
                f"--crop must be {m} k - 1 for the {self.model} model ({m - 1}, {2 * m - 1}, {4 * m - 1}...), got {self.crop_size}"
            )
        for name in ("batch", "accum", "epochs", "log_interval", "base_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "ckpt_interval", "keep", "eval_interval", "warmup_iters"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("limit", "max_iters", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be at least 1, got {value}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be positive or None, got {self.grad_clip}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the network input (the padded image, mmdet's ``pad_shape``)."""
        return (self.crop_size, self.crop_size)

    def model_config(self, num_classes: int) -> ModelConfig:
        """The architecture ``model`` names, with ``num_classes`` classes."""
        return (hg104 if self.model == "hg104" else tiny)(num_classes)

    def total_batch(self, world_size: int) -> int:
        """Images per optimiser step over all processes."""
        return world_size * self.batch * self.accum

    def scaled_lr(self, world_size: int) -> float:
        """mmdet ``auto_scale_lr``: ``lr * total_batch / base_batch_size``."""
        if not self.auto_scale_lr:
            return self.lr
        return self.lr * self.total_batch(world_size) / self.base_batch_size

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (lists for tuples): what checkpoints store."""
        d = dataclasses.asdict(self)
        d["step_epochs"] = list(self.step_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "step_epochs" in kw:
            kw["step_epochs"] = tuple(int(e) for e in kw["step_epochs"])
        return cls(**kw)


def _mmdet(samples_per_gpu: int, gpus: int) -> TrainConfig:
    """mmdet's HG-104 recipe for ``gpus x samples_per_gpu`` (base batch = their product)."""
    return TrainConfig(
        preset=f"{gpus}x{samples_per_gpu}",
        batch=samples_per_gpu,
        base_batch_size=gpus * samples_per_gpu,
        out_dir=f"work_dirs/cornernet_hg104_{gpus}x{samples_per_gpu}",
    )


PRESETS: dict[str, TrainConfig] = {
    "8x6": _mmdet(6, 8),
    "10x5": _mmdet(5, 10),
    "32x3": _mmdet(3, 32),
    # CPU: tiny hourglass, small crops (objects of the synthetic set stay at about their test
    # scale), a short schedule with the same shape as mmdet's (warmup, one step at ~86%).
    "tiny": TrainConfig(
        preset="tiny",
        model="tiny",
        crop_size=191,
        workers=1,
        batch=8,
        lr=2e-3,
        base_batch_size=8,
        epochs=14,
        step_epochs=(12,),
        warmup_iters=20,
        out_dir="work_dirs/cornernet_tiny",
        keep=2,
        eval_interval=7,
        log_interval=10,
    ),
}


def preset(name: str) -> TrainConfig:
    """The preset called ``name`` (``8x6``, ``10x5``, ``32x3`` or ``tiny``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
