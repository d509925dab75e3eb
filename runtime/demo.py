"""``python -m runtime.demo``: the whole path on the embedded data set, on CPU, in a few minutes.

1. generate the small COCO-format set (``trainer.data.synthetic``) unless it is there;
2. train the ``tiny`` preset on CPU;
3. evaluate the checkpoint (PyTorch);
4. export it to ONNX (corner pooling as ``cornernet::CornerPool`` with its standard-op fallback);
5. evaluate the ONNX file (ONNX Runtime) and verify it against PyTorch fp32;
6. print one table: AP, AP50, fps per backend and ΔAP.

Example::

    python -m runtime.demo                       # everything under runs/demo
    python -m runtime.demo --epochs 14 --out-dir /tmp/demo   # the tiny preset's full schedule
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m runtime.demo", __doc__)
    p.add_argument(
        "--data",
        default="data/synthetic",
        metavar="DIR",
        help="where the generated set lives (default: data/synthetic)",
    )
    p.add_argument(
        "--out-dir",
        default="runs/demo",
        metavar="DIR",
        help="checkpoints, ONNX file and reports (default: runs/demo)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=6,
        metavar="N",
        help="tiny-preset epochs of 20 steps x 8 images (default: 6)",
    )
    p.add_argument(
        "--num-train", type=int, default=160, metavar="N", help="generated training images (default: 160)"
    )
    p.add_argument(
        "--num-val", type=int, default=40, metavar="N", help="generated validation images (default: 40)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _run(fn: Callable[[list[str]], int], argv: list[str]) -> int:
    code = fn(argv)
    if code not in (EXIT_OK, EXIT_CHECK_FAILED):
        raise UserError(f"step failed: {' '.join(argv)} (exit {code})")
    return code


def run(args: argparse.Namespace) -> int:
    from export.to_onnx import main as to_onnx
    from runtime.eval import main as evaluate
    from trainer.data.synthetic import generate
    from trainer.train import main as train

    t0 = time.perf_counter()
    data, out = Path(args.data), Path(args.out_dir)
    progress = ["--no-progress"] if args.no_progress else []

    _step(f"1/5 data: {data}")
    if (data / "annotations" / "instances_val2017.json").is_file():
        print("already there")
    else:
        generate(data, num_train=args.num_train, num_val=args.num_val, seed=0, progress=not args.no_progress)

    _step("2/5 train the tiny preset on CPU")
    train_dir = out / "train"
    _run(
        train,
        [
            "--preset",
            "tiny",
            "--gpus",
            "0",
            "--coco",
            str(data),
            "--epochs",
            str(args.epochs),
            "--out-dir",
            str(train_dir),
            "--eval-interval",
            "0",
            *progress,
        ],
    )
    ckpt = train_dir / f"epoch_{args.epochs}.pth"

    _step("3/5 evaluate the checkpoint (PyTorch, CPU)")
    pth_report = out / "eval_pth.json"
    _run(
        evaluate, [str(ckpt), "--coco", str(data), "--device", "cpu", "--report", str(pth_report), *progress]
    )

    _step("4/5 export to ONNX")
    onnx_path = out / "tiny.onnx"
    _run(to_onnx, [str(ckpt), "--out", str(onnx_path)])

    _step("5/5 evaluate the ONNX file (ONNX Runtime) and verify it against PyTorch fp32")
    onnx_report = out / "eval_onnx.json"
    code = _run(
        evaluate, [str(onnx_path), "--coco", str(data), "--verify", "--report", str(onnx_report), *progress]
    )

    pth, ort = json.loads(pth_report.read_text()), json.loads(onnx_report.read_text())
    dap = ort["verify"]["delta_ap"]
    print(f"\n{'backend':<22} {'AP':>6} {'AP50':>6} {'fps':>7} {'ΔAP vs PyTorch':>15}")
    print(
        f"{'PyTorch (CPU)':<22} {100 * pth['stats']['AP']:>6.1f} {100 * pth['stats']['AP50']:>6.1f} {pth['timings']['fps']:>7.2f} {'-':>15}"
    )
    print(
        f"{'ONNX Runtime (CPU)':<22} {100 * ort['stats']['AP']:>6.1f} {100 * ort['stats']['AP50']:>6.1f} {ort['timings']['fps']:>7.2f} {dap['AP']:>+15.3f}"
    )
    print(
        f"\nverification {'PASSED' if ort['verify']['passed'] else 'FAILED'}; {time.perf_counter() - t0:.0f} s in all; files in {out}"
    )
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
