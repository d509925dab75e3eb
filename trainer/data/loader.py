"""Training data order and batches: sharded like ``DistributedSampler``, resumable mid-epoch, targets built in workers.

Data order. The epoch's permutation is ``DistributedSampler``'s (``torch.randperm`` seeded with
``seed + epoch``, padded by repeating its start, shard ``v`` = every ``V``-th index from ``v``).
There are ``V = processes x accum`` shards ("virtual ranks"): process ``r`` takes shards
``r * accum + a`` for its micro-batches ``a = 0 .. accum - 1``. The images a step trains on thus
depend only on ``V`` and the batch, not on how the shards are spread over processes: 2 processes
with ``accum 1`` and 1 process with ``accum 2`` see the same micro-batches. Each shard is cut into
batches of ``batch`` with the incomplete last one dropped, so every step has full batches on every
process. (mmdet 2.x instead pads each shard by repeating images, which gives at most one more step
per epoch.) Augmentation is seeded per (seed, epoch, image) by ``CocoDetection``, so the whole
stream is a function of (seed, epoch, step) and resuming at a step needs only those numbers.

Targets. ``TargetCollate`` stacks images and runs ``build_targets`` in the DataLoader workers, off
the training loop's critical path. Boxes are in input pixels, ``img_shape`` is the padded input
(511 x 511 for HG-104) and the feature grid is ``input / 4`` (128 x 128), as in mmdet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from runtime.preprocess import feature_shape
from trainer.data.coco import collate
from trainer.data.targets import CornerTargets, build_targets


class ResumableBatchSampler(Sampler[list[int]]):
    """Micro-batches of one process for one epoch, from step ``start_step`` on.

    Yields ``steps_per_epoch - start_step`` groups of ``accum`` batches (flattened: the DataLoader
    sees ``accum`` consecutive batches per optimiser step).

    Args:
        dataset_len: number of training images.
        batch: images per micro-batch.
        rank, world_size: this process and the number of processes.
        accum: micro-batches per step (shards per process).
        seed: permutation seed (``DistributedSampler``'s; the epoch is added).
        shuffle: random order (training) or dataset order.
    """

    def __init__(
        self,
        dataset_len: int,
        batch: int,
        rank: int = 0,
        world_size: int = 1,
        accum: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.batch = batch
        self.accum = accum
        self.num_shards = world_size * accum
        self.shards = [
            DistributedSampler(
                _Sized(dataset_len),  # type: ignore[arg-type]
                num_replicas=self.num_shards,
                rank=rank * accum + a,
                shuffle=shuffle,
                seed=seed,
                drop_last=False,
            )
            for a in range(accum)
        ]
        self.steps_per_epoch = self.shards[0].num_samples // batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{dataset_len} images give each of the {self.num_shards} shards "
                f"{self.shards[0].num_samples} images, fewer than one batch of {batch}"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and the step to start at (resume mid-epoch)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step
        for s in self.shards:
            s.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        shards = [list(iter(s)) for s in self.shards]
        b = self.batch
        for step in range(self.start_step, self.steps_per_epoch):
            for indices in shards:
                yield indices[step * b : (step + 1) * b]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


class _Sized:
    """Stands in for the dataset in ``DistributedSampler``, which only needs its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class TargetCollate:
    """``collate`` plus CornerNet targets for the batch (picklable, runs in DataLoader workers).

    Returns ``{"image": [B, 3, H, W], "targets": {tl_heatmap, br_heatmap, tl_offset, br_offset}
    tensors, "corner_embedding": list, "boxes", "labels", "image_id"}`` (dicts of tensors, so
    ``pin_memory`` pins them).
    """

    def __init__(self, input_size: tuple[int, int], num_classes: int) -> None:
        self.input_size = input_size
        self.feat_shape = feature_shape(*input_size)
        self.num_classes = num_classes

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(items)
        t = build_targets(batch["boxes"], batch["labels"], self.feat_shape, self.input_size, self.num_classes)
        batch["targets"] = {
            "tl_heatmap": t.tl_heatmap,
            "br_heatmap": t.br_heatmap,
            "tl_offset": t.tl_offset,
            "br_offset": t.br_offset,
        }
        batch["corner_embedding"] = t.corner_embedding
        return batch


def targets_to(batch: dict[str, Any], device: torch.device) -> CornerTargets:
    """The batch's targets as ``CornerTargets`` on ``device`` (non-blocking from pinned memory)."""
    t = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
    return CornerTargets(corner_embedding=batch["corner_embedding"], **t)


def train_loader(
    dataset: Dataset,
    sampler: ResumableBatchSampler,
    input_size: tuple[int, int],
    num_classes: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """DataLoader over ``sampler``'s micro-batches with targets built in ``workers`` processes.

    Workers are not persistent: they are forked per epoch, after ``set_epoch`` on the dataset and
    the sampler, so each epoch's augmentation stream reaches them. Batches travel through shared
    memory with their heatmaps (about 50 MB per HG-104 batch of 6, 2 in flight per worker): in
    Docker, give the container ``--shm-size`` of a few GB.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=TargetCollate(input_size, num_classes),
        pin_memory=pin_memory,
        persistent_workers=False,
    )
