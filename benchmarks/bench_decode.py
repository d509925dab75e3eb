"""Decode speed at full HG-104 scale, next to mmdet's.

Times the whole numpy decode of one image from the golden ``decode_hg104`` heads (80 classes,
128x192 features, a 511x767 input): corner proposals (sigmoid, local maximum, top-k), pairing and
class-aware soft-NMS. mmdet 3.3.0 + mmcv took about 118 ms per image for this case on a 2-core CPU
(``shared/golden/README.md``). Also checks the result against mmdet's with the matching rule.

    python -m benchmarks.bench_decode [--runs 30] [--golden DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from runtime.decode import HEAD_OUTPUTS, Detections, corner_proposals
from runtime.matching import match_detections
from runtime.meta import TestConfig
from runtime.postprocess import postprocess
from runtime.preprocess import ImageMeta

MMDET_MS = 118.0
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


def load_case(golden: Path) -> tuple[dict[str, np.ndarray], ImageMeta, Detections]:
    """The heads (cast from the stored fp16 to float32), mmdet's meta and mmdet's detections."""
    record = json.loads((golden / "decode_hg104.json").read_text())
    with np.load(golden / "decode_hg104.npz") as z:
        heads = {name: z[name][0].astype(np.float32) for name in HEAD_OUTPUTS}
    m = record["meta"]
    meta = ImageMeta(tuple(m["ori_shape"][:2]), tuple(m["pad_shape"][:2]), tuple(m["border"]))
    dets = record["detections"]
    ref = Detections(
        boxes=np.array([d["bbox"] for d in dets], np.float32).reshape(-1, 4),
        scores=np.array([d["score"] for d in dets], np.float32),
        labels=np.array([d["label"] for d in dets], np.int64),
    )
    return heads, meta, ref


def decode_once(
    heads: dict[str, np.ndarray], meta: ImageMeta, cfg: TestConfig
) -> tuple[Detections, float, float]:
    """One decode; returns the detections and the ms spent in proposals and in pairing + soft-NMS."""
    t0 = time.perf_counter()
    props = corner_proposals(
        *(heads[n] for n in HEAD_OUTPUTS), k=cfg.corner_topk, kernel=cfg.local_maximum_kernel
    )
    t1 = time.perf_counter()
    dets = postprocess([props], [meta], cfg)
    t2 = time.perf_counter()
    return dets, (t1 - t0) * 1e3, (t2 - t1) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs (after 3 warm-up runs)")
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="the golden outputs folder")
    args = parser.parse_args(argv)

    heads, meta, ref = load_case(args.golden)
    cfg = TestConfig()
    for _ in range(3):
        decode_once(heads, meta, cfg)
    props_ms, pair_ms, total_ms = [], [], []
    for _ in range(args.runs):
        dets, a, b = decode_once(heads, meta, cfg)
        props_ms.append(a)
        pair_ms.append(b)
        total_ms.append(a + b)

    med = statistics.median(total_ms)
    match = match_detections(ref, dets)
    print(f"decode_hg104 (80 classes, 128x192 features, 511x767 input), median of {args.runs} runs:")
    print(f"  proposals (sigmoid, local max, top-k): {statistics.median(props_ms):7.2f} ms")
    print(f"  pairing + soft-NMS:                    {statistics.median(pair_ms):7.2f} ms")
    print(
        f"  total per image:                       {med:7.2f} ms  (min {min(total_ms):.2f}, max {max(total_ms):.2f})"
    )
    print(f"  mmdet 3.3.0 + mmcv:                    {MMDET_MS:7.2f} ms")
    print(f"  ratio ours / mmdet:                    {med / MMDET_MS:7.3f}  ({MMDET_MS / med:.1f}x faster)")
    print(f"  detections vs mmdet: {match}")
    return 0 if match.ok else 1


if __name__ == "__main__":
    sys.exit(main())
