"""``python -m export.check MODEL.onnx --against CHECKPOINT.pth``: ONNX Runtime vs PyTorch, same inputs.

Feeds identical inputs to both (random normalised tensors at several padded sizes, square and not,
and real images through the shared pre-processing) and judges them with the project's one verifier,
:mod:`runtime.verify`: every output finite, every output within its tolerance (top-k corners
compared corner by corner, index agreement with near-ties excluded), and the decoded detections
under the contract's matching rule. It prints a Polygraphy-style line per criterion and ``k/n passed``.

Examples::

    python -m export.check cornernet.onnx                     # checkpoint from the file's metadata
    python -m export.check cornernet.onnx --against cornernet.pth --images ../shared/golden/coco/images
    python -m export.check cornernet.fp16.onnx --sizes 511x767 2x383x511 --tol scores=5e-3

The tolerances are the precision's defaults (``runtime/verify.py`` documents them: fp32 tight, fp16
looser); ``--rules`` picks another precision's, ``--tol NAME=ATOL[,RTOL]`` overrides one output.

Exit codes: 0 every check passed, 1 a check failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError
from runtime.image_io import IMAGE_SUFFIXES
from runtime.verify import PRECISIONS, Tolerances, Verdict, Verifier, parse_tol, resolve_reference

#: Random-input shapes ``[N,] H x W``: non-square both ways, a batch of 2, and several (h|127, w|127) sizes.
DEFAULT_SIZES = ("255x383", "383x255", "2x127x255")
DEFAULT_IMAGES = 4  # synthetic images generated when --images is not given


def parse_size(text: str) -> tuple[int, int, int]:
    """``"HxW"`` or ``"NxHxW"`` -> ``(N, H, W)``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts = [1, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(
            f"--sizes {text!r}: expected HxW or NxHxW with positive integers, e.g. 255x383 or 2x383x511"
        )
    return parts[0], parts[1], parts[2]


def _image_files(images: Path, limit: int | None) -> list[Path]:
    if not images.is_dir():
        raise UserError(f"--images {images}: not a directory")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--images {images}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
    return files[:limit] if limit else files


def _synthetic_images(folder: Path, count: int) -> list[Path]:
    """A few generated shape images (various sizes, hence several padded shapes)."""
    from trainer.data.synthetic import generate

    paths = generate(folder, num_train=1, num_val=count, seed=0)
    return sorted(Path(paths["val_images"]).glob("*.jpg"))


def check_onnx(
    onnx_path: str | Path,
    against: str | Path | None = None,
    sizes: Sequence[str] = DEFAULT_SIZES,
    images: str | Path | None = None,
    limit: int | None = None,
    rules: str | None = None,
    overrides: dict[str, tuple[float | None, float | None]] | None = None,
    min_match: float | None = None,
    min_agree: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Verdict:
    """Run ``onnx_path`` in ONNX Runtime (CPU) and the checkpoint in PyTorch fp32 (CPU) on the same inputs.

    Args:
        onnx_path: a file written by ``export.to_onnx`` (its metadata gives classes and test settings).
        against: reference checkpoint; default the source checkpoint in the metadata.
        sizes: random-input shapes, ``"HxW"`` or ``"NxHxW"``.
        images: folder of images to run through the real pre-processing and decoding;
            default :data:`DEFAULT_IMAGES` generated synthetic images.
        limit: at most this many images from ``images``.
        rules: judge by this precision's tolerances (default: the file's precision).
        overrides, min_match, min_agree: passed to :meth:`Tolerances.for_precision`.
        seed: seed of the random inputs.
        log: where progress lines go.

    Raises:
        UserError: unreadable files, mismatched classes, bad sizes.
    """
    from runtime.detector import Detector
    from runtime.preprocess import feature_shape

    shapes = [parse_size(s) for s in sizes]
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    with contextlib.ExitStack() as stack:
        test = stack.enter_context(Detector(onnx_path, device="cpu", workers=0))
        ref_path = resolve_reference(None if against is None else str(against), test.info, "--against")
        # Raw maps from the reference: the verifier takes top-k from them and needs the heatmaps.
        ref = stack.enter_context(Detector(ref_path, device="cpu", workers=0, outputs="heads", dtype="fp32"))
        if tuple(ref.meta.classes) != tuple(test.meta.classes):
            raise UserError(
                f"{onnx_path} has {test.meta.num_classes} classes and {ref_path} {ref.meta.num_classes} (or other "
                "names); they are different models: pass the checkpoint this file was exported from"
            )
        if test.info.get("source_sha256") and test.info["source_sha256"] != ref.info["checkpoint_sha256"]:
            log(f"note: {ref_path} is not the checkpoint recorded in {onnx_path} (sha256 differs)")
        precision = str(test.info.get("precision", "fp32"))
        tol = Tolerances.for_precision(
            rules or (precision if precision in PRECISIONS else "fp32"),
            overrides,
            min_match=min_match,
            min_index_agreement=min_agree,
        )
        log(f"check    {onnx_path} (onnxruntime CPU, {precision}) vs {ref_path} (pytorch fp32, CPU); {tol.precision} rules")

        verifier = Verifier(tol)
        k = test.meta.test_cfg.corner_topk
        rng = np.random.default_rng(seed)
        assert test.backend is not None and ref.backend is not None
        for n, h, w in shapes:
            fh, fw = feature_shape(h, w)
            if test.meta.num_classes * fh * fw < k:
                raise UserError(
                    f"--sizes {h}x{w}: {fh}x{fw} feature maps hold fewer than top-k = {k} corners; use a larger size"
                )
            x = rng.standard_normal((n, 3, h, w), dtype=np.float32)
            t0 = time.perf_counter()
            verifier.add_outputs(ref.backend.infer(x), test.backend.infer(x))
            log(f"random   {n}x3x{h}x{w} ({time.perf_counter() - t0:.1f} s)")

        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="export-check-"))
        files = _image_files(Path(images), limit) if images is not None else _synthetic_images(Path(tmp), DEFAULT_IMAGES)
        paths = [str(f) for f in files]
        for got, want in zip(test.stream(paths, keep_outputs=True), ref.stream(paths, keep_outputs=True), strict=True):
            assert got.outputs is not None and want.outputs is not None
            verifier.add_outputs(want.outputs, got.outputs)
            verifier.add_detections(want.detections(), got.detections())
            log(f"image    {Path(str(got.source)).name}: {len(want)} reference, {len(got)} tested detections")
        return verifier.verdict()


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m export.check", __doc__)
    p.add_argument("model", help="ONNX file written by python -m export.to_onnx")
    p.add_argument(
        "--against",
        metavar="CKPT",
        help="reference checkpoint (default: the source checkpoint in the file's metadata)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        default=list(DEFAULT_SIZES),
        metavar="[N]xHxW",
        help=f"random-input shapes (default: {' '.join(DEFAULT_SIZES)})",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help=f"images to compare end to end (default: {DEFAULT_IMAGES} generated synthetic images)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="use at most N images from --images")
    p.add_argument("--rules", choices=PRECISIONS, help="judge by this precision's tolerances (default: the file's)")
    p.add_argument(
        "--tol",
        action="append",
        metavar="NAME=ATOL[,RTOL]",
        help="override one output's tolerance (an output such as tl_scores, a kind such as offs, or all); repeatable",
    )
    p.add_argument(
        "--min-agree",
        type=float,
        metavar="FRAC",
        help="fraction of unambiguous top-k corners that must agree (default 0.99 fp32, 0.95 fp16)",
    )
    p.add_argument(
        "--min-match",
        type=float,
        metavar="FRAC",
        help="fraction of unambiguous reference detections that must match (default 0.99 fp32, 0.95 fp16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    return p


def run(args: argparse.Namespace) -> int:
    verdict = check_onnx(
        args.model,
        args.against,
        args.sizes,
        args.images,
        args.limit,
        args.rules,
        parse_tol(args.tol),
        args.min_match,
        args.min_agree,
        args.seed,
    )
    print(verdict.table())
    return EXIT_OK if verdict.passed else EXIT_CHECK_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
