"""Training speed and memory of HG-104 on one GPU: img/s and peak memory at 6 images per GPU, fp32 vs bf16.

Runs the trainer's own ``train_one_iter`` (forward of both stacks, mmdet's losses, backward, grad
clip, Adam) on a fixed batch of 6 random 511x511 images with about 7 random boxes each (the COCO
average), so data loading is not measured. Peak memory is ``torch.cuda.max_memory_allocated``, what
mmdet logs as ``memory``; mmdet's 8x6 run reports 15.9 GB per GPU (V100, fp32).

    python benchmarks/bench_train_gpu.py
    python benchmarks/bench_train_gpu.py --steps 30 --channels-last

On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import preset  # noqa: E402
from trainer.data.loader import TargetCollate  # noqa: E402
from trainer.distributed import DistInfo  # noqa: E402
from trainer.loop import Trainer  # noqa: E402
from trainer.schedule import WarmupStepSchedule  # noqa: E402

MMDET_8X6_MEMORY_GB = 15.9


def fake_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """A collated batch with targets, like the DataLoader's: normalised noise images, random boxes."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch):
        n = 7
        xy = torch.rand(n, 2, generator=g) * (size - 40)
        wh = 8 + torch.rand(n, 2, generator=g) * (size / 2)
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        image = torch.randn(3, size, size, generator=g)
        items.append({"image": image, "boxes": boxes, "labels": labels, "image_id": i})
    return TargetCollate((size, size), num_classes)(items)


def measure(amp: str, channels_last: bool, steps: int, warmup: int) -> tuple[float, float, float]:
    """(img/s, peak allocated GB, peak reserved GB) of HG-104 training steps at 6 images."""
    cfg = preset("8x6").replace(amp=amp, channels_last=channels_last)
    device = torch.device("cuda", 0)
    trainer = Trainer(cfg, DistInfo(device=device), progress=False, tensorboard=False)
    trainer.setup_model(num_classes=80)
    trainer.schedule = WarmupStepSchedule(base_lr=cfg.lr, iters_per_epoch=10_000, warmup_iters=0)
    torch.backends.cudnn.benchmark = True
    batch = fake_batch(cfg.batch, cfg.crop_size, 80)
    batch["image"] = batch["image"].pin_memory()
    for _ in range(warmup):
        trainer.train_one_iter([batch])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_one_iter([batch])  # syncs once per step (loss check), like training
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 1e9
    reserved = torch.cuda.max_memory_reserved(device) / 1e9
    del trainer
    torch.cuda.empty_cache()
    return cfg.batch * steps / elapsed, peak, reserved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning)")
    p.add_argument("--channels-last", action="store_true", help="also measure NHWC")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_train_gpu: needs a CUDA GPU (none visible to PyTorch); nothing measured")
        return 0
    name = torch.cuda.get_device_name(0)
    print(
        f"bench_train_gpu: HG-104 training step, 6 images of 511x511 per GPU, {name}, torch {torch.__version__}"
    )
    print(
        f"{'setting':22s}{'img/s':>8s}{'peak GB':>9s}{'reserved GB':>13s}   (mmdet 8x6: {MMDET_8X6_MEMORY_GB} GB, V100 fp32)"
    )
    settings = [("fp32", "none", False), ("bf16", "bf16", False)]
    if args.channels_last:
        settings += [("fp32 channels-last", "none", True), ("bf16 channels-last", "bf16", True)]
    for label, amp, cl in settings:
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            print(f"{label:22s}  skipped: this GPU has no bf16")
            continue
        img_s, peak, reserved = measure(amp, cl, args.steps, args.warmup)
        print(f"{label:22s}{img_s:8.1f}{peak:9.1f}{reserved:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
