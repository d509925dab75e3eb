"""Corner-pool speed on a GPU: our CUDA kernels next to ``flip + torch.cummax + flip`` and a log-step torch max.

    python benchmarks/bench_corner_pool.py
    python benchmarks/bench_corner_pool.py --shape 1,128,192,256 --dtype float16 --iters 200

For every shape, dtype, mode and implementation it prints the time per call (CUDA events, averaged over
``--iters`` calls after a warm-up) and the effective bandwidth: the bytes a call must move at least (read the
input once, write the output once) divided by that time, also as a share of the DRAM bandwidth given by
``--peak-gbs`` (default: the H200's 4.8 TB/s). Our kernel's output is checked against torch.cummax first. On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
H200_DRAM_GBS = 4800.0
MODE_NAMES = ["top", "bottom", "left", "right"]
DEFAULT_SHAPES = ("1,128,128,128", "1,128,192,256", "2,256,192,192", "16,128,128,128")


def corner_pool_log_step(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """Hillis-Steele running max along ``dim`` (from the end if ``reverse``) with whole-tensor ops, as in
    CornerNet-Lite's ``_cpools``: ceil(log2 L) steps."""
    length = x.shape[dim]
    y = x
    step = 1
    while step < length:
        if reverse:  # y[i] = max(y[i], y[i + step])
            head = torch.maximum(y.narrow(dim, 0, length - step), y.narrow(dim, step, length - step))
            y = torch.cat([head, y.narrow(dim, length - step, step)], dim)
        else:  # y[i] = max(y[i], y[i - step])
            tail = torch.maximum(y.narrow(dim, step, length - step), y.narrow(dim, 0, length - step))
            y = torch.cat([y.narrow(dim, 0, step), tail], dim)
        step *= 2
    return y


def time_call(function: Callable[[], object], warmup: int, iters: int) -> float:
    """Mean milliseconds per call on the current stream."""
    for _ in range(warmup):
        function()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        function()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"N,C,H,W"`` -> tuple."""
    parts = tuple(int(part) for part in text.replace("x", ",").split(","))
    if len(parts) != 4 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"shape must be N,C,H,W with positive sizes, got {text!r}")
    return parts  # type: ignore[return-value]


def make_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape", type=parse_shape, action="append", metavar="N,C,H,W",
        help=f"input shape, repeatable (default: {' '.join(DEFAULT_SHAPES)})",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], action="append",
        help="element type, repeatable (default: float32 and float16)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=MODE_NAMES, action="append", help="mode, repeatable (default: all four)"
    )
    parser.add_argument("--iters", type=int, default=50, help="timed calls per measurement (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument(
        "--peak-gbs", type=float, default=H200_DRAM_GBS,
        help=f"DRAM bandwidth in GB/s the %% column refers to (default: H200, {H200_DRAM_GBS:.0f})",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0, also without a GPU; 1 if our kernel's output is wrong)."""
    args = make_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_corner_pool: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 0

    if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(REPO_ROOT))
    from trainer.model.corner_pool import MODES, _dim_and_flip, corner_pool
    from trt_plugins import kernels

    kernels.load_library()  # build outside the timings
    shapes = args.shape or [parse_shape(text) for text in DEFAULT_SHAPES]
    dtypes = [getattr(torch, name) for name in (args.dtype or ["float32", "float16"])]
    modes = args.mode or MODE_NAMES
    print(
        f"device: {torch.cuda.get_device_name()}, peak for %: {args.peak_gbs:.0f} GB/s, {args.iters} iterations"
    )
    print(
        f"{'shape':>18} {'dtype':>9} {'mode':>6} {'implementation':>15} {'ms':>9} {'GB/s':>8} {'% peak':>7}"
    )
    failed = False
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device="cuda").to(dtype)
            out = torch.empty_like(x)
            moved = 2 * x.numel() * x.element_size()
            for mode in modes:
                dim, reverse = _dim_and_flip(MODES[mode])
                expected = corner_pool(x, MODES[mode])
                ours = kernels.corner_pool(x, mode, out=out)
                if not torch.equal(ours, expected):
                    print(f"MISMATCH: our kernel differs from torch.cummax for {mode} {shape} {dtype}")
                    failed = True
                candidates = {
                    "ours": lambda x=x, mode=mode, out=out: kernels.corner_pool(x, mode, out=out),
                    "torch.cummax": lambda x=x, mode=mode: corner_pool(x, MODES[mode]),
                    "torch log-step": lambda x=x, dim=dim, reverse=reverse: corner_pool_log_step(
                        x, dim, reverse
                    ),
                }
                for name, function in candidates.items():
                    milliseconds = time_call(function, args.warmup, args.iters)
                    gbs = moved / milliseconds / 1e6
                    shape_text = "x".join(map(str, shape))
                    print(
                        f"{shape_text:>18} {str(dtype).removeprefix('torch.'):>9} {mode:>6} {name:>15} "
                        f"{milliseconds:9.4f} {gbs:8.1f} {100 * gbs / args.peak_gbs:6.1f}%"
                    )
            del x, out
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
