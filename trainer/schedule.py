"""mmdet's CornerNet learning-rate schedule as a pure function of the iteration.

mmdet 2.x ``lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=1/3,
step=[180])`` with ``by_epoch=True``, written per iteration:

- step: ``lr = base_lr * gamma ** (number of s in step_epochs with epoch >= s)``, where ``epoch`` is
  the 0-based epoch the iteration belongs to (``iteration // iters_per_epoch``); with step 180 of
  210 the last 30 epochs run at ``base_lr / 10``;
- linear warmup on top, for the 0-based ``iteration < warmup_iters``:
  ``lr *= 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)``, so iteration 0 runs at
  ``ratio * lr`` and iteration ``warmup_iters`` at ``lr`` (mmdet's ``get_warmup_lr``).

``base_lr`` is already scaled by ``total batch / base batch`` (:meth:`TrainConfig.scaled_lr`).
The trainer sets the lr of every parameter group before each iteration (YOLOX-style), so resuming
needs nothing but the iteration; :meth:`WarmupStepSchedule.state_dict` is saved anyway so a resume
can tell when the schedule it continues differs from the one it was started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WarmupStepSchedule:
    """Step decay by epoch with a linear warmup by iteration.

    Args:
        base_lr: lr after warmup and before any step.
        iters_per_epoch: optimiser steps per epoch (at least 1).
        step_epochs: epochs (0-based, as mmdet) from which the lr is multiplied by one more ``gamma``.
        gamma: decay factor per step.
        warmup_iters: warmup length in iterations (0: none).
        warmup_ratio: lr factor at iteration 0.
    """

    base_lr: float
    iters_per_epoch: int
    step_epochs: tuple[int, ...] = (180,)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        if self.iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be at least 1, got {self.iters_per_epoch}")

    def lr_at(self, iteration: int) -> float:
        """lr of the 0-based ``iteration`` (the one about to run)."""
        epoch = iteration // self.iters_per_epoch
        lr = self.base_lr * self.gamma ** sum(epoch >= s for s in self.step_epochs)
        if iteration < self.warmup_iters:
            lr *= 1 - (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The settings as plain data (what checkpoints store under ``scheduler``)."""
        d = dataclasses.asdict(self)
        d["step_epochs"] = list(self.step_epochs)
        return {"type": "warmup_step", **d}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> WarmupStepSchedule:
        """Inverse of :meth:`state_dict`."""
        kw = {k: v for k, v in d.items() if k != "type"}
        kw["step_epochs"] = tuple(kw.get("step_epochs", ()))
        return cls(**kw)
