"""INT8 against fp32: ΔAP on the demo model per calibration method, and ONNX Runtime speed on HG-104.

1. Demo model (``python -m runtime.demo``: ``DEMO/tiny.onnx`` from ``DEMO/train/epoch_N.pth``, data in
   ``DATA``): for each calibration method, quantize on images of ``DATA/train2017`` (never the images it
   is scored on), evaluate fp32 and int8 ONNX on ``DATA`` (``runtime.eval --verify``: 12 COCO stats and
   the int8 rule's criteria against PyTorch fp32: per-output errors, index agreement, matched detections,
   ΔAP), and match int8 detections to fp32 ones under several rules.
2. HG-104 at 511x767 (random weights, speed only): export, quantize on a few generated images, time
   batch 1 with 2 ONNX Runtime threads, fp32 vs int8.

    python -m benchmarks.bench_quantize --demo /tmp/dq/demo --data /tmp/dq/data
    python -m benchmarks.bench_quantize --skip-hg104          # the demo part only
    python -m benchmarks.bench_quantize --skip-demo --runs 5  # the speed part only

Prints ratios and the numbers behind them; never a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.quantize import DEFAULT_IMAGES, METHODS, quantize_file
from runtime.coco import STAT_NAMES
from runtime.decode import Detections
from runtime.matching import match_detections

# Looser matching rules for INT8 (label always equal): (IoU >=, |score diff| <=).
LOOSE_RULES = ((0.999, 1e-4), (0.9, 0.02), (0.8, 0.05), (0.5, 0.1))


def _eval(model: Path, data: Path, out_dir: Path, tag: str, verify: Path | None) -> dict:
    from runtime.eval import main as evaluate

    report, results = out_dir / f"{tag}.report.json", out_dir / f"{tag}.results.json"
    argv = [str(model), "--coco", str(data), "--no-progress", "--report", str(report), "--out", str(results)]
    if verify is not None:
        argv += ["--verify", str(verify)]
    code = evaluate(argv)
    if code not in (0, 1):
        raise SystemExit(f"runtime.eval {model} failed with exit {code}")
    rep = json.loads(report.read_text())
    rep["results"] = json.loads(results.read_text())
    return rep


def _by_image(results: list[dict]) -> dict[int, Detections]:
    """COCO results -> per-image detections (xyxy; category ids stand in for labels)."""
    grouped: dict[int, list[dict]] = {}
    for r in results:
        grouped.setdefault(r["image_id"], []).append(r)
    out = {}
    for k, rs in grouped.items():
        xywh = np.array([r["bbox"] for r in rs], np.float64).reshape(-1, 4)
        out[k] = Detections(
            boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32),
            scores=np.array([r["score"] for r in rs], np.float32),
            labels=np.array([r["category_id"] for r in rs], np.int64),
        )
    return out


def match_rates(ref: list[dict], test: list[dict], min_score: float = 0.0) -> list[float]:
    """Fraction of reference detections (score >= min_score) matched, for each rule in LOOSE_RULES."""
    r, t = _by_image(ref), _by_image(test)
    rates = []
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for iou, tol in LOOSE_RULES:
        matched = total = 0
        for k, d in r.items():
            keep = d.scores >= min_score
            d = Detections(d.boxes[keep], d.scores[keep], d.labels[keep])
            m = match_detections(d, t.get(k, empty), iou_thr=iou, score_tol=tol)
            matched += m.matched
            total += m.total_ref
        rates.append(matched / max(total, 1))
    return rates


def demo_part(demo: Path, data: Path, images: int, methods: list[str], work: Path) -> None:
    onnx_path = demo / "tiny.onnx"
    ckpts = sorted((demo / "train").glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if not onnx_path.is_file() or not ckpts:
        raise SystemExit(f"{demo}: no tiny.onnx / train/epoch_N.pth; run python -m runtime.demo --out-dir {demo}")
    calib = data / "train2017"
    fp32 = _eval(onnx_path, data, work, "fp32", None)
    print(f"\ndemo model {onnx_path} (from {ckpts[-1].name}); calibration on {calib} ({images} images)")
    rows = {}
    for method in methods:
        out = work / f"tiny.int8.{method}.onnx"
        t0 = time.perf_counter()
        quantize_file(onnx_path, calib, images, out, method)
        seconds = time.perf_counter() - t0
        rep = _eval(out, data, work, f"int8-{method}", ckpts[-1])
        rows[method] = rep
        v = rep["verify"]
        print(f"\n--- {method} (quantized in {seconds:.0f} s)")
        print(f"runtime.eval --verify against PyTorch fp32 ({v['rules']} rules):")
        for c in v["criteria"]:
            print(f"  {'PASSED' if c['passed'] else 'FAILED'} | {c['name']:<10} | {c['detail']}")
        rates = match_rates(fp32["results"], rep["results"])
        top = match_rates(fp32["results"], rep["results"], min_score=0.3)
        for (iou, tol), a, b in zip(LOOSE_RULES, rates, top, strict=True):
            print(f"matched fp32 detections, IoU >= {iou}, |Δscore| <= {tol:g}: {100 * a:5.1f}% all, {100 * b:5.1f}% score >= 0.3")
    print("\nmetric   fp32 ONNX  " + "  ".join(f"{m:>16s}" for m in rows))
    for name in STAT_NAMES:
        cells = [
            f"{r['stats'][name]:.4f} ({100 * (r['stats'][name] - fp32['stats'][name]):+6.2f})" for r in rows.values()
        ]
        print(f"{name:6s}   {fp32['stats'][name]:.4f}     " + "  ".join(f"{c:>16s}" for c in cells))
    print("(int8 value and ΔAP in points vs fp32 ONNX)")


def _time(path: Path, x: np.ndarray, runs: int, threads: int) -> list[float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return times


def hg104_part(work: Path, runs: int, threads: int, calib_images: int) -> None:
    import torch

    from export.onnx_export import export_onnx
    from runtime.image_io import write_image
    from runtime.meta import COCO_CLASSES, ModelMeta
    from trainer.checkpoint import save_checkpoint
    from trainer.model import CornerNet
    from trainer.model.config import hg104

    torch.manual_seed(0)
    cfg = hg104()
    ckpt, onnx_path, int8_path = work / "hg104.pth", work / "hg104.onnx", work / "hg104.int8.onnx"
    save_checkpoint(ckpt, CornerNet(cfg).eval(), cfg, ModelMeta(classes=COCO_CLASSES))
    t0 = time.perf_counter()
    export_onnx(ckpt, onnx_path)
    print(f"\nHG-104: exported {onnx_path} in {time.perf_counter() - t0:.0f} s")
    calib = work / "calib"
    calib.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(calib_images):  # smooth random images: blurred noise, not flat colour
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        write_image(calib / f"{i}.png", np.kron(small, np.ones((16, 16, 1), np.uint8)))
    t0 = time.perf_counter()
    quantize_file(onnx_path, calib, calib_images, int8_path, "minmax")
    print(f"HG-104: quantized on {calib_images} generated 480x640 images in {time.perf_counter() - t0:.0f} s")
    x = np.random.default_rng(1).standard_normal((1, 3, 511, 767)).astype(np.float32)
    fp32_t = _time(onnx_path, x, runs, threads)
    int8_t = _time(int8_path, x, runs, threads)
    med, best = statistics.median, min
    print(
        f"HG-104 511x767 batch 1, {threads} threads, {runs} runs: fp32 median {med(fp32_t):.2f} s best {best(fp32_t):.2f} s, "
        f"int8 median {med(int8_t):.2f} s best {best(int8_t):.2f} s; int8 speed {med(fp32_t) / med(int8_t):.2f}x fp32 "
        f"(medians), {best(fp32_t) / best(int8_t):.2f}x (best); {onnx_path.stat().st_size / 1e6:.0f} MB -> "
        f"{int8_path.stat().st_size / 1e6:.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=Path("runs/demo"), help="runtime.demo --out-dir (default runs/demo)")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="runtime.demo --data (default data/synthetic)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="calibration images for the demo model")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--runs", type=int, default=5, help="timed HG-104 runs per model (median and best)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-images", type=int, default=2, help="generated calibration images for HG-104")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--skip-hg104", action="store_true")
    p.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_demo:
            demo_part(args.demo, args.data, args.images, args.methods, work)
        if not args.skip_hg104:
            hg104_part(work, args.runs, args.threads, args.calib_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
