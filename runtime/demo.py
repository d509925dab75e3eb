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
import sys
import time
from pathlib import Path

from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_OK, UserError


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


def run(args: argparse.Namespace) -> int:
    from export.onnx_export import export_onnx
    from runtime.eval import EvalOptions, evaluate_model
    from trainer.config import preset
    from trainer.data.synthetic import generate
    from trainer.train import train

    t0 = time.perf_counter()
    data, out = Path(args.data), Path(args.out_dir)
    progress = not args.no_progress
    val_ann, val_images = data / "annotations" / "instances_val2017.json", data / "val2017"

    _step(f"1/5 data: {data}")
    if val_ann.is_file():
        print("already there")
    else:
        generate(data, num_train=args.num_train, num_val=args.num_val, seed=0, progress=progress)

    _step("2/5 train the tiny preset on CPU")
    train_dir = out / "train"
    cfg = preset("tiny").replace(
        train_ann=str(data / "annotations" / "instances_train2017.json"),
        train_images=str(data / "train2017"),
        epochs=args.epochs,
        out_dir=str(train_dir),
        eval_interval=0,
    )
    if train(cfg, gpus=0, progress=progress) != EXIT_OK:
        raise UserError(f"training failed; see {train_dir / 'log.jsonl'}")
    ckpt = train_dir / f"epoch_{args.epochs}.pth"

    _step("3/5 evaluate the checkpoint (PyTorch, CPU)")
    _, pth = evaluate_model(
        ckpt, val_ann, val_images, EvalOptions(device="cpu", progress=progress, report=str(out / "eval_pth.json"))
    )

    _step("4/5 export to ONNX")
    onnx_path = export_onnx(ckpt, out / "tiny.onnx")
    print(f"wrote    {onnx_path}")

    _step("5/5 evaluate the ONNX file (ONNX Runtime) and verify it against PyTorch fp32")
    code, ort = evaluate_model(
        onnx_path,
        val_ann,
        val_images,
        EvalOptions(verify="auto", progress=progress, report=str(out / "eval_onnx.json")),
    )

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
