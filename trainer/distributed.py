"""Process launch for 1..N GPUs and nodes, and the few collectives the trainer needs.

Three ways to run, decided once by :func:`launch`:

- **torchrun** (multi-node): ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are in the environment, so
  this process is one worker; the process group comes from ``env://`` (``MASTER_ADDR``/``PORT``
  set by torchrun).
- **spawn** (one node): ``--gpus N`` with N > 1 (or ``--gpus 0 --procs N`` on CPU) starts N worker
  processes with ``torch.multiprocessing`` on ``localhost`` and a free port.
- **single process**: ``--gpus 1`` (one GPU) or ``--gpus 0`` (CPU); no process group at all.

CUDA workers use NCCL, one GPU each (``cuda:LOCAL_RANK``); CPU workers use gloo. A worker function
returns an exit code; the launcher returns the first non-zero one (e.g. 1 when the loss became NaN).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from runtime.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Collectives wait this long for a straggler (e.g. rank 0 writing a 2.4 GB checkpoint, or a slow
# evaluation shard) before the job fails.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives (no-ops alone)

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        """Mean of ``t`` over all processes (``t`` on this process's device)."""
        if not self.distributed:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def torchrun_env() -> bool:
    """Whether torchrun (or another ``env://`` launcher) started this process."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def free_port() -> int:
    """A TCP port free on localhost right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process(rank: int, world_size: int, local_rank: int, use_cuda: bool) -> DistInfo:
    """Join the process group (when ``world_size > 1``) and pick this process's device."""
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=TIMEOUT,
            device_id=device if use_cuda else None,
        )
    return DistInfo(rank, world_size, local_rank, device)


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


WorkerFn = Callable[..., int]


def _run(fn: WorkerFn, info: DistInfo, args: tuple[Any, ...]) -> int:
    try:
        return fn(info, *args)
    finally:
        shutdown()


def _spawned(
    local_rank: int, fn: WorkerFn, world_size: int, use_cuda: bool, threads: int, args: tuple
) -> None:
    """Entry point of a spawned worker (one node: rank == local rank)."""
    if not use_cuda:
        # N CPU workers share the cores instead of each starting one thread per core.
        torch.set_num_threads(threads)
    info = init_process(local_rank, world_size, local_rank, use_cuda)
    code = _run(fn, info, args)
    if code:
        sys.exit(code)


def launch(fn: WorkerFn, gpus: int, procs: int = 1, args: tuple[Any, ...] = ()) -> int:
    """Run ``fn(info: DistInfo, *args) -> exit code`` on every worker; return the job's exit code.

    Args:
        fn: a module-level function (spawned workers import it by name).
        gpus: GPUs on this node (0: CPU). Ignored under torchrun, which says how many.
        procs: CPU worker processes when ``gpus == 0`` (gloo; for testing DDP without GPUs).
        args: passed to ``fn`` after the ``DistInfo``; must be picklable.
    """
    if torchrun_env():
        use_cuda = torch.cuda.is_available() and gpus != 0
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        return _run(fn, init_process(rank, world_size, local_rank, use_cuda), args)

    use_cuda = gpus > 0
    if use_cuda and gpus > torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise UserError(
            f"--gpus {gpus}: only {visible} CUDA device(s) visible; pass --gpus {visible}"
            + (" or --gpus 0 for CPU" if visible == 0 else "")
        )
    world_size = gpus if use_cuda else procs
    if world_size < 1:
        raise UserError(f"--procs must be at least 1, got {procs}")
    if world_size == 1:
        return _run(fn, init_process(0, 1, 0, use_cuda), args)

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    threads = max(1, torch.get_num_threads() // world_size)
    try:
        mp.start_processes(
            _spawned,
            args=(fn, world_size, use_cuda, threads, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
    except mp.ProcessExitedException as e:
        return int(e.exit_code) if e.exit_code and e.exit_code > 0 else 1
    return 0
