"""``python -m export.quantize MODEL.onnx --calib DATA``: an INT8 ONNX with explicit Q/DQ, for ONNX Runtime and TensorRT.

Examples::

    python -m export.quantize model.onnx --calib data/coco                 # -> model.int8.onnx (val2017 images)
    python -m export.quantize model.onnx --calib images/ --images 200 --out hg104.int8.onnx
    python -m runtime.eval model.int8.onnx --coco data/coco --verify       # ΔAP and detections vs PyTorch fp32
    python -m export.to_trt model.int8.onnx --int8                          # the INT8 TensorRT engine

MODEL is an fp32 ONNX file from python -m export.to_onnx (either corner-pool form). DATA is a folder of
images or a COCO root (DIR/val2017/); N images spread over it are read and pre-processed exactly as at
test time (runtime.image_io + runtime.preprocess with the model's own normalisation and padding), one
at a time at their own padded size, and the activation ranges are calibrated on them. The output keeps
the model's metadata with cornernet.precision "int8", runs in ONNX Runtime on CPU (runtime.eval,
runtime.detect, Detector) and is the file export.to_trt --int8 builds from.

Exit codes: 0 success, 2 bad usage or unreadable input.

What is quantized, and how (onnxruntime.quantization.quantize_static, QDQ format):

- Every ``Conv`` of the backbone and of the head branches, the residual and skip ``Add`` nodes, the
  ``Relu`` nodes and the hourglass's nearest-neighbour ``Resize``: QuantizeLinear/DequantizeLinear
  pairs on their float tensors. Weights are int8, per output channel (axis 0), symmetric; activations
  int8, symmetric (zero point 0). TensorRT takes only symmetric int8 Q/DQ, so the same file serves both.
- Conv biases stay float (``QuantizeBias=False``): ONNX Runtime would store them as int32 behind a
  DequantizeLinear, which TensorRT's parser refuses (its DequantizeLinear takes int8/fp8/int4 inputs);
  TensorRT folds a float bias into the int8 convolution itself.

What stays float, and why:

- The corner pools (``cornernet::CornerPool`` nodes and their local-function fallback, or the
  decomposed ``Max``/``Pad``/``Slice`` scan): a running maximum is exact in any precision, so int8 gains
  nothing there, and the TensorRT plugin takes fp32/fp16 only. They read the dequantized activation.
- The last convolution of each output branch (heat, embedding, offset) and everything after it (sigmoid,
  local-max ``MaxPool``, top-k, gathers), as in the fp16 model: int8 heat logits would collapse corner
  scores into ties (256 levels over the logit range), which changes which corners survive the local-max
  test and top-k; the embeddings decide pairing through ``|tl - br| < 0.5``; offsets move boxes. These
  are 1x1 convolutions to 1-80 channels: no measurable cost.

Calibration method: ``percentile`` (99.999th percentile of |x|, symmetric), chosen by measured ΔAP.
Measured on the demo model (python -m runtime.demo, tiny preset, 6 epochs, AP 57.8): calibrated on 64
images of its train2017, evaluated on its 40 val2017 images (89 objects) with runtime.eval, ONNX Runtime
1.31 CPU; ΔAP in AP points against the fp32 ONNX (= PyTorch fp32, ΔAP 0.000), all 12 COCO stats:

    stat    minmax  percentile  entropy  | minmax, head branches float
    AP       -0.02    +0.33      -0.94   |  +0.60
    AP50     +0.37    +0.68      +1.63   |  +1.10
    AP75     -1.54    +0.11      -1.17   |  -0.85
    APs      +2.60    +1.24      +2.89   |  +1.86
    APm      -1.34    +0.67      -0.65   |  -0.28
    APl      +2.90    -0.45      -5.22   |  +2.96
    AR1      -0.60    +0.64      -0.51   |  +0.48
    AR10     -0.71    -0.26      -2.29   |   0.00
    AR100    -0.48    -0.73      -2.09   |  -0.12
    ARs      +3.33     0.00       0.00   |  +3.33
    ARm      -1.67    -0.74      -0.78   |  -1.11
    ARl       0.00    -0.83      -6.42   |   0.00
    mean |Δ|  1.30     0.56       2.05   |   1.06

Percentile has the smallest mean and worst-case |ΔAP| (11 of 12 stats within 1.0 point, APs +1.24);
entropy (KL, onnxruntime's 128 bins) clips the large-object activations too hard (APl -5.2). On 40
images one object moves a size-split stat by ~3 points, so only gaps this large are signal. Keeping
each head branch's 3x3 convolution float as well (``HEAD_CONVS = 2``) did not help beyond that noise
(percentile: AP +0.26, mean |Δ| 0.82, ARl -3.9; the same worst score error), so only the output
convolutions stay float.

Against fp32 with percentile calibration (runtime.eval --verify, the numbers behind runtime/verify.py's
int8 rule): proposal scores max abs error 0.05 (tl_scores: 0.13, 3 of 4000 corners beyond 0.05), embeddings
0.05-0.08, offsets 0.06; every top-k corner outside near-ties agrees, and 98% of the detections outside
near-ties match with IoU >= 0.9, |Δscore| <= 0.05. Of all 4000 fp32 detections, 74% reappear with
IoU >= 0.9 and |Δscore| <= 0.02, 81% with IoU >= 0.8 and |Δscore| <= 0.05, 90% with IoU >= 0.5 and
|Δscore| <= 0.1 (92% and 95% of those scoring >= 0.3). minmax's worst score error is smaller (0.03)
but its ΔAP worse.

Memory: the histogram methods (percentile, entropy) hold one image's calibrated activations at a time,
about 2 GiB for HG-104 at 511x767; minmax keeps only running minima and maxima.

ONNX Runtime 1.31 CPU speed, HG-104 at 511x767, batch 1, 2 threads (benchmarks/bench_quantize.py, on the
project's shared 2-core AMD EPYC, so noisy): int8 1.3x fp32 best of 5 runs (2.4 s vs 3.1 s), 1.0-1.5x
in medians; the file is 195 MB instead of 777 MB. ONNX Runtime's x86 kernels want uint8 activations:
it converts an int8 Q/DQ pair to uint8 only when the QuantizeLinear has one consumer, so only about 40%
of the convolutions become QLinearConv (the rest run in float on dequantized weights). Forcing its
int8 kernels (session option ``session.qdqisint8allowed``) fuses all 80 but ran ~5x slower here, and
with its NHWC layout pass breaks on our Shape nodes. The int8 target is TensorRT; this file is built for it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from runtime.backends.onnxruntime import EXPORT_KEY, META_KEY, PRECISION_KEY, read_onnx_metadata
from runtime.cli import parser_from_doc, run_cli
from runtime.errors import EXIT_OK, UserError
from runtime.image_io import IMAGE_SUFFIXES, read_image
from runtime.meta import ModelMeta
from runtime.preprocess import preprocess

from . import corner_pool_onnx as cp
from .onnx_export import save_atomic, set_metadata

#: Calibration methods (onnxruntime.quantization.CalibrationMethod names, lower case).
METHODS = ("minmax", "entropy", "percentile")
#: The method with the smallest measured |ΔAP| on the demo model (module docstring).
DEFAULT_METHOD = "percentile"
DEFAULT_IMAGES = 64
#: Op types that get Q/DQ on their float inputs and outputs (see the module docstring).
QUANTIZED_OPS = ("Conv", "Add", "Relu", "Resize")
#: Convolutions kept float at the end of each output branch: 1, the output convolution (module docstring).
HEAD_CONVS = 1
#: Percentile kept by the ``percentile`` method (onnxruntime's default, 99.999).
PERCENTILE = 99.999


# --------------------------------------------------------------------------------------------------
# Calibration data


def calibration_images(data: str | Path, count: int) -> list[Path]:
    """``count`` images spread evenly over ``data`` (a folder of images, or a COCO root's ``val2017/``).

    Raises:
        UserError: ``data`` missing, not a folder, or holding no image files; ``count`` < 1.
    """
    if count < 1:
        raise UserError(f"--images {count}: must be at least 1")
    root = Path(data)
    if not root.exists():
        raise UserError(f"--calib {root}: not found; pass a folder of images or a COCO root (DIR/val2017/)")
    if not root.is_dir():
        raise UserError(
            f"--calib {root}: is a file; pass a folder of images or a COCO root (DIR/val2017/), not one file"
        )

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    paths = images_in(root)
    if not paths and (root / "val2017").is_dir():
        paths = images_in(root / "val2017")
    if not paths:
        raise UserError(
            f"--calib {root}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES)[:4])}, ...) and no val2017/ "
            "folder with images; pass a folder of images or a COCO root"
        )
    if count >= len(paths):
        return paths
    return [paths[i * len(paths) // count] for i in range(count)]


def _one_input(name: str, x: np.ndarray) -> Any:
    """A ``CalibrationDataReader`` that yields one feed ``{name: x}``."""
    from onnxruntime.quantization import CalibrationDataReader

    class OneImage(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: x}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return OneImage()


def network_inputs(images: Sequence[Path], meta: ModelMeta) -> Iterator[np.ndarray]:
    """Each image as the network sees it at test time: ``[1, 3, h | 127, w | 127]`` float32."""
    for path in images:
        chw, _ = preprocess(read_image(path), meta.mean, meta.std)
        yield chw[None]


@contextlib.contextmanager
def _quiet_ort_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger ("consider pre-processing ..."): not ours to show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# What stays float


def float_nodes(model: ModelProto) -> dict[str, str]:
    """Nodes kept in float, each with the reason (see the module docstring).

    Returns:
        ``{node name: reason}`` for the corner pools (custom op nodes, or the decomposed scan's nodes,
        named ``POOL/...``) and the output convolutions with the proposal tail.
    """
    keep: dict[str, str] = {}
    pools = {n.name for n in cp.corner_pool_nodes(model)}
    for node in model.graph.node:
        decomposed = "/" in node.name and node.name.split("/")[0].endswith("_pool")  # POOL/step nodes
        if node.name in pools or decomposed:
            keep[node.name] = "corner pool"
    for name in tail_nodes(model, HEAD_CONVS):
        keep.setdefault(name, "output convolution or proposal tail")
    return keep


def tail_nodes(model: ModelProto, convs: int = 1) -> list[str]:
    """Names of the nodes from each graph output back to (and including) its ``convs``-th ``Conv``.

    ``convs=1`` is :func:`export.fp16.fp32_nodes`: the output convolutions and the proposal tail;
    ``convs=2`` also takes each head branch's 3x3 convolution and its ReLU.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    seen: dict[str, int] = {}
    stack = [(o.name, 0) for o in model.graph.output]
    while stack:
        name, depth = stack.pop()
        node = producer.get(name)
        if node is None or seen.get(node.name, -1) >= depth:
            continue
        seen[node.name] = depth
        depth += node.op_type == "Conv"
        if depth < convs:
            stack.extend((i, depth) for i in node.input if i)
    return sorted(seen)


# --------------------------------------------------------------------------------------------------
# Quantization


def _calibration_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise UserError(f"--method {method}: choose one of {', '.join(METHODS)}")
    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]


def calibrate(
    model_path: Path, inputs: Iterator[np.ndarray], method: str, work_dir: Path, log: Any = None
) -> tuple[Any, int]:
    """Activation ranges of every tensor the quantizer will need, from one image at a time.

    onnxruntime's calibrators take a reader of equally shaped feeds (the histogram ones stack them);
    our images keep their own padded sizes, so each goes through ``collect_data`` alone: MinMax merges
    the ranges, Entropy/Percentile grow one histogram per tensor.

    Returns:
        ``(TensorsData, number of images)``.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    model = onnx.load(str(model_path), load_external_data=False)
    input_name = model.graph.input[0].name
    extra: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        extra["percentile"] = PERCENTILE
    calibrator = create_calibrator(
        model_path,
        list(QUANTIZED_OPS),
        augmented_model_path=str(work_dir / "augmented.onnx"),
        calibrate_method=_calibration_method(method),
        extra_options=extra,
    )
    count = 0
    chatter = io.StringIO()  # the histogram calibrators print progress lines to stdout
    for x in inputs:
        with contextlib.redirect_stdout(chatter):
            calibrator.collect_data(_one_input(input_name, x))
        count += 1
        if log is not None:
            log(count)
    with contextlib.redirect_stdout(chatter):
        return calibrator.compute_data(), count


def quantize_model(
    model_path: str | Path,
    images: Sequence[Path],
    method: str = DEFAULT_METHOD,
    progress: bool = False,
    exclude: Sequence[str] = (),
) -> ModelProto:
    """Quantize an fp32 ONNX file (ours) and return the checked int8 ``ModelProto``.

    Args:
        model_path: fp32 ONNX exported by ``export.to_onnx``.
        images: calibration images (paths), pre-processed with the model's metadata.
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        progress: print a line per calibration image to stderr.
        exclude: more node names to keep float (besides :func:`float_nodes`).

    Raises:
        UserError: not one of our fp32 ONNX files, unreadable image, onnxruntime refuses the model.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData

    model_path = Path(model_path)
    props = _check_source(model_path)
    meta = ModelMeta.from_json(props[META_KEY], f"{model_path} metadata")
    _calibration_method(method)
    model = onnx.load(str(model_path))
    keep = float_nodes(model)
    for name in exclude:
        keep.setdefault(name, "asked (--exclude)")

    def log(i: int) -> None:
        if progress:
            print(f"calib    {i}/{len(images)} {images[i - 1].name}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cornernet-quant-") as tmp, _quiet_ort_quantizer():
        work = Path(tmp)
        try:
            ranges, count = calibrate(model_path, network_inputs(images, meta), method, work, log)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"{model_path}: ONNX Runtime could not calibrate it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        assert isinstance(ranges, TensorsData)
        seconds = time.perf_counter() - t0
        out = work / "model.int8.onnx"
        try:
            quantize_static(
                str(model_path),
                str(out),
                calibration_data_reader=None,
                calibration_cache_path=str(_save_ranges(ranges, work / "ranges.json")),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(keep),
                calibrate_method=_calibration_method(method),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                },
            )
        except Exception as e:
            raise UserError(
                f"{model_path}: ONNX Runtime's quantizer failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        quantized = onnx.load(str(out))
    info = json.loads(props.get(EXPORT_KEY, "{}"))
    info["int8"] = {
        "quantizer": f"onnxruntime.quantization {onnxruntime.__version__} quantize_static (QDQ)",
        "method": method,
        "calibration_images": count,
        "calibration_seconds": round(seconds, 1),
        "op_types": list(QUANTIZED_OPS),
        "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor symmetric",
        "bias": "float",
        "float_nodes": dict(sorted(keep.items())),
    }
    _finish(quantized, props, info)
    return quantized


def _save_ranges(ranges: Any, path: Path) -> Path:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)
    return path


def _check_source(model_path: Path) -> dict[str, str]:
    """Metadata of ``model_path`` after checking it is one of our fp32 ONNX files (``UserError`` otherwise)."""
    if model_path.suffix.lower() != ".onnx":
        raise UserError(f"{model_path}: expected an ONNX file (.onnx) from python -m export.to_onnx")
    if not model_path.is_file():
        raise UserError(f"{model_path}: ONNX file not found; check the path")
    props = read_onnx_metadata(model_path)
    if META_KEY not in props:
        raise UserError(
            f"{model_path}: no '{META_KEY}' metadata, so it was not exported by cornernet-deploy; "
            "export it with python -m export.to_onnx CHECKPOINT.pth"
        )
    precision = props.get(PRECISION_KEY, "fp32")
    if precision != "fp32":
        raise UserError(
            f"{model_path}: is already {precision}; quantize the fp32 ONNX (python -m export.to_onnx CHECKPOINT.pth)"
        )
    return props


def _shapes_read_float(model: ModelProto) -> None:
    """``Shape`` nodes read the float tensor, not its Q/DQ copy (the quantizer rewires every reader)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "Shape" else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]


def _finish(model: ModelProto, props: dict[str, str], info: dict[str, Any]) -> None:
    """Our metadata (precision int8), nothing of the quantizer's own, and onnx's full check."""
    _shapes_read_float(model)
    keep = {k: v for k, v in props.items() if k.startswith("cornernet.")}
    del model.metadata_props[:]  # drops the quantizer's "onnx.infer" marker
    set_metadata(model, {**keep, PRECISION_KEY: "int8", EXPORT_KEY: json.dumps(info, sort_keys=True)})
    onnx.checker.check_model(model, full_check=True)


def default_output_path(model: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` beside it."""
    model = Path(model)
    return model.with_name(model.name[: -len(model.suffix)] + ".int8.onnx")


def quantize_file(
    model: str | Path,
    calib: str | Path,
    images: int = DEFAULT_IMAGES,
    out: str | Path | None = None,
    method: str = DEFAULT_METHOD,
    progress: bool = False,
) -> Path:
    """``model`` (fp32 ONNX) -> int8 ONNX at ``out`` (default ``MODEL.int8.onnx``), written atomically."""
    path = Path(out) if out is not None else default_output_path(model)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; --out names the .onnx file to write")
    _check_source(Path(model))
    paths = calibration_images(calib, images)
    quantized = quantize_model(model, paths, method, progress)
    save_atomic(quantized, path)
    return path


# --------------------------------------------------------------------------------------------------
# Command line


def make_parser() -> argparse.ArgumentParser:
    p = parser_from_doc("python -m export.quantize", __doc__.partition("\n\nWhat is quantized")[0])
    p.add_argument("model", help="fp32 ONNX file exported by python -m export.to_onnx")
    p.add_argument(
        "--calib",
        required=True,
        metavar="DATA",
        help="calibration images: a folder of images, or a COCO root (its val2017/ folder)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        metavar="N",
        help=f"how many images, spread evenly over DATA (default {DEFAULT_IMAGES}; all if DATA has fewer)",
    )
    p.add_argument("--out", metavar="FILE", help="int8 ONNX file to write (default: MODEL.int8.onnx)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"activation calibration (default {DEFAULT_METHOD}: the smallest measured ΔAP, see the module docstring)",
    )
    p.add_argument("--progress", action="store_true", help="a line per calibration image")
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    path = quantize_file(args.model, args.calib, args.images, args.out, args.method, args.progress)
    info = json.loads(read_onnx_metadata(path)[EXPORT_KEY])["int8"]
    print(
        f"wrote    {path} ({path.stat().st_size / 1e6:.1f} MB, int8 Q/DQ, {info['method']} on "
        f"{info['calibration_images']} images, {len(info['float_nodes'])} nodes kept float) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    print(f"check    python -m runtime.eval {path} --coco DIR --verify")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
