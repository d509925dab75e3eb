"""``python -m export.check MODEL.onnx --against CHECKPOINT.pth``: ONNX Runtime vs PyTorch, same inputs.

Feeds identical inputs to both (random normalised tensors at several padded sizes, square and not,
and real images through the shared pre-processing), then prints a Polygraphy-style verdict per
output and the detections difference under the project's matching rule.

Examples::

    python -m export.check cornernet.onnx                     # checkpoint from the file's metadata
    python -m export.check cornernet.onnx --against cornernet.pth --images ../shared/golden/coco/images
    python -m export.check cornernet.fp16.onnx --sizes 511x767 2x383x511 --atol 0.05

What is compared (``runtime.compare.Comparison``): float outputs by max abs error against ``--atol``
(default 1e-4 for fp32 files); proposal indices (``*_inds``) by the fraction that agree
(``--min-agree``, default 0.99), ties in top-k may legitimately swap a few; embeddings and offsets
only where both picked the same corner; detections with ``runtime.matching.match_detections``
(same label, IoU >= 0.999, |score diff| <= 1e-4, >= 99% matched, equal counts per image).
fp16 files default to loose, smoke-level output bounds (atol 0.1, indices 0.5) and report detections without
failing on them: judge an fp16 model by ΔAP (``python -m runtime.eval MODEL --verify``).

Exit codes: 0 every check passed, 1 a check failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend
from runtime.cli import parser_from_doc, run_cli
from runtime.compare import Comparison, OutputError, format_output_table
from runtime.decode import HEAD_OUTPUTS
from runtime.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Random-input shapes ``[N,] H x W``: non-square both ways, a batch of 2, and several (h|127, w|127) sizes.
DEFAULT_SIZES = ("255x383", "383x255", "2x127x255")
DEFAULT_IMAGES = 4  # synthetic images generated when --images is not given
MIN_MATCH = 0.99  # contracts.md matching rule


@dataclass(frozen=True)
class Tolerances:
    """Pass criteria; :meth:`for_precision` gives the defaults."""

    atol: float
    min_agree: float
    strict_detections: bool  # fail on the matching rule (fp32) or only report it (fp16)

    @classmethod
    def for_precision(
        cls, precision: str, atol: float | None = None, min_agree: float | None = None
    ) -> Tolerances:
        fp32 = precision == "fp32"
        return cls(
            atol=atol if atol is not None else (1e-4 if fp32 else 1e-1),
            min_agree=min_agree if min_agree is not None else (0.99 if fp32 else 0.5),
            strict_detections=fp32,
        )


@dataclass
class Verdict:
    name: str
    passed: bool
    line: str


@dataclass
class CheckResult:
    """Everything :func:`check_onnx` measured."""

    comparison: Comparison
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def report(self) -> str:
        lines = [v.line for v in self.verdicts]
        lines.append(f"{sum(v.passed for v in self.verdicts)}/{len(self.verdicts)} passed")
        return "\n".join(lines)


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


def _output_verdict(e: OutputError, tol: Tolerances) -> Verdict:
    if e.integer:
        agree = e.agree / max(e.count, 1)
        ok = agree >= tol.min_agree
        line = f"{'PASSED' if ok else 'FAILED'} | {e.name:<10} | {100 * agree:6.2f}% equal | need {100 * tol.min_agree:.0f}%"
        return Verdict(e.name, ok, line)
    ok = e.non_finite == 0 and e.max_abs <= tol.atol
    extra = f" | {e.non_finite} non-finite" if e.non_finite else ""
    compared = "" if e.count else " | nothing compared (no agreeing indices)"
    line = (
        f"{'PASSED' if ok else 'FAILED'} | {e.name:<10} | max abs {e.max_abs:.2e} | max rel {e.max_rel:.2e} "
        f"| atol {tol.atol:.0e}{extra}{compared}"
    )
    return Verdict(e.name, ok, line)


def judge(comparison: Comparison, tol: Tolerances) -> list[Verdict]:
    """One verdict per output, plus one for detections when images were compared."""
    verdicts = [_output_verdict(e, tol) for e in comparison.outputs.values()]
    if comparison.images:
        c = comparison
        ok_rule = c.match_rate >= MIN_MATCH and c.images_with_equal_counts == c.images
        ok = ok_rule or not tol.strict_detections
        note = "" if tol.strict_detections else " (reported only for fp16)"
        verdicts.append(
            Verdict(
                "detections",
                ok,
                f"{'PASSED' if ok else 'FAILED'} | detections | {c.matched}/{c.ref_detections} matched "
                f"({100 * c.match_rate:.2f}%), counts equal on {c.images_with_equal_counts}/{c.images} images{note}",
            )
        )
    return verdicts


def _image_files(images: Path, limit: int | None) -> list[Path]:
    if not images.is_dir():
        raise UserError(f"--images {images}: not a directory")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--images {images}: holds no .jpg/.png/.bmp images")
    return files[:limit] if limit else files


def _synthetic_images(folder: Path, count: int) -> list[Path]:
    """A few generated shape images (various sizes, hence several padded shapes)."""
    from trainer.data.synthetic import generate

    paths = generate(folder, num_train=1, num_val=count, seed=0)
    return sorted(Path(paths["val_images"]).glob("*.jpg"))


def _resolve_reference(onnx_backend: Backend, against: str | Path | None) -> Path:
    """``--against``, or the source checkpoint recorded in the ONNX metadata (same sha256)."""
    from trainer.checkpoint import sha256_file

    if against is not None:
        path = Path(against)
        if not path.is_file():
            raise UserError(f"--against {path}: checkpoint not found; check the path")
        return path
    path_text, sha = onnx_backend.info.get("source_checkpoint"), onnx_backend.info.get("source_sha256")
    if not path_text:
        raise UserError("the ONNX file records no source checkpoint; pass --against CHECKPOINT.pth")
    path = Path(path_text)
    if not path.is_file():
        raise UserError(
            f"the source checkpoint {path} recorded in the ONNX file is not there; pass --against CHECKPOINT.pth"
        )
    if sha and sha256_file(path) != sha:
        raise UserError(
            f"{path} is not the checkpoint the ONNX file was exported from (sha256 differs); pass --against CHECKPOINT.pth"
        )
    return path


def check_onnx(
    onnx_path: str | Path,
    against: str | Path | None = None,
    sizes: Sequence[str] = DEFAULT_SIZES,
    images: str | Path | None = None,
    limit: int | None = None,
    atol: float | None = None,
    min_agree: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> CheckResult:
    """Run ``onnx_path`` in ONNX Runtime (CPU) and the checkpoint in PyTorch (CPU) on the same inputs.

    Args:
        onnx_path: a file written by ``export.to_onnx`` (its metadata gives classes and test settings).
        against: reference checkpoint; default the source checkpoint in the metadata.
        sizes: random-input shapes, ``"HxW"`` or ``"NxHxW"``.
        images: folder of images to run through the real pre-processing and decoding;
            default :data:`DEFAULT_IMAGES` generated synthetic images.
        limit: at most this many images from ``images``.
        atol, min_agree: override :meth:`Tolerances.for_precision`.
        seed: seed of the random inputs.
        log: where progress lines go.

    Raises:
        UserError: unreadable files, mismatched classes, bad sizes.
    """
    from runtime.backends.onnxruntime import OnnxRuntimeBackend
    from runtime.backends.pytorch import PyTorchBackend
    from runtime.matching import match_detections
    from runtime.pipeline import prepare, run_batch
    from runtime.preprocess import feature_shape

    shapes = [parse_size(s) for s in sizes]
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    test = OnnxRuntimeBackend(onnx_path, device="cpu")
    ref_path = _resolve_reference(test, against)
    kind = "heads" if all(n in test.output_names for n in HEAD_OUTPUTS) else "proposals"
    ref = PyTorchBackend(ref_path, device="cpu", outputs=kind, dtype="fp32")
    if tuple(ref.meta.classes) != tuple(test.meta.classes):
        raise UserError(
            f"{onnx_path} has {test.meta.num_classes} classes and {ref_path} {ref.meta.num_classes} (or other names); "
            "they are different models: pass the checkpoint this file was exported from"
        )
    if test.info.get("source_sha256") and test.info["source_sha256"] != ref.info["checkpoint_sha256"]:
        log(f"note: {ref_path} is not the checkpoint recorded in {onnx_path} (sha256 differs)")
    precision = str(test.info.get("precision", "fp32"))
    tol = Tolerances.for_precision(precision, atol, min_agree)
    log(f"check    {onnx_path} (onnxruntime CPU, {precision}, {kind}) vs {ref_path} (pytorch fp32, CPU)")

    comparison = Comparison()
    k = test.meta.test_cfg.corner_topk
    rng = np.random.default_rng(seed)
    for n, h, w in shapes:
        fh, fw = feature_shape(h, w)
        if kind == "proposals" and test.meta.num_classes * fh * fw < k:
            raise UserError(
                f"--sizes {h}x{w}: {fh}x{fw} feature maps hold fewer than top-k = {k} corners; use a larger size"
            )
        x = rng.standard_normal((n, 3, h, w), dtype=np.float32)
        t0 = time.perf_counter()
        want, got = ref.infer(x), test.infer(x)
        comparison.add_outputs(want, got)
        this = Comparison()
        this.add_outputs(want, got)
        worst = max((e for e in this.outputs.values() if not e.integer), key=lambda e: e.max_abs)
        log(
            f"random   {n}x3x{h}x{w}: largest error {worst.name} {worst.max_abs:.2e} ({time.perf_counter() - t0:.1f} s)"
        )

    with tempfile.TemporaryDirectory(prefix="export-check-") as tmp:
        files = (
            _image_files(Path(images), limit)
            if images is not None
            else _synthetic_images(Path(tmp), DEFAULT_IMAGES)
        )
        for i, path in enumerate(files):
            prepared = prepare(i, path, test.meta, flip=False)
            got, want = run_batch(test, [prepared]), run_batch(ref, [prepared])
            comparison.add_outputs(want.outputs, got.outputs)
            comparison.add_detections(want.detections[0], got.detections[0])
            h, w = prepared.pad_shape
            log(f"image    {path.name} ({h}x{w}): {match_detections(want.detections[0], got.detections[0])}")
    test.close()
    ref.close()
    return CheckResult(comparison, judge(comparison, tol))


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
    p.add_argument(
        "--atol", type=float, help="max abs error allowed on float outputs (default 1e-4 fp32, 0.1 fp16)"
    )
    p.add_argument(
        "--min-agree",
        type=float,
        metavar="FRAC",
        help="fraction of equal proposal indices required (default 0.99 fp32, 0.5 fp16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    return p


def run(args: argparse.Namespace) -> int:
    result = check_onnx(
        args.model, args.against, args.sizes, args.images, args.limit, args.atol, args.min_agree, args.seed
    )
    print(format_output_table(result.comparison))
    print(result.report())
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
