"""``python -m runtime.bench MODEL [MODEL ...]``: speed of checkpoints, ONNX files and engines side by side.

Every model runs the same images in the same batches (grouped by padded shape, as ``runtime.eval`` does),
one model at a time. Per batch it times the network alone (``backend.infer``: host->device copy,
inference, device->host copy) and end to end (reading + pre-processing the images, inference and
decoding), serially on one thread. It prints images/s and latency percentiles per batch for both, and
each model's speed relative to the first.

Examples::

    python -m runtime.bench checkpoint.pth checkpoint.onnx --images ../shared/golden/coco/images --device cpu
    python -m runtime.bench checkpoint.pth checkpoint.plan checkpoint.fp16.plan --coco data/coco --limit 500 --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.cli import parser_from_doc, run_cli, write_json
from runtime.errors import EXIT_OK, UserError
from runtime.pipeline import Prepared, Timings, batches_by_shape, prepare, run_batch

PERCENTILES = (50, 90, 99)


@dataclass
class BenchResult:
    """One model's numbers: seconds per timed batch, network alone and end to end."""

    model: str
    backend: str
    precision: str
    device: str
    images: int  # images in the timed batches
    infer_s: list[float]
    e2e_s: list[float]

    def summary(self) -> dict[str, Any]:
        def stats(seconds: list[float]) -> dict[str, float]:
            ms = 1e3 * np.asarray(seconds)
            d = {f"p{q}_ms": float(np.percentile(ms, q)) for q in PERCENTILES}
            d["fps"] = self.images / float(np.sum(seconds)) if np.sum(seconds) > 0 else 0.0
            return d

        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "batches": len(self.infer_s),
            "images": self.images,
            "network": stats(self.infer_s),
            "end_to_end": stats(self.e2e_s),
        }


def list_images(images: str | None, coco: str | None) -> list[Path]:
    """``--images DIR`` (its image files in name order) or ``--coco DIR`` (val2017 in annotation order)."""
    if coco is not None:
        from runtime.coco import load_coco_set, resolve_coco_paths

        ann, img_dir = resolve_coco_paths(coco, None, None)
        return [im.path for im in load_coco_set(ann, img_dir).images]
    if images is None:
        raise UserError("give images: --images DIR (a folder of images) or --coco DIR (COCO layout)")
    from runtime.detect import list_images as image_files  # the same listing as runtime.detect

    return image_files(Path(images))


def bench_model(
    backend: Backend, paths: list[Path], batch: int, warmup: int, iters: int | None
) -> BenchResult:
    """Time ``backend`` on ``paths``: ``warmup`` untimed batches, then ``iters`` timed ones (default one pass).

    Batches cycle over the images when ``iters`` exceeds their number. Each timed batch is read and
    pre-processed again, so the end-to-end time is real work, not a cached result.
    """
    prepared = [prepare(i, p, backend.meta, flip=False) for i, p in enumerate(paths)]
    groups = [[p.key for p in b] for b in batches_by_shape(prepared, batch)]
    n_timed = len(groups) if iters is None else iters
    infer_s: list[float] = []
    e2e_s: list[float] = []
    images = 0
    for step in range(warmup + n_timed):
        keys = groups[step % len(groups)]
        t0 = time.perf_counter()
        batch_items: list[Prepared] = [prepare(k, paths[k], backend.meta, flip=False) for k in keys]
        timings = Timings()
        run_batch(backend, batch_items, timings)
        total = time.perf_counter() - t0
        if step >= warmup:
            infer_s.append(timings.inference)
            e2e_s.append(total)
            images += len(keys)
    return BenchResult(
        "",
        backend.name,
        str(backend.info.get("precision", "fp32")),
        _device(backend),
        images,
        infer_s,
        e2e_s,
    )


def _device(backend: Backend) -> str:
    """``cpu``/``cuda:0`` from the backend's info (ONNX Runtime names its first execution provider)."""
    if backend.info.get("device"):
        return str(backend.info["device"])
    providers = backend.info.get("providers") or ["?"]
    return str(providers[0]).replace("ExecutionProvider", "").lower()


def format_table(results: list[dict[str, Any]]) -> str:
    """Side-by-side table: network-only and end-to-end fps and latency percentiles, speed vs the first model."""
    pct = "".join(f" {f'p{q}':>7}" for q in PERCENTILES)
    head = f"{'model':<28} {'backend':<11} {'device':<6} {'prec':<4} {'imgs':>5} | {'fps':>8}{pct} | {'fps e2e':>8}{pct} | {'vs 1st':>6} {'e2e':>6}"
    sub = f"{'':<28} {'':<11} {'':<6} {'':<4} {'':>5} | {'network only (ms per batch)':<{8 + 8 * len(PERCENTILES)}} | {'with pre-process + decode':<{8 + 8 * len(PERCENTILES)}} |"
    lines = [head, sub, "-" * len(head)]
    base = results[0]
    for r in results:
        net, e2e = r["network"], r["end_to_end"]
        ratio = net["fps"] / base["network"]["fps"] if base["network"]["fps"] else float("nan")
        ratio_e2e = e2e["fps"] / base["end_to_end"]["fps"] if base["end_to_end"]["fps"] else float("nan")
        name = Path(r["model"]).name
        name = name if len(name) <= 28 else "..." + name[-25:]
        lines.append(
            f"{name:<28} {r['backend']:<11} {r['device']:<6} {r['precision']:<4} {r['images']:>5} | {net['fps']:>8.2f}"
            + "".join(f" {net[f'p{q}_ms']:>7.1f}" for q in PERCENTILES)
            + f" | {e2e['fps']:>8.2f}"
            + "".join(f" {e2e[f'p{q}_ms']:>7.1f}" for q in PERCENTILES)
            + f" | {ratio:>5.2f}x {ratio_e2e:>5.2f}x"
        )
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m runtime.bench", __doc__)
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="checkpoint (.pth), ONNX file (.onnx) or TensorRT engine (.plan)",
    )
    p.add_argument("--images", metavar="DIR", help="a folder of images (all of them, sorted by name)")
    p.add_argument(
        "--coco",
        metavar="DIR",
        help="COCO layout: the images of DIR/val2017 listed in DIR/annotations/instances_val2017.json",
    )
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="images per inference, same padded shape only (default 1)",
    )
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed batches first (default 2)")
    p.add_argument(
        "--iters", type=int, metavar="N", help="timed batches, cycling over the images (default: one pass)"
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="TensorRT engines: replay a captured CUDA graph while the shape stays the same",
    )
    p.add_argument("--report", metavar="FILE", help="also write the numbers as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    if (
        args.batch < 1
        or args.warmup < 0
        or (args.iters is not None and args.iters < 1)
        or (args.limit is not None and args.limit < 1)
    ):
        raise UserError("--batch, --iters and --limit must be at least 1, --warmup at least 0")
    paths = list_images(args.images, args.coco)[: args.limit]
    results = []
    for model in args.models:
        kwargs: dict[str, Any] = (
            {"cuda_graph": True}
            if args.cuda_graph and Path(model).suffix.lower() in (".plan", ".engine")
            else {}
        )
        backend = open_backend(model, device=args.device, **kwargs)
        try:
            res = bench_model(backend, paths, args.batch, args.warmup, args.iters)
        finally:
            backend.close()
        res.model = str(model)
        results.append(res.summary())
        print(
            f"timed    {model} ({res.backend} {res.precision} {res.device}): {len(res.infer_s)} batches, {res.images} images",
            file=sys.stderr,
        )
    print(f"images   {len(paths)} from {args.images or args.coco}, batch {args.batch}, warmup {args.warmup}")
    print(format_table(results))
    if args.report:
        write_json(args.report, {"images": len(paths), "batch": args.batch, "results": results})
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
