"""Data-loading cost of CornerNet training: JPEG decode + mmdet's train transform, per CPU core.

Runs single-process with OpenCV and torch limited to one thread, so the number is images per second
per core; data-loader workers scale it about linearly until memory bandwidth runs out. Measures
the synthetic set (about 256x320) and the same images upscaled to COCO's usual 640x480, since
decode and photometric distortion grow with the input while crop/resize/normalise work on the
~511x511 canvas whatever the input.

    python -m benchmarks.bench_data                      # generates the synthetic set in a temp dir
    python -m benchmarks.bench_data --ann FILE --images DIR --step-time 0.4 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from runtime.image_io import read_image
from trainer.data import synthetic
from trainer.data import transforms as T
from trainer.data.coco import CocoDetection, loader_worker_init

GPUS, BATCH_PER_GPU = 8, 6  # mmdet's cornernet_hourglass104_mstest_8x6 config
STEPS = ("decode", "photometric", "crop_pad", "resize", "flip", "normalize", "to_tensor")


def time_steps(ds: CocoDetection, repeats: int) -> dict[str, float]:
    """Mean seconds per image of each pipeline step over ``repeats`` passes of the set."""
    cfg = T.TrainTransformConfig()
    totals = dict.fromkeys(STEPS, 0.0)
    count = 0
    for rep in range(repeats):
        for i, rec in enumerate(ds.records):
            rng = np.random.default_rng([rep, i])
            t0 = time.perf_counter()
            img = read_image(rec.path).astype(np.float32)
            t1 = time.perf_counter()
            sample = T.photometric_distortion(img, rec.boxes, rec.labels, rng)
            t2 = time.perf_counter()
            sample = T.random_center_crop_pad(*sample, rng, pad_value=cfg.mean)
            t3 = time.perf_counter()
            sample = T.resize(*sample, size=cfg.input_size)
            t4 = time.perf_counter()
            sample = T.random_horizontal_flip(*sample, rng)
            t5 = time.perf_counter()
            image, _, _ = T.normalize(*sample)
            t6 = time.perf_counter()
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            t7 = time.perf_counter()
            for name, dt in zip(STEPS, np.diff([t0, t1, t2, t3, t4, t5, t6, t7]), strict=True):
                totals[name] += dt
            count += 1
    return {k: v / count for k, v in totals.items()}


def time_getitem(ds: CocoDetection, repeats: int) -> float:
    """Mean seconds per ``CocoDetection.__getitem__`` (the real training path)."""
    n = len(ds)
    t0 = time.perf_counter()
    for rep in range(repeats):
        ds.set_epoch(rep)
        for i in range(n):
            ds[i]
    return (time.perf_counter() - t0) / (repeats * n)


def upscale_set(src: dict[str, Path], dst: Path, size: tuple[int, int]) -> dict[str, Path]:
    """Copy the training split with every image resized to ``size`` (h, w), boxes scaled to match."""
    data = json.loads(src["train_ann"].read_text())
    (dst / "train2017").mkdir(parents=True, exist_ok=True)
    scales = {}
    for info in data["images"]:
        img = cv2.imread(str(src["train_images"] / info["file_name"]))
        out = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(dst / "train2017" / info["file_name"]), out, [cv2.IMWRITE_JPEG_QUALITY, 95])
        scales[info["id"]] = (size[1] / info["width"], size[0] / info["height"])
        info["height"], info["width"] = size
    for ann in data["annotations"]:
        sx, sy = scales[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        ann["area"] *= sx * sy
        ann.pop("segmentation", None)
    ann_file = dst / "instances_train2017.json"
    ann_file.write_text(json.dumps(data))
    return {"train_ann": ann_file, "train_images": dst / "train2017"}


def report(label: str, ds: CocoDetection, repeats: int, step_times: list[float]) -> None:
    steps = time_steps(ds, repeats)
    per_image = time_getitem(ds, repeats)
    mean_h = np.mean([r.height for r in ds.records])
    mean_w = np.mean([r.width for r in ds.records])
    rate = 1.0 / per_image
    print(f"\n{label}: {len(ds)} images, mean {mean_h:.0f}x{mean_w:.0f}, {repeats} passes")
    print("  ms/image: " + " | ".join(f"{k} {v * 1e3:.2f}" for k, v in steps.items()))
    print(
        f"  sum of steps {sum(steps.values()) * 1e3:.2f} ms; CocoDetection.__getitem__ {per_image * 1e3:.2f} ms"
    )
    print(f"  => {rate:.0f} images/s per core")
    need = GPUS * BATCH_PER_GPU
    for t in step_times:
        cores = need / t / rate
        print(
            f"  {GPUS} GPUs x batch {BATCH_PER_GPU} = {need} img/step at {t:g} s/step: {need / t:.0f} img/s = {cores:.1f} cores"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ann", type=Path, help="COCO annotation file (default: generate the synthetic set)")
    parser.add_argument("--images", type=Path, help="image folder for --ann")
    parser.add_argument("--num-images", type=int, default=64, help="synthetic images to generate")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the set")
    parser.add_argument(
        "--step-time",
        type=float,
        nargs="+",
        default=[0.3, 0.6, 1.0],
        help="training step times (s) to size for",
    )
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="skip loader_worker_init's malloc tuning, to see what it saves",
    )
    args = parser.parse_args(argv)
    # One thread everywhere: the result is per core. Set up like a DataLoader worker.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if not args.malloc_default:
        loader_worker_init()
    print(f"malloc: {'glibc defaults' if args.malloc_default else 'tuned by loader_worker_init'}")
    transform = T.train_transform()
    if args.ann is not None:
        if args.images is None:
            parser.error("--ann needs --images")
        report(str(args.ann), CocoDetection(args.ann, args.images, transform), args.repeats, args.step_time)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        src = synthetic.generate(Path(tmp) / "synthetic", args.num_images, 1, seed=0)
        ds = CocoDetection(src["train_ann"], src["train_images"], transform)
        report("synthetic set", ds, args.repeats, args.step_time)
        big = upscale_set(src, Path(tmp) / "coco_sized", (480, 640))
        ds = CocoDetection(big["train_ann"], big["train_images"], transform)
        report("same images at COCO's usual 480x640", ds, args.repeats, args.step_time)
    print(
        "\nNote: mmdet's config uses workers_per_gpu=3 (24 loader processes for 8 GPUs); the per-core rate above"
        "\nsays how many of those cores the augmentation actually needs at a given step time."
        "\nDataLoader(worker_init_fn=trainer.data.coco.loader_worker_init) sets one OpenCV thread per worker"
        "\nand keeps glibc from page-faulting every sample's buffers in again (see --malloc-default)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
