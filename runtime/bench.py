"""``python -m runtime.bench MODEL [MODEL ...]``: speed of checkpoints, ONNX files and engines side by side.

Every model runs the same images in the same batches (grouped by padded shape, as ``runtime.eval`` does),
one model at a time, through the same overlapped stream as ``runtime.eval`` (``runtime.Detector.stream``):
images are read and pre-processed in threads while the network runs, and decoded in another thread, so
memory stays bounded however many images there are. It prints the network alone (``backend.infer``:
host->device copy, inference, device->host copy; images/s and latency percentiles per batch), the whole
stream's images/s, how much of the wall time the network was busy (near 100% means the host keeps up),
host ms per image for pre-processing and decoding, and each model's speed relative to the first.

Examples::

    python -m runtime.bench checkpoint.pth checkpoint.onnx --images ../shared/golden/coco/images --device cpu
    python -m runtime.bench checkpoint.pth checkpoint.plan checkpoint.fp16.plan --coco data/coco --limit 500 --batch 8
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.backends import backend_options
from runtime.cli import parser_from_doc, run_cli, write_json
from runtime.detector import Detector, StageTimes
from runtime.errors import EXIT_OK, UserError

PERCENTILES = (50, 90, 99)


@dataclass
class BenchResult:
    """One model's numbers: network seconds per timed batch, and the stream's stage times."""

    model: str
    backend: str
    precision: str
    device: str
    images: int  # images in the timed stream
    infer_s: list[float]  # network time of each timed batch
    times: StageTimes

    def summary(self) -> dict[str, Any]:
        ms = 1e3 * np.asarray(self.infer_s or [0.0])
        network = {f"p{q}_ms": float(np.percentile(ms, q)) for q in PERCENTILES}
        total = float(np.sum(self.infer_s))
        network["fps"] = self.images / total if total > 0 else 0.0
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "batches": len(self.infer_s),
            "images": self.images,
            "network": network,
            "end_to_end": self.times.per_image_ms(),
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
    detector: Detector, paths: list[Path], warmup: int, iters: int | None, progress: bool = False
) -> BenchResult:
    """Time ``detector`` on ``paths``: ``warmup`` untimed batches, then ``iters`` timed ones (default one pass).

    The images stream through :meth:`Detector.stream` exactly as in ``runtime.eval``: read and
    pre-processed in threads while the network runs, decoded in another thread, never all in memory
    (peak memory does not grow with the number of images). ``iters`` cycles over the images.
    """
    batch = detector.batch_size
    if warmup:
        for _ in detector.stream(itertools.islice(itertools.cycle(paths), warmup * batch)):
            pass
    timed: Iterable[Path] = paths if iters is None else itertools.islice(itertools.cycle(paths), iters * batch)
    count = len(paths) if iters is None else iters * batch
    with tqdm(total=count, desc="bench", unit="img", disable=not progress, leave=False) as bar:
        for _ in detector.stream(timed):
            bar.update(1)
    times = detector.times
    return BenchResult(
        "",
        detector.name,
        str(detector.info.get("precision", "fp32")),
        _device(detector.info),
        times.images,
        list(times.batch_seconds),
        times,
    )


def _device(info: dict[str, Any]) -> str:
    """``cpu``/``cuda:0`` from a backend's info (ONNX Runtime names its first execution provider)."""
    if info.get("device"):
        return str(info["device"])
    providers = info.get("providers") or ["?"]
    return str(providers[0]).replace("ExecutionProvider", "").lower()


def format_table(results: list[dict[str, Any]]) -> str:
    """Side-by-side table: network-only fps and per-batch latency, the overlapped stream's fps, how busy the
    network was, and each model's speed relative to the first."""
    pct = "".join(f" {f'p{q}':>7}" for q in PERCENTILES)
    head = (
        f"{'model':<28} {'backend':<11} {'device':<6} {'prec':<4} {'imgs':>5} | {'fps':>8}{pct} "
        f"| {'fps e2e':>8} {'busy':>5} {'pre':>6} {'dec':>6} | {'vs 1st':>6} {'e2e':>6}"
    )
    sub = (
        f"{'':<28} {'':<11} {'':<6} {'':<4} {'':>5} | {'network only (ms per batch)':<{8 + 8 * len(PERCENTILES)}} "
        f"| {'stream: ms/img per stage':<29} |"
    )
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
            + f" | {e2e['fps']:>8.2f} {100 * e2e['network_busy']:>4.0f}% {e2e['preprocess_ms']:>6.1f} {e2e['decode_ms']:>6.1f}"
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
    p.add_argument("--plugin", metavar="LIB", help="TensorRT engines: the CornerPool plugin library")
    p.add_argument(
        "--workers", type=int, default=2, metavar="N", help="reading/pre-processing threads (default 2)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if args.workers < 0:
        raise UserError("--workers must be at least 0")
    paths = list_images(args.images, args.coco)[: args.limit]
    results = []
    for model in args.models:
        options = backend_options(model, cuda_graph=args.cuda_graph, plugin=args.plugin)
        with Detector(model, device=args.device, batch_size=args.batch, workers=args.workers, **options) as det:
            res = bench_model(det, paths, args.warmup, args.iters, progress=not args.no_progress)
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
