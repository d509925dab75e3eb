"""``python -m export.to_trt CHECKPOINT.pth``: one command from a checkpoint (or ONNX file) to a TensorRT engine.

Writes NAME.plan and its sidecar NAME.plan.json (classes, normalisation, test settings, shape profile,
precision, TensorRT version, GPU, plugin library and source checkpoint with their sha256), then loads the
engine and runs it once. Verify it against PyTorch with python -m runtime.eval NAME.plan ... --verify.

Examples::

    python -m export.to_trt checkpoint.pth                        # -> checkpoint.plan (+ checkpoint.onnx)
    python -m export.to_trt checkpoint.pth --fp16 --batch 8 --out engines/hg104.fp16.plan
    python -m export.to_trt model.onnx --max 1023x1023            # larger images than COCO's
    python -m export.to_trt model.int8.onnx --int8                # from python -m export.quantize
    python -m runtime.eval checkpoint.plan --coco data/coco --verify

Shape profile: the input is [N, 3, H, W] after mmdet's test padding, which grows each side to the next
128 m - 1 (h | 127). Every COCO val2017 image is at most 640 px a side, so padded sides lie between
127 and 767: the defaults --min 127x127 --max 767x767 cover all of COCO, and --opt 511x767 is the
padded shape of the most common COCO image (480x640). Inputs outside the profile are refused with the
rebuild command to run. Larger --max costs build time and some speed; keep opt at your typical size.

Exit codes: 0 success, 2 bad usage, unreadable input, or TensorRT/GPU/plugin unavailable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.trt_build import (
    DEFAULT_MAX_HW,
    DEFAULT_MIN_HW,
    DEFAULT_OPT_HW,
    BuildOptions,
    build,
    parse_hw,
)
from export.trt_build import format_hw as _hw
from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_OK


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m export.to_trt", __doc__)
    p.add_argument(
        "model", help="checkpoint (.pth, ours or mmdet's) or ONNX file exported by cornernet-deploy (.onnx)"
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="engine file, .plan or .engine (default: next to MODEL, NAME.plan or NAME.fp16.plan)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 engine: TensorRT 10 sets BuilderFlag.FP16; TensorRT 11 (no such flag) builds from an fp16 ONNX (NAME.fp16.onnx)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 engine from an int8 Q/DQ ONNX (python -m export.quantize MODEL.onnx --calib DATA); "
        "built strongly typed on TensorRT 10 and 11, no calibrator",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="let fp32 layers use TF32 tensor cores (faster on Ampere and newer, ~1e-3 relative error); "
        "off by default so that an fp32 engine matches PyTorch fp32",
    )
    shape = p.add_argument_group("shape profile (input [N, 3, H, W], H and W after padding to 128 m - 1)")
    shape.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="maximum batch; the engine is tuned for it (default 1)",
    )
    shape.add_argument(
        "--min",
        default=_hw(DEFAULT_MIN_HW),
        metavar="HxW",
        help=f"smallest input (default {_hw(DEFAULT_MIN_HW)}: the smallest padded canvas)",
    )
    shape.add_argument(
        "--opt",
        default=_hw(DEFAULT_OPT_HW),
        metavar="HxW",
        help=f"input size TensorRT tunes for (default {_hw(DEFAULT_OPT_HW)}: 480x640, COCO's most common image, padded)",
    )
    shape.add_argument(
        "--max",
        default=_hw(DEFAULT_MAX_HW),
        metavar="HxW",
        help=f"largest input (default {_hw(DEFAULT_MAX_HW)}: COCO images are <= 640 px a side, 640 | 127 = 767)",
    )
    b = p.add_argument_group("builder")
    b.add_argument(
        "--workspace",
        type=int,
        metavar="MiB",
        help="builder workspace limit in MiB (default: TensorRT's, all device memory)",
    )
    b.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="persistent timing cache, read before and updated after the build (default ~/.cache/cornernet/trt-VERSION-GPU-smCC.timing-cache)",
    )
    b.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    b.add_argument(
        "--outputs",
        choices=("proposals", "heads"),
        default="proposals",
        help="graph outputs: the 8 proposal tensors (default) or the 6 raw heads",
    )
    b.add_argument("--opset", type=int, default=18, help="ONNX opset of the export (default 18)")
    b.add_argument("--device", help="cuda or cuda:N (default cuda:0)")
    b.add_argument(
        "--plugin",
        metavar="PATH",
        help="prebuilt CornerPool plugin library (default $CORNERNET_TRT_PLUGIN, else the one of "
        "python -m trt_plugins.build, built first when missing or older than its sources)",
    )
    b.add_argument("--no-check", action="store_true", help="skip loading and running the built engine once")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Command-line flags -> :class:`BuildOptions` (``UserError`` for malformed values)."""
    return BuildOptions(
        fp16=args.fp16,
        int8=args.int8,
        tf32=args.tf32,
        batch=args.batch,
        min_hw=parse_hw(args.min, "--min"),
        opt_hw=parse_hw(args.opt, "--opt"),
        max_hw=parse_hw(args.max, "--max"),
        workspace_mib=args.workspace,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        use_timing_cache=not args.no_timing_cache,
        outputs=args.outputs,
        opset=args.opset,
        device=args.device,
        verbose=args.verbose,
        check=not args.no_check,
        plugin=Path(args.plugin) if args.plugin else None,
    )


def run(args: argparse.Namespace) -> int:
    engine, sidecar = build(args.model, args.out, options_from_args(args))
    print(f"engine   {engine} ({sidecar.precision}, TensorRT {sidecar.tensorrt_version}, {sidecar.gpu.name})")
    print(f"next     python -m runtime.eval {engine} --coco DIR --verify")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
