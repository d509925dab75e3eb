"""Served throughput and latency next to the in-process ``Detector``, on one model and one set of images (CPU).

Writes a repository for MODEL (``--net-backend python``: our runtime backend inside Triton's Python
backend, what a CPU machine can serve), starts ``tritonserver`` on loopback, and sends the images' bytes
(JPEG/PNG as read from disk) with 1, 4 and 8 concurrent clients. The in-process side is ``Detector(MODEL)``
streaming the same files (reading and decoding overlapped with the network, as ``runtime.eval`` runs).
Each side warms up first. Target: served throughput at concurrency 4 >= 80% of in-process.

    python -m benchmarks.bench_serving [MODEL] [--images DIR] [--requests 60] [--protocol grpc]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from itertools import cycle, islice
from pathlib import Path

from export.to_triton import RepoOptions, write_repository
from runtime.backends.triton import TritonClient
from runtime.cli import parser_from_doc, run_cli
from runtime.detector import Detector
from runtime.image_io import IMAGE_SUFFIXES
from runtime.serve import TritonServer


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def served(client: TritonClient, data: list[bytes], requests: int, concurrency: int) -> dict[str, float]:
    """``requests`` detections spread over ``concurrency`` threads sharing one client."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            client.detect(data[i % len(data)])
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"fps": requests / wall, "p50_ms": 1e3 * _percentile(latencies, 50), "p99_ms": 1e3 * _percentile(latencies, 99)}


def in_process(det: Detector, paths: list[Path], requests: int) -> dict[str, float]:
    """Throughput of ``det.stream`` over ``requests`` files; latency of single ``det(path)`` calls."""
    t0 = time.perf_counter()
    n = sum(1 for _ in det.stream(islice(cycle(paths), requests)))
    fps = n / (time.perf_counter() - t0)
    latencies = []
    for p in islice(cycle(paths), max(10, requests // 4)):
        t1 = time.perf_counter()
        det(p)
        latencies.append(time.perf_counter() - t1)
    return {"fps": fps, "p50_ms": 1e3 * _percentile(latencies, 50), "p99_ms": 1e3 * _percentile(latencies, 99)}


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m benchmarks.bench_serving", __doc__)
    p.add_argument("model", nargs="?", default=None, help=".pth or .onnx (default: the golden checkpoint)")
    p.add_argument("--images", default=None, metavar="DIR", help="image folder (default: the golden images)")
    p.add_argument("--requests", type=int, default=60, metavar="N", help="requests per measurement (default: 60)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], metavar="C", help="client counts (default: 1 4 8)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--instances", type=int, default=1, metavar="K", help="network instances in the server (default: 1)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.model is None or args.images is None:  # ../shared/golden, else the repository's copy
        from tests.data.golden_codec import golden_folder

        golden = golden_folder()
        args.model = args.model or str(golden / "mmdet_checkpoint.pth")
        args.images = args.images or str(golden / "coco" / "images")
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    data = [p.read_bytes() for p in paths]
    print(f"model    {args.model}\nimages   {len(paths)} from {args.images}, {args.requests} requests per row")
    with Detector(args.model, device="cpu") as det:
        list(det.stream(paths))  # warm-up (numba kernels, allocator)
        local = in_process(det, paths, args.requests)
    rows = [("in-process Detector", local)]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        write_repository(args.model, Path(tmp) / "models", RepoOptions(net_backend="python", instances=args.instances))
        with TritonServer(Path(tmp) / "models", ready_timeout_s=300) as server:
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            with TritonClient(f"{args.protocol}://{url}/cornernet") as client:
                served(client, data, 2 * len(data), 2)  # warm-up: every stub has decoded once
                for c in args.concurrency:
                    rows.append((f"served, {args.protocol}, concurrency {c}", served(client, data, args.requests, c)))
    print(f"{'':34s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}  vs in-process")
    for name, r in rows:
        print(f"{name:34s} {r['fps']:8.2f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}  {r['fps'] / local['fps']:6.2f}x")
    at4 = [r for name, r in rows if name.endswith("concurrency 4")]
    if at4:
        ratio = at4[0]["fps"] / local["fps"]
        print(f"target   served at concurrency 4 >= 0.80x in-process: {ratio:.2f}x {'met' if ratio >= 0.8 else 'NOT met'}")
    print(f"median   {statistics.median(r['fps'] for _, r in rows[1:]):.2f} img/s served")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
