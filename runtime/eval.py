"""``python -m runtime.eval MODEL --coco DIR``: COCO mAP of a checkpoint, ONNX file or TensorRT engine.

Examples::

    python -m runtime.eval checkpoint.pth --coco data/coco
    python -m runtime.eval model.onnx --ann ../shared/golden/coco/annotations.json --images ../shared/golden/coco/images
    python -m runtime.eval engine.plan --coco data/coco --batch 8 --verify checkpoint.pth --report report.json
    python -m runtime.eval model.fp16.onnx --coco data/coco --verify --pictures verify_pictures/

Exit codes: 0 success, 1 verification beyond tolerance, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from runtime.backends import backend_options
from runtime.cli import parser_from_doc, run_cli, write_json
from runtime.coco import (
    CocoSet,
    check_classes,
    evaluate,
    format_stats,
    load_coco_set,
    resolve_coco_paths,
    to_coco_results,
)
from runtime.decode import Detections
from runtime.detector import Detector
from runtime.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError
from runtime.verify import (
    PRECISIONS,
    Tolerances,
    Verifier,
    delta_ap,
    format_ap_table,
    parse_tol,
    resolve_reference,
)
from runtime.verify_pictures import DEFAULT_COUNT, write_verify_pictures


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc(
        "python -m runtime.eval",
        __doc__,
        "The backend follows the file suffix: .pth (PyTorch), .onnx (ONNX Runtime), .plan (TensorRT).",
    )
    p.add_argument(
        "model", help="checkpoint (.pth, ours or mmdet's), ONNX file (.onnx) or TensorRT engine (.plan)"
    )
    data = p.add_argument_group("data (COCO format)")
    data.add_argument(
        "--coco", metavar="DIR", help="COCO layout: DIR/annotations/instances_val2017.json + DIR/val2017/"
    )
    data.add_argument("--ann", metavar="FILE", help="any COCO-format annotation file (with --images)")
    data.add_argument("--images", metavar="DIR", help="folder holding the images the annotation file names")
    data.add_argument(
        "--limit", type=int, metavar="N", help="evaluate only the first N images (sorted by id)"
    )
    run = p.add_argument_group("inference")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument(
        "--flip", action="store_true", help="flip test-time augmentation (mmdet's merge; the published 41.2)"
    )
    run.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="images per inference; only images with the same padded shape share a batch (default 1)",
    )
    run.add_argument(
        "--cuda-graph",
        action="store_true",
        help="TensorRT engines: replay a captured CUDA graph per input shape (less launch overhead)",
    )
    run.add_argument(
        "--plugin",
        metavar="LIB",
        help="TensorRT engines: the CornerPool plugin library (default: $CORNERNET_TRT_PLUGIN, else the one recorded at build time)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="pre-processing threads overlapped with inference (default 2)",
    )
    out = p.add_argument_group("outputs")
    out.add_argument(
        "--out", metavar="FILE", help="write COCO results JSON (every detection, at most 100 per image)"
    )
    out.add_argument(
        "--report", metavar="FILE", help="write a JSON report: stats, timings, and the verification"
    )
    out.add_argument(
        "--evaluator",
        choices=("faster-coco-eval", "pycocotools"),
        default="faster-coco-eval",
        help="COCO scorer (identical numbers; faster-coco-eval is ~12x faster)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    ver = p.add_argument_group("verification against PyTorch fp32")
    ver.add_argument(
        "--verify",
        nargs="?",
        const="auto",
        metavar="CKPT",
        help="also run this checkpoint in PyTorch fp32 on the same images and judge every output, the matched "
        "detections and ΔAP (runtime.verify; exit 1 when any criterion fails); without CKPT, the source "
        "checkpoint recorded in the model's metadata (if present with the same sha256)",
    )
    ver.add_argument(
        "--rules",
        choices=PRECISIONS,
        help="judge by this precision's default tolerances (default: the model's precision)",
    )
    ver.add_argument(
        "--tol",
        action="append",
        metavar="NAME=ATOL[,RTOL]",
        help="override one output's tolerance (NAME: an output such as tl_scores, a kind such as offs, or all); "
        "repeatable",
    )
    ver.add_argument(
        "--ap-tol",
        type=float,
        metavar="PTS",
        help="allowed |ΔAP| in AP points (default 0.01 for fp32, 0.3 for fp16/bf16)",
    )
    ver.add_argument(
        "--min-match",
        type=float,
        metavar="FRAC",
        help="required fraction of matched reference detections (default 0.99 fp32, 0.95 fp16; near-tie "
        "detections are left out, see runtime/verify.py)",
    )
    ver.add_argument(
        "--pictures",
        metavar="DIR",
        help="with --verify: write side-by-side PNGs (PyTorch fp32 | this backend, scores >= 0.3) "
        "of the images whose detections differ most",
    )
    ver.add_argument(
        "--pictures-count",
        type=int,
        default=DEFAULT_COUNT,
        metavar="K",
        help=f"how many pictures --pictures writes (default {DEFAULT_COUNT})",
    )
    return p


@dataclass
class EvalOptions:
    """What ``runtime.eval`` can be asked; the command-line flags of the same names (see ``--help``)."""

    device: str | None = None
    flip: bool = False
    batch: int = 1
    workers: int = 2
    cuda_graph: bool = False
    plugin: str | None = None
    limit: int | None = None
    evaluator: str = "faster-coco-eval"
    progress: bool = True
    verify: str | None = None  # a checkpoint, or "auto": the one recorded in the model
    rules: str | None = None
    tol: list[str] | None = None
    ap_tol: float | None = None
    min_match: float | None = None
    pictures: str | None = None
    pictures_count: int = DEFAULT_COUNT
    out: str | None = None
    report: str | None = None


def evaluate_model(model: str | Path, ann: str | Path, images: str | Path, opts: EvalOptions) -> tuple[int, dict[str, Any]]:
    """COCO mAP of ``model`` on a COCO-format set, optionally verified against PyTorch fp32.

    The library form of ``python -m runtime.eval``: prints the same lines, writes ``opts.out`` /
    ``opts.report`` when given, and returns ``(exit code, report)`` (exit 1 when verification fails).

    Raises:
        UserError: unreadable model, annotation file or images, bad options.
    """
    coco: CocoSet = load_coco_set(Path(ann), Path(images))
    if opts.batch < 1 or opts.workers < 0 or (opts.limit is not None and opts.limit < 1):
        raise UserError("--batch and --limit must be at least 1, --workers at least 0")
    if opts.pictures and (not opts.verify or opts.pictures_count < 1):
        raise UserError(
            "--pictures DIR needs --verify (it draws PyTorch fp32 beside the backend) and --pictures-count >= 1"
        )
    chosen = coco.images[: opts.limit] if opts.limit else coco.images
    if not chosen:
        raise UserError(f"{coco.ann_file}: lists no images; nothing to evaluate")

    with contextlib.ExitStack() as resources:  # every model closed on every path
        det = resources.enter_context(
            Detector(
                model,
                device=opts.device,
                flip=opts.flip,
                batch_size=opts.batch,
                workers=opts.workers,
                **backend_options(model, cuda_graph=opts.cuda_graph, plugin=opts.plugin),
            )
        )
        return _evaluate(str(model), opts, coco, chosen, det, resources)


def run(args: argparse.Namespace) -> int:
    ann, img_dir = resolve_coco_paths(args.coco, args.ann, args.images)
    opts = EvalOptions(**{f.name: getattr(args, f.name) for f in fields(EvalOptions) if hasattr(args, f.name)})
    opts.progress = not args.no_progress
    return evaluate_model(args.model, ann, img_dir, opts)[0]


def _evaluate(
    model: str,
    opts: EvalOptions,
    coco: CocoSet,
    images: list[Any],
    det: Detector,
    resources: contextlib.ExitStack,
) -> tuple[int, dict[str, Any]]:
    img_dir = coco.image_dir
    if not any(img_dir.iterdir()):
        raise UserError(
            f"{img_dir}: image folder is empty; pass the folder that holds the images {coco.ann_file.name} lists"
        )
    check_classes(coco, det.meta.classes, model)
    reference = None
    if opts.verify:
        ref_path = resolve_reference(opts.verify, det.info)
        # The reference always gives its raw maps: the verifier takes top-k from them and needs the
        # heatmaps for its near-tie rule.
        reference = resources.enter_context(
            Detector(
                ref_path,
                device=opts.device,
                flip=opts.flip,
                batch_size=opts.batch,
                workers=opts.workers,
                outputs="heads",
                dtype="fp32",
            )
        )
        check_classes(coco, reference.meta.classes, str(ref_path))

    print(f"model    {model} ({det.name}, {det.info.get('precision', 'fp32')})")
    print(f"data     {coco.ann_file} ({len(images)} images, {coco.num_annotations} annotations)")
    if reference is not None:
        print(f"verify   against {ref_path} (pytorch fp32, {reference.info['device']})")

    skipped: list[str] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append(path)
        tqdm.write(f"warning: skipping {reason}", file=sys.stderr)

    precision = str(det.info.get("precision", "fp32"))
    verifier = Verifier(
        Tolerances.for_precision(
            opts.rules or (precision if precision in PRECISIONS else "fp32"),
            parse_tol(opts.tol),
            ap_tol=opts.ap_tol,
            min_match=opts.min_match,
        )
    )
    dets: dict[int, Detections] = {}
    ref_dets: dict[int, Detections] = {}
    ids = {str(im.path): im.id for im in images}
    paths = [im.path for im in images]
    bar = tqdm(
        total=len(paths),
        desc="eval",
        unit="img",
        disable=not opts.progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    verifying = reference is not None
    results = det.stream(paths, keep_outputs=verifying, on_skip=on_skip)
    # The reference reads the same files and skips the same unreadable ones, so both streams stay aligned.
    ref_results = reference.stream(paths, keep_outputs=True, on_skip=lambda *_: None) if verifying else None
    for res in results:
        key = ids[str(res.source)]
        dets[key] = res.detections()
        if ref_results is not None:
            ref = next(ref_results)
            if ref.source != res.source:
                raise RuntimeError(f"verify streams out of step: {ref.source} vs {res.source}")
            if res.outputs is not None and ref.outputs is not None:
                verifier.add_outputs(ref.outputs, res.outputs)
            verifier.add_detections(ref.detections(), res.detections())
            ref_dets[key] = ref.detections()
        bar.update(1)
    bar.close()
    timings = det.times
    if not dets:
        raise UserError(f"{coco.image_dir}: none of the {len(paths)} images could be read; check --images")
    if skipped:
        print(f"warning: skipped {len(skipped)} of {len(paths)} unreadable images", file=sys.stderr)

    evaluated_ids = sorted(dets)
    results = [
        r
        for k in evaluated_ids
        for r in to_coco_results(k, dets[k].boxes, dets[k].scores, dets[k].labels, coco.category_ids)
    ]
    stats = evaluate(coco, results, opts.evaluator, evaluated_ids)
    print(format_stats(stats))
    t = timings.per_image_ms()
    print(
        f"timing   pre-process {t['preprocess_ms']:.1f} ms (in {opts.workers} threads), inference {t['inference_ms']:.1f} ms, "
        f"decode {t['decode_ms']:.1f} ms per image; {t['fps']:.2f} images/s overall, network busy {100 * t['network_busy']:.0f}%"
        + (" (the reference ran alongside)" if verifying else "")
    )
    if opts.out:
        write_json(opts.out, results)
        print(f"wrote    {opts.out} ({len(results)} detections)")

    report: dict[str, Any] = {
        "model": str(model),
        "backend": det.name,
        "backend_info": det.info,
        "dataset": {
            "ann_file": str(coco.ann_file),
            "image_dir": str(coco.image_dir),
            "images": len(evaluated_ids),
            "skipped": skipped,
        },
        "flip": opts.flip,
        "batch": opts.batch,
        "stats": stats,
        "timings": t,
    }
    exit_code = EXIT_OK
    if reference is not None:
        ref_results = [
            r
            for k in evaluated_ids
            for r in to_coco_results(
                k, ref_dets[k].boxes, ref_dets[k].scores, ref_dets[k].labels, coco.category_ids
            )
        ]
        ref_stats = evaluate(coco, ref_results, opts.evaluator, evaluated_ids)
        verdict = verifier.verdict(stats, ref_stats)
        print(format_ap_table(stats, ref_stats, det.name))
        print(f"verify   {verifier.tol.precision} rules\n{verdict.table()}")
        print(
            f"verify   {'PASSED' if verdict.passed else 'FAILED'}"
            + ("" if verdict.passed else ": " + ", ".join(verdict.failed))
        )
        report["verify"] = {
            "reference": str(ref_path),
            "reference_sha256": reference.info["checkpoint_sha256"],
            "rules": verifier.tol.precision,
            **verdict.to_dict(),
            "reference_stats": ref_stats,
            "delta_ap": delta_ap(stats, ref_stats),
            "matched_rate": verifier.match_rate,
            "reasons": [c.line() for c in verdict.criteria if not c.passed],
        }
        exit_code = EXIT_OK if verdict.passed else EXIT_CHECK_FAILED
        if opts.pictures:
            pictures = write_verify_pictures(
                opts.pictures,
                {im.id: im.path for im in images},
                ref_dets,
                dets,
                det.meta.classes,
                f"{det.name} {precision}",
                opts.pictures_count,
            )
            report["verify"]["pictures"] = [str(p) for p in pictures]
            print(
                f"wrote    {len(pictures)} pictures to {opts.pictures} (PyTorch fp32 left, {det.name} right)"
            )
    if opts.report:
        write_json(opts.report, report)
        print(f"wrote    {opts.report}")
    return exit_code, report




def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
