"""The training loop: mmdet's CornerNet recipe in YOLOX-style stages.

``Trainer.train()`` runs ``before_train`` (data, model, optimiser, resume, outputs), then per epoch
``before_epoch`` / ``train_in_epoch`` (``train_one_iter`` per step) / ``after_epoch`` (checkpoint,
evaluation, curves), then ``after_train``.

One step (``train_one_iter``): lr from the schedule; ``accum`` forwards of ``batch`` images, each
supervised on every stack with mmdet's losses (``trainer.losses.corner_losses``: one GPU's loss in
mmdet) and backpropagated as ``loss / accum``; DDP averages the gradients over processes, so the
gradient is the mean of ``processes x accum`` per-GPU losses, as mmdet's 8 GPUs give; the loss parts
are averaged over processes for logging (a non-finite loss stops the run before the step is taken);
gradients unscaled (fp16), clipped to norm 35, Adam.

BatchNorm running statistics are updated by the first micro-batch of each step only, and DDP copies
rank 0's to the others before each forward; so they follow the first micro-batch of rank 0 whatever
the split between processes and ``accum``, and 2 processes x ``accum 1`` give the same model as
1 process x ``accum 2`` (batch statistics, used for training, are per micro-batch either way).

Checkpoints (``OUT_DIR/epoch_N.pth`` after epoch N, ``iter_I.pth`` every ``ckpt_interval`` steps;
``OUT_DIR/last_checkpoint`` names the newest) are our format (``trainer.checkpoint``), so
``runtime.eval`` and the exporters take them as they are. Training state, in ``extra``:

``optimizer``, ``scaler`` (state dicts), ``scheduler`` (:class:`WarmupStepSchedule` settings),
``epoch`` (0-based epoch in progress = epochs completed when ``sampler.step`` is 0), ``iteration``
(optimiser steps completed), ``sampler`` (``epoch, step, seed, shards, batch, dataset_len,
steps_per_epoch``: the data position), ``rng`` (per rank: ``python, numpy, torch, cuda`` states),
``log_window`` (partial log averages), ``metrics`` / ``eval_iteration`` (the last evaluation
and the step it was made at), ``train_config``
(:meth:`TrainConfig.to_dict`), ``world_size``, ``torch_version``. Everything loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from runtime.atomic_write import write_text_atomic
from runtime.coco import CocoSet, load_coco_set
from runtime.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, UserError
from runtime.meta import ModelMeta
from trainer.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from trainer.config import TrainConfig
from trainer.data.coco import CocoDetection
from trainer.data.loader import ResumableBatchSampler, targets_to, train_loader
from trainer.data.transforms import TrainTransformConfig, train_transform
from trainer.distributed import DistInfo
from trainer.evaluation import evaluate_model
from trainer.losses import corner_losses
from trainer.model import CornerNet, HeadOutputs, ModelConfig
from trainer.observe import LOSS_KEYS, NullObserver, Observer
from trainer.schedule import WarmupStepSchedule

LAST_CHECKPOINT = "last_checkpoint"
CHECKPOINT_NAME = re.compile(r"(epoch|iter)_\d+\.pth")
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(RuntimeError):
    """The loss (or, without fp16 loss scaling, the gradient norm) became NaN or infinite."""

    def __init__(self, iteration: int, epoch: int, values: dict[str, float], what: str = "loss") -> None:
        self.iteration, self.epoch, self.values, self.what = iteration, epoch, values, what
        self.last_checkpoint: Path | None = None
        super().__init__()

    def __str__(self) -> str:
        parts = " ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        last = (
            f"the last good checkpoint is {self.last_checkpoint}; resume it with --resume auto (e.g. with a lower --lr, or --amp bf16 instead of fp16)"
            if self.last_checkpoint
            else "no checkpoint was written before it; lower --lr or check the data"
        )
        return (
            f"{self.what} is not finite at iteration {self.iteration} (epoch {self.epoch}; {parts}); "
            f"training stopped before applying this step; {last}"
        )


class StackHeads(nn.Module):
    """``forward`` = ``CornerNet.forward_stacks`` (heads of every stack), so DDP hooks the training forward."""

    def __init__(self, model: CornerNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> list[HeadOutputs]:
        return self.model.forward_stacks(images)


@contextlib.contextmanager
def running_stats(bn_layers: list[_BatchNorm], update: bool) -> Iterator[None]:
    """With ``update=False``, BatchNorm layers normalise with batch statistics but leave their running ones alone."""
    if update:
        yield
        return
    for m in bn_layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bn_layers:
            m.track_running_stats = True


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as plain lists and tensors (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the model initialisation uses torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_resume(out_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``out_dir``: the one ``last_checkpoint`` names, else the newest file."""
    out_dir = Path(out_dir)
    marker = out_dir / LAST_CHECKPOINT
    if marker.is_file():
        path = out_dir / marker.read_text().strip()
        if path.is_file():
            return path
    candidates = [p for p in out_dir.glob("*.pth") if CHECKPOINT_NAME.fullmatch(p.name)]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


class LogWindow:
    """Sums of the logged values since the last record (mmdet logs means over ``log_interval``)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.sums, self.count = dict(d.get("sums", {})), int(d.get("count", 0))


def _as_float(heads: HeadOutputs) -> HeadOutputs:
    """Heads in float32: the losses (logs, powers, sums over 128 x 128 x 80) run outside autocast."""
    return HeadOutputs(*(t.float() for t in heads))


class Trainer:
    """Trains a CornerNet as described by a :class:`TrainConfig`, on one process of a DDP job.

    Args:
        cfg: the run.
        info: this process (rank, world size, device); ``DistInfo()`` for one CPU process.
        resume: checkpoint to continue from exactly (``None``: a fresh run).
        progress: show the progress bar (rank 0).
        tensorboard: write TensorBoard events (rank 0).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        info: DistInfo | None = None,
        *,
        resume: str | Path | None = None,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.cfg = cfg
        self.info = info or DistInfo()
        self.device = self.info.device
        self.resume_path = Path(resume) if resume else None
        self.show_progress = progress
        self.tensorboard = tensorboard
        self.out_dir = Path(cfg.out_dir)
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.observer: NullObserver = NullObserver()
        self.window = LogWindow()
        self.metrics: dict[str, float] = {}
        self.iteration = 0  # optimiser steps completed
        self.epoch = 0  # 0-based epoch in progress
        self.step_in_epoch = 0  # steps of self.epoch completed
        self.last_saved: int | None = None
        self.last_checkpoint: Path | None = None
        self.last_eval: int | None = None
        self.stop = False

    # ------------------------------------------------------------------ stages

    def train(self) -> None:
        """The whole run. Raises :class:`NonFiniteLoss` (after logging it) when the loss diverges."""
        self.before_train()
        try:
            while self.epoch < self.cfg.epochs and not self.stop:
                self.before_epoch()
                self.train_in_epoch()
                self.after_epoch()
            self.after_train()
        except NonFiniteLoss as e:
            e.last_checkpoint = self.last_checkpoint
            self.observer.event("nonfinite", epoch=e.epoch, iter=e.iteration, what=e.what, values=e.values)
            raise
        finally:
            self.observer.close()

    def before_train(self) -> None:
        """Data, model, optimiser and schedule; the resumed state; rank 0's outputs."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = cfg.deterministic
        self.setup_data()
        self.setup_model(self.num_classes)
        self.schedule = WarmupStepSchedule(
            base_lr=cfg.scaled_lr(self.info.world_size),
            iters_per_epoch=self.sampler.steps_per_epoch,
            step_epochs=cfg.step_epochs,
            gamma=cfg.gamma,
            warmup_iters=cfg.warmup_iters,
            warmup_ratio=cfg.warmup_ratio,
        )
        self.total_iters = cfg.epochs * self.schedule.iters_per_epoch
        if cfg.max_iters is not None:
            self.total_iters = min(self.total_iters, cfg.max_iters)
        if self.resume_path is not None:
            self.load(self.resume_path)
        self.stop = cfg.max_iters is not None and self.iteration >= cfg.max_iters
        positions = self.info.all_gather_object(self.iteration)
        if len(set(positions)) > 1:  # e.g. --resume auto on nodes that do not share --out-dir
            raise UserError(
                f"the processes start from different iterations {sorted(set(positions))}; "
                "--out-dir must be on a filesystem every node shares (or pass the same --resume PATH to all)"
            )
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Temp files of runtime.atomic_write (".NAME.XXXX.tmp") left by a run killed while saving.
            for pattern in (".*.pth.*.tmp", f".{LAST_CHECKPOINT}.*.tmp", ".log.jsonl.*.tmp", ".*.png.*.tmp"):
                for stale in self.out_dir.glob(pattern):
                    stale.unlink(missing_ok=True)
            self.observer = Observer(
                self.out_dir,
                self.total_iters,
                self.iteration,
                cfg.epochs,
                self.show_progress,
                self.tensorboard,
            )
            self.observer.write(self.describe())
            self.observer.event(
                "resume" if self.resume_path else "start",
                epoch=self.epoch + 1,
                iter=self.iteration,
                checkpoint=str(self.resume_path) if self.resume_path else None,
                world_size=self.info.world_size,
                config=cfg.to_dict(),
            )

    def before_epoch(self) -> None:
        """Point dataset and sampler at the epoch (and at the step to resume from); fork the workers."""
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        self.loader = train_loader(
            self.train_set,
            self.sampler,
            self.cfg.input_size,
            self.num_classes,
            self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_in_epoch(self) -> None:
        """Steps until the epoch ends or ``max_iters`` is reached, timing data wait and step."""
        batches = iter(self.loader)
        accum = self.cfg.accum
        t_last = time.perf_counter()
        while self.step_in_epoch < self.sampler.steps_per_epoch and not self.stop:
            micro_batches = [next(batches) for _ in range(accum)]
            t_data = time.perf_counter()
            stats = self.train_one_iter(micro_batches)
            t_done = time.perf_counter()
            self.step_in_epoch += 1
            self.after_iter({**stats, "data_s": t_data - t_last, "iter_s": t_done - t_last})
            t_last = time.perf_counter()
        del batches  # stops the workers now rather than at garbage collection

    def train_one_iter(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over ``accum`` micro-batches; returns the loss parts (mean over all
        micro-batches of all processes), the lr and the gradient norm before clipping."""
        lr = self.schedule.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        for i, batch in enumerate(micro_batches):
            images = batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = targets_to(batch, self.device)
            with self.grad_sync(last=i == n - 1):
                with self.autocast(), running_stats(self.bn_layers, update=i == 0):
                    stacks = self.train_model(images)
                losses = corner_losses(
                    [_as_float(h) for h in stacks], targets, self.cfg.pull_weight, self.cfg.push_weight
                )
                self.scaler.scale(losses["loss"] / n).backward()
            sums += torch.stack([losses[k].detach() for k in LOSS_KEYS])
        stats = dict(zip(LOSS_KEYS, self.info.all_reduce_mean(sums / n).tolist(), strict=True))
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLoss(self.iteration + 1, self.epoch + 1, stats)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or math.inf))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16 skips such steps itself
            raise NonFiniteLoss(
                self.iteration + 1, self.epoch + 1, {**stats, "grad_norm": grad_norm}, "gradient norm"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return {**stats, "lr": lr, "grad_norm": grad_norm}

    def after_iter(self, stats: dict[str, float]) -> None:
        """Progress bar, log record every ``log_interval`` steps, checkpoint every ``ckpt_interval`` steps."""
        cfg = self.cfg
        img_s = cfg.total_batch(self.info.world_size) / max(stats["iter_s"], 1e-9)
        self.window.add({**stats, "img_s": img_s})
        self.observer.progress(self.iteration, self.epoch + 1, {**stats, "img_s": img_s})
        if self.iteration % cfg.log_interval == 0:
            record = self.window.mean()
            record["eta_s"] = record["iter_s"] * (self.total_iters - self.iteration)
            if self.device.type == "cuda":
                record["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.observer.train({"epoch": self.epoch + 1, "iter": self.iteration, **record})
            self.window.reset()
        if cfg.max_iters is not None and self.iteration >= cfg.max_iters:
            self.stop = True
        epoch_end = self.step_in_epoch == self.sampler.steps_per_epoch
        if cfg.ckpt_interval and self.iteration % cfg.ckpt_interval == 0 and not epoch_end:
            self.save(f"iter_{self.iteration}.pth")

    def after_epoch(self) -> None:
        """Checkpoint ``epoch_N.pth``, evaluate every ``eval_interval`` epochs, redraw the curves."""
        if self.step_in_epoch < self.sampler.steps_per_epoch:
            return  # stopped inside the epoch (max_iters): after_train saves
        self.epoch += 1
        self.step_in_epoch = 0
        self.save(f"epoch_{self.epoch}.pth")
        cfg = self.cfg
        if cfg.eval_interval and (self.epoch % cfg.eval_interval == 0 or self.epoch == cfg.epochs):
            self.evaluate()
        self.observer.curves()

    def after_train(self) -> None:
        """Checkpoint and evaluate the final model when the last epoch end did not already."""
        if self.last_saved != self.iteration:
            self.save(f"iter_{self.iteration}.pth")
        if self.cfg.eval_interval and self.last_eval != self.iteration and self.val_set is not None:
            self.evaluate()
        self.observer.event("end", epoch=self.epoch + (self.step_in_epoch > 0), iter=self.iteration)

    # ------------------------------------------------------------------ setup

    def setup_data(self) -> None:
        """Training set with mmdet's train pipeline, this process's sampler, the validation set."""
        cfg = self.cfg
        if not cfg.train_ann or not cfg.train_images:
            raise UserError("no training set: pass --coco DIR or --ann FILE --images DIR")
        transform = train_transform(
            TrainTransformConfig(
                photometric=cfg.photometric, crop_size=cfg.input_size, input_size=cfg.input_size
            )
        )
        self.dataset = CocoDetection(cfg.train_ann, cfg.train_images, transform, seed=cfg.seed)
        n = len(self.dataset) if cfg.limit is None else min(cfg.limit, len(self.dataset))
        self.train_set = self.dataset if n == len(self.dataset) else Subset(self.dataset, range(n))
        self.num_classes = self.dataset.num_classes
        self.meta = ModelMeta(classes=self.dataset.classes, mean=transform.cfg.mean, std=transform.cfg.std)
        try:
            self.sampler = ResumableBatchSampler(
                n, cfg.batch, self.info.rank, self.info.world_size, cfg.accum, cfg.seed, shuffle=True
            )
        except ValueError as e:
            raise UserError(
                f"{cfg.train_ann}: {e}; use fewer processes, a smaller --batch or more images"
            ) from None
        self.val_set: CocoSet | None = None
        if cfg.val_ann and cfg.val_images and cfg.eval_interval:
            self.val_set = load_coco_set(cfg.val_ann, cfg.val_images)

    def setup_model(self, num_classes: int) -> None:
        """Model (+ SyncBN, channels-last, DDP), Adam, the loss scaler."""
        cfg = self.cfg
        self.model_config: ModelConfig = cfg.model_config(num_classes)
        model = CornerNet(self.model_config)
        if cfg.sync_bn:
            if self.device.type != "cuda":
                raise UserError(
                    "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU implementation)"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.bn_layers = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.train_model: nn.Module = StackHeads(self.model)
        if self.info.distributed:
            cuda = self.device.type == "cuda"
            self.train_model = DistributedDataParallel(
                self.train_model,
                device_ids=[self.device.index] if cuda else None,
                output_device=self.device.index if cuda else None,
                gradient_as_bucket_view=True,
            )
        # mmdet: Adam, no weight decay. On CUDA the fused kernel does the same update in one launch.
        self.optimizer = torch.optim.Adam(
            self.params,
            lr=cfg.scaled_lr(self.info.world_size),
            weight_decay=0.0,
            fused=True if self.device.type == "cuda" else None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

    def grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients only on the last micro-batch of a step."""
        if last or not isinstance(self.train_model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def autocast(self) -> torch.autocast:
        """The forward's autocast (disabled for ``amp none``)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        )

    def describe(self) -> str:
        """What is being trained, on what, with which batch and lr: the run's first lines."""
        cfg, w = self.cfg, self.info.world_size
        n_params = sum(p.numel() for p in self.params) / 1e6
        where = f"{w} GPU(s)" if self.device.type == "cuda" else f"{w} CPU process(es)"
        lines = [
            f"train    {cfg.model} ({n_params:.1f} M parameters, {self.num_classes} classes) preset {cfg.preset}, "
            f"{cfg.crop_size}x{cfg.crop_size} crops, amp {cfg.amp}"
            + (", channels-last" if cfg.channels_last else "")
            + (", sync-bn" if cfg.sync_bn else ""),
            f"data     {cfg.train_ann}: {len(self.train_set)} images, {self.sampler.steps_per_epoch} steps/epoch x "
            f"{cfg.epochs} epochs = {cfg.epochs * self.sampler.steps_per_epoch} steps"
            + (f" (stopping at {cfg.max_iters})" if cfg.max_iters else ""),
            f"batch    {where} x {cfg.batch} images x {cfg.accum} accum = {cfg.total_batch(w)} per step; "
            f"lr {self.schedule.base_lr:.3g} (= {cfg.lr:g} x {cfg.total_batch(w)}/{cfg.base_batch_size})",
            f"out      {self.out_dir}",
        ]
        if self.resume_path:
            lines.append(f"resume   {self.resume_path} at epoch {self.epoch + 1}, iteration {self.iteration}")
        if cfg.total_batch(w) != cfg.base_batch_size:
            lines.append(
                f"note     the {cfg.preset} recipe has {cfg.base_batch_size} images per step; with {cfg.total_batch(w)} "
                f"the lr is scaled linearly (for mmdet's exact recipe use --accum {max(1, cfg.base_batch_size // (w * cfg.batch))})"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> None:
        """COCO stats of the current model on the validation set, logged by rank 0 (all ranks take part)."""
        if self.val_set is None:
            return
        t0 = time.perf_counter()
        stats = evaluate_model(
            self.model,
            self.meta,
            self.val_set,
            info=self.info,
            limit=self.cfg.eval_limit,
            progress=self.show_progress,
        )
        self.last_eval = self.iteration
        if stats is not None:
            self.metrics = stats
            epoch = self.epoch + (self.step_in_epoch > 0)
            self.observer.val(
                {"epoch": epoch, "iter": self.iteration, **stats, "eval_s": time.perf_counter() - t0}
            )

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str) -> None:
        """Write ``OUT_DIR/name`` (rank 0), point ``last_checkpoint`` at it, drop the oldest beyond ``keep``.

        Every process must call it (the RNG states of all ranks are gathered).
        """
        rng = self.info.all_gather_object(rng_state(self.device))
        self.last_saved = self.iteration
        if not self.info.is_main:
            return
        path = self.out_dir / name
        save_checkpoint(
            path,
            self.model,
            self.model_config,
            self.meta,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            iteration=self.iteration,
            sampler={
                "epoch": self.epoch,
                "step": self.step_in_epoch,
                "seed": self.cfg.seed,
                "shards": self.sampler.num_shards,
                "batch": self.cfg.batch,
                "dataset_len": len(self.train_set),
                "steps_per_epoch": self.sampler.steps_per_epoch,
            },
            rng=rng,
            log_window=self.window.state_dict(),
            metrics=dict(self.metrics),
            eval_iteration=self.last_eval,
            train_config=self.cfg.to_dict(),
            world_size=self.info.world_size,
            torch_version=str(torch.__version__),
        )
        # The marker is written only once the checkpoint is complete.
        write_text_atomic(
            self.out_dir / LAST_CHECKPOINT, name + "\n", "free disk space or choose another --out-dir"
        )
        self.last_checkpoint = path
        self.observer.event(
            "checkpoint", epoch=self.epoch + (self.step_in_epoch > 0), iter=self.iteration, path=str(path)
        )
        self.prune()

    def prune(self) -> None:
        """Keep the ``keep`` newest periodic checkpoints (by write time)."""
        if self.cfg.keep <= 0:
            return
        ckpts = sorted(
            (p for p in self.out_dir.glob("*.pth") if CHECKPOINT_NAME.fullmatch(p.name)),
            key=lambda p: p.stat().st_mtime_ns,
        )
        for old in ckpts[: -self.cfg.keep]:
            if old != self.last_checkpoint:
                old.unlink(missing_ok=True)

    def load(self, path: Path) -> None:
        """Continue from a training checkpoint: weights, optimiser, scaler, position, RNG, log window."""
        ckpt = load_checkpoint(path)
        extra = ckpt.extra
        if "optimizer" not in extra or "sampler" not in extra:
            raise UserError(
                f"{path}: holds weights but no training state (optimizer, data position), so it cannot be resumed"
            )
        if not isinstance(extra["optimizer"], dict) or not isinstance(extra["sampler"], dict):
            raise UserError(
                f"{path}: its training state is not the dicts this trainer writes; pass another --resume"
            )
        load_state_dict_checked(self.model, ckpt.state_dict, str(path))
        try:
            self.optimizer.load_state_dict(extra["optimizer"])
            if self.scaler.is_enabled() and extra.get("scaler"):
                self.scaler.load_state_dict(extra["scaler"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # another model's or a damaged state
            raise UserError(
                f"{path}: its optimizer state does not fit this model ({type(e).__name__}: {str(e)[:100]}); pass another --resume"
            ) from None
        s = extra["sampler"]
        same_order = (s["seed"], s["shards"], s["batch"], s["dataset_len"]) == (
            self.cfg.seed,
            self.sampler.num_shards,
            self.cfg.batch,
            len(self.train_set),
        )
        if same_order:
            self.epoch, self.step_in_epoch, self.iteration = s["epoch"], s["step"], int(extra["iteration"])
            self.window.load_state_dict(extra.get("log_window", {}))
        else:
            # Another data layout (world size x accum, batch, data set or seed): the step inside the
            # epoch means other images, so continue from the next epoch boundary.
            self.epoch = s["epoch"] + (1 if s["step"] else 0)
            self.step_in_epoch = 0
            self.iteration = self.epoch * self.sampler.steps_per_epoch
            if self.info.is_main:
                print(
                    f"warning: {path} was written with another data layout (shards x batch x images "
                    f"{s['shards']}x{s['batch']}x{s['dataset_len']}, now {self.sampler.num_shards}x{self.cfg.batch}x"
                    f"{len(self.train_set)}); continuing at the start of epoch {self.epoch + 1}, not exactly",
                    file=sys.stderr,
                )
        rngs = extra.get("rng") or []
        if rngs:
            set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0], self.device)
        self.metrics = dict(extra.get("metrics", {}))
        self.last_eval = extra.get("eval_iteration")
        self.last_saved = self.iteration
        self.last_checkpoint = Path(path)


def run_worker(info: DistInfo, cfg: TrainConfig, resume: str | None, progress: bool) -> int:
    """One process of a training job (``trainer.distributed.launch`` target): returns its exit code."""
    try:
        Trainer(cfg, info, resume=resume, progress=progress).train()
    except NonFiniteLoss as e:
        if info.is_main:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except UserError as e:
        if info.is_main:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
