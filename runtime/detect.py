"""``python -m runtime.detect MODEL IMAGE_OR_DIR --out-dir DIR``: draw a model's detections on images.

Examples::

    python -m runtime.detect checkpoint.pth photo.jpg --out-dir detections/
    python -m runtime.detect model.onnx data/coco/val2017 --out-dir detections/ --limit 20 --score-thr 0.5
    python -m runtime.detect engine.plan images/ --out-dir detections/ --flip --device cuda:1

A folder is read non-recursively; files with an image suffix (.jpg, .png, .bmp, .tif, .webp, ...)
are taken in name order and other files are left alone. Unreadable images are skipped with a
warning and counted. Gray, RGBA and 16-bit images are read as mmdet reads them (3 channels, 8 bit).
Pictures keep the input's name: JPEG for JPEG inputs, PNG for PNG inputs and for every other format
(``name.bmp`` -> ``name.bmp.png``).

Exit codes: 0 success (also when some images were skipped), 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from runtime.backends import backend_options
from runtime.cli import MODEL_HELP, parser_from_doc, run_cli
from runtime.decode import Detections
from runtime.detector import Detector
from runtime.draw import draw_detections
from runtime.errors import EXIT_OK, UserError
from runtime.image_io import IMAGE_SUFFIXES, read_image, write_image

_KEEP_SUFFIXES = (".png", ".jpg", ".jpeg")


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc(
        "python -m runtime.detect",
        __doc__,
        "The backend follows the file suffix: .pth (PyTorch), .onnx (ONNX Runtime), .plan (TensorRT).",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", metavar="IMAGE_OR_DIR", help="an image file, or a folder of images")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the pictures (created)")
    p.add_argument(
        "--score-thr",
        type=float,
        default=0.3,
        metavar="S",
        help="draw and count detections scoring at least S (default 0.3)",
    )
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation (mmdet's merge)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images of a folder (name order)")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="images per inference; only images with the same padded shape share a batch (default 1)",
    )
    p.add_argument("--plugin", metavar="LIB", help="TensorRT engines: the CornerPool plugin library")
    return p


def output_name(path: Path) -> str:
    """The picture's file name: the input's for PNG and JPEG, ``NAME.png`` for any other format."""
    return path.name if path.suffix.lower() in _KEEP_SUFFIXES else path.name + ".png"


def list_images(source: Path, limit: int | None = None) -> list[Path]:
    """The image file ``source``, or the image files in folder ``source`` in name order (at most ``limit``).

    Raises:
        UserError: ``source`` does not exist, or is a folder with no image files.
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"{source}: no such image file or folder; check the path")
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        what = f"{len(files)} files but none with an image suffix" if files else "is empty"
        raise UserError(
            f"{source}: {what}; pass a folder of images ({', '.join(sorted(_KEEP_SUFFIXES))}, ...)"
        )
    return images[:limit] if limit else images


def _summary(dets: Detections, classes: tuple[str, ...], score_thr: float) -> str:
    """``"3 detections >= 0.3 (2 cat, 1 dog)"``."""
    labels = [int(lab) for lab, s in zip(dets.labels, dets.scores, strict=True) if s >= score_thr]
    counts = Counter(classes[lab] if 0 <= lab < len(classes) else f"class{lab}" for lab in labels)
    per_class = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    noun = "detection" if len(labels) == 1 else "detections"
    return f"{len(labels)} {noun} >= {score_thr:g}" + (f" ({per_class})" if per_class else "")


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score_thr <= 1.0:
        raise UserError(f"--score-thr {args.score_thr}: must be between 0 and 1")
    if (args.limit is not None and args.limit < 1) or args.batch < 1:
        raise UserError("--limit and --batch must be at least 1")
    source, out_dir = Path(args.input), Path(args.out_dir)
    paths = list_images(source, args.limit)
    in_dir = source if source.is_dir() else source.parent
    if out_dir.resolve() == in_dir.resolve():
        raise UserError(
            f"--out-dir {out_dir}: is the folder the images are in, so the pictures would replace them; choose another folder"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"--out-dir {out_dir}: cannot create the folder ({e.strerror or e}); choose another"
        ) from None

    skipped: list[str] = []

    def on_skip(path: str, reason: str) -> None:
        if source.is_file():  # one named image that cannot be read is an error, not a warning
            raise UserError(reason)
        skipped.append(path)
        print(f"warning: skipping {reason}", file=sys.stderr)

    options = backend_options(args.model, cuda_graph=False, plugin=args.plugin)
    with Detector(args.model, device=args.device, flip=args.flip, batch_size=args.batch, **options) as det:
        t0 = time.perf_counter()
        for result in det.stream(paths, on_skip=on_skip):
            path = Path(str(result.source))
            target = out_dir / output_name(path)
            write_image(target, draw_detections(read_image(path), result.detections(), det.classes, args.score_thr))
            ms = 1e3 * (time.perf_counter() - t0)
            print(f"{path}: {_summary(result.detections(), det.classes, args.score_thr)} -> {target} ({ms:.0f} ms)")
            t0 = time.perf_counter()
    skipped_count = len(skipped)
    if skipped_count == len(paths):
        raise UserError(f"{source}: none of the {len(paths)} images could be read; see the warnings above")
    if skipped_count:
        print(f"warning: skipped {skipped_count} of {len(paths)} images (unreadable)", file=sys.stderr)
    written = len(paths) - skipped_count
    print(f"wrote    {written} picture{'' if written == 1 else 's'} to {out_dir}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
