"""``python -m export.to_onnx CHECKPOINT.pth``: export a CornerNet checkpoint to ONNX.

Examples::

    python -m export.to_onnx cornernet.pth                        # -> cornernet.onnx beside it
    python -m export.to_onnx cornernet.pth --out model.onnx --outputs heads
    python -m export.to_onnx cornernet.pth --corner-pool decomposed  # standard ops only
    python -m export.to_onnx cornernet.pth --fp16                 # -> cornernet.fp16.onnx (TensorRT 11)
    python -m export.check cornernet.onnx                          # then compare it with PyTorch

The graph takes ``images`` float32 [N, 3, H, W] (dynamic N, H, W; normalised and padded to
(h | 127, w | 127) as the metadata says) and returns the top-k corner proposals (default) or the six
raw head maps. Corner pooling is one ``cornernet::CornerPool`` node per pool, which TensorRT maps to
our plugin, with a model-local function that ONNX Runtime runs as is (``--corner-pool plugin``), or
is inlined as standard ops (``--corner-pool decomposed``). The checkpoint's classes, normalisation,
test settings, path and sha256 travel in the file's metadata.

Exit codes: 0 success, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
import time

from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_OK

from .corner_pool_onnx import CORNER_POOL_MODES
from .onnx_export import DEFAULT_OPSET, OUTPUT_KINDS, export_onnx


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m export.to_onnx", __doc__)
    p.add_argument("checkpoint", help="our checkpoint or an mmdet 2.x/3.x CornerNet checkpoint (.pth)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="ONNX file to write (default: CHECKPOINT.onnx, or CHECKPOINT.fp16.onnx with --fp16)",
    )
    p.add_argument(
        "--outputs",
        choices=OUTPUT_KINDS,
        default="proposals",
        help="proposals: top-k corners (scores, inds, embs, offs), what deployment runs; heads: the 6 raw maps, for debugging (default: proposals)",
    )
    p.add_argument(
        "--corner-pool",
        choices=CORNER_POOL_MODES,
        default="plugin",
        help="plugin: cornernet::CornerPool custom op + local-function fallback; decomposed: standard ONNX ops only (default: plugin)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"default-domain opset, at least 18 (default: {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="write the mixed-precision model for TensorRT 11 strongly typed builds: fp16 backbone and corner pools, fp32 io and proposal tail",
    )
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    path = export_onnx(args.checkpoint, args.out, args.outputs, args.corner_pool, args.opset, fp16=args.fp16)
    size_mb = path.stat().st_size / 1e6
    precision = "fp16" if args.fp16 else "fp32"
    print(
        f"wrote    {path} ({size_mb:.1f} MB, {precision}, outputs {args.outputs}, corner pool {args.corner_pool}, "
        f"opset {args.opset}) in {time.perf_counter() - t0:.1f} s"
    )
    print(f"check    python -m export.check {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
