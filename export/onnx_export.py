"""Checkpoint -> ONNX: the deployed graph (:class:`trainer.model.proposals.DeployModel`) with dynamic
batch, height and width, corner pooling as the ``cornernet::CornerPool`` custom op (or decomposed),
and everything the runtime needs in ``metadata_props``.

Library code: :func:`export_onnx` never parses argv (``python -m export.to_onnx`` does).

The file is deterministic: two exports of one checkpoint with the same options and versions are
byte-identical. To get there we drop the exporter's per-node debug metadata (stack traces with
absolute paths, FX node text), name the dynamic dimensions ``batch``/``height``/``width`` instead
of the tracer's ``s14``-style symbols, write ``metadata_props`` in sorted key order and record no
timestamps.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from onnx import ModelProto

from runtime.atomic_write import atomic_write
from runtime.backends.onnxruntime import (
    EXPORT_KEY,
    META_KEY,
    OUTPUTS_KEY,
    PRECISION_KEY,
    SOURCE_CHECKPOINT_KEY,
    SOURCE_SHA256_KEY,
)
from runtime.errors import UserError
from runtime.meta import ModelMeta

from . import corner_pool_onnx as cp

if TYPE_CHECKING:
    from torch import nn

    from trainer.model import CornerNet

INPUT_NAME = "images"
OUTPUT_KINDS = ("proposals", "heads")
DEFAULT_OPSET = cp.MIN_OPSET
MAX_IR_VERSION = 13  # the newest ONNX Runtime 1.31 loads (onnx 1.23's helper would write 14)
# Example input for tracing: batch 2 and distinct odd sides so that no dimension specialises to 1 or
# to another; sizes follow the (h | 127, w | 127) padding rule. The exported graph is dynamic.
_EXAMPLE_SHAPE = (2, 3, 255, 383)
_DIM_NAMES = ("batch", None, "height", "width")


def default_output_path(ckpt_path: str | os.PathLike, fp16: bool = False) -> Path:
    """``CKPT.onnx`` (or ``CKPT.fp16.onnx``) next to the checkpoint."""
    return Path(ckpt_path).with_suffix(".fp16.onnx" if fp16 else ".onnx")


def package_version() -> str:
    """Version of this package: installed metadata, else ``setup.py`` of a source checkout."""
    with contextlib.suppress(importlib_metadata.PackageNotFoundError):
        return importlib_metadata.version("cornernet-deploy")
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    if setup_py.is_file():
        match = re.search(r'version\s*=\s*"([^"]+)"', setup_py.read_text())
        if match:
            return f"{match.group(1)}+source"
    return "unknown"


def check_options(outputs: str, corner_pool: str, opset: int) -> None:
    """Raise :class:`UserError` for an unknown output kind, corner-pool form or opset."""
    if outputs not in OUTPUT_KINDS:
        raise UserError(f"--outputs {outputs!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    if corner_pool not in cp.CORNER_POOL_MODES:
        raise UserError(f"--corner-pool {corner_pool!r}: expected one of {', '.join(cp.CORNER_POOL_MODES)}")
    newest = onnx.defs.onnx_opset_version()
    if not cp.MIN_OPSET <= opset <= newest:
        raise UserError(
            f"--opset {opset}: must be between {cp.MIN_OPSET} (the corner-pool fallback uses Pad's axes input) "
            f"and {newest} (the newest onnx {onnx.__version__} knows)"
        )


# --------------------------------------------------------------------------------------------------
# Tracing


def _remainder_scalar(self: Any, other: Any) -> Any:
    """``aten::remainder.Scalar`` that also accepts a symbolic divisor.

    ``DeployModel`` computes ``inds % (H * W)`` with a dynamic ``H * W``; onnxscript 0.7.2's torchlib
    translation turns the divisor into a constant and fails on a symbolic one. torch's remainder takes
    the divisor's sign, which is ONNX ``Mod`` with ``fmod=0`` for integers; floats use
    ``a - floor(a / b) * b`` as torchlib does.
    """
    import onnx_ir as ir
    from onnxscript import opset18 as op

    if isinstance(other, int | float):
        other = op.Constant(value=ir.tensor(other, dtype=self.dtype))
    else:
        other = op.CastLike(other, self)
    if self.dtype.is_integer():
        return op.Mod(self, other)
    return op.Sub(self, op.Mul(op.Floor(op.Div(self, other)), other))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's registry warnings (e.g. 'torchvision is not installed')."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def trace_to_onnx(model: nn.Module, output_names: tuple[str, ...], opset: int) -> ModelProto:
    """Export ``model`` (one NCHW input) with torch's dynamo exporter; CornerPool stays one node each."""
    import torch

    import trainer.model.corner_pool  # noqa: F401 - registers torch.ops.cornernet.corner_pool

    cp.register_schema()
    dyn = torch.export.Dim.DYNAMIC
    table = {
        torch.ops.cornernet.corner_pool.default: cp.corner_pool_translation,
        torch.ops.aten.remainder.Scalar: _remainder_scalar,
    }
    with torch.no_grad(), _quiet_exporter(), warnings.catch_warnings():
        # torch-internal deprecation noise from pytree pickling, nothing the user can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (torch.zeros(_EXAMPLE_SHAPE, device=next(model.parameters()).device),),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            opset_version=opset,
            dynamic_shapes={INPUT_NAME: dict.fromkeys((0, 2, 3), dyn)},
            custom_translation_table=table,
            verbose=False,
            optimize=True,
        )
    return program.model_proto


# --------------------------------------------------------------------------------------------------
# Post-processing


def _module_path(node: onnx.NodeProto) -> str | None:
    """The torch module a node came from (``bbox_head.tl_pool.1.direction1_pool``), from exporter metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            with contextlib.suppress(ValueError, SyntaxError):
                scopes = ast.literal_eval(prop.value)  # a list literal written by the exporter
                if isinstance(scopes, list) and len(scopes) >= 2:
                    return str(scopes[-2]).removeprefix("model.")
    return None


def _value_infos(model: ModelProto) -> Iterator[onnx.ValueInfoProto]:
    yield from model.graph.input
    yield from model.graph.output
    yield from model.graph.value_info


def clean_exported(model: ModelProto) -> None:
    """Make the exporter's output readable and deterministic (see the module docstring)."""
    # CornerPool nodes named after their module: TensorRT reports plugin layers by node name.
    for node in cp.corner_pool_nodes(model):
        path = _module_path(node)
        if path:
            node.name = path
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in _value_infos(model):
        del value.metadata_props[:]
    for tensor in model.graph.initializer:
        del tensor.metadata_props[:]
    # Tracer symbols (s14, s34 ...) -> the input's dimension names, everywhere they occur.
    rename: dict[str, str] = {}
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, _DIM_NAMES, strict=True):
        if name and dim.dim_param:
            rename[dim.dim_param] = name
    if rename:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")
        for value in _value_infos(model):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: rename[m.group(1)], dim.dim_param)
    model.graph.name = "cornernet"


def set_metadata(model: ModelProto, props: dict[str, str]) -> None:
    """Merge ``props`` into ``metadata_props``, keys sorted (deterministic files)."""
    merged = {p.key: p.value for p in model.metadata_props}
    merged.update(props)
    del model.metadata_props[:]
    for key in sorted(merged):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, merged[key]


def export_info(opset: int, corner_pool: str) -> dict[str, Any]:
    """Versions and options recorded under :data:`EXPORT_KEY`."""
    import onnxscript
    import torch

    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "cornernet_deploy": package_version(),
        "opset": opset,
        "corner_pool": corner_pool,
        "corner_pool_max_side": cp.MAX_SIDE,
    }


def check_exported(model: ModelProto) -> None:
    """``onnx.checker`` full check (includes strict shape inference) and the IR version ORT loads."""
    if model.ir_version > MAX_IR_VERSION:
        raise UserError(
            f"the exported model has ir_version {model.ir_version}; ONNX Runtime 1.31 loads at most "
            f"{MAX_IR_VERSION}: choose a lower --opset"
        )
    onnx.checker.check_model(model, full_check=True)


def save_atomic(model: ModelProto, out: str | os.PathLike) -> None:
    """Write ``out`` atomically (``runtime.atomic_write``); a disk error is a one-line ``UserError``."""
    atomic_write(out, lambda f: f.write(model.SerializeToString()), "choose another --out")


# --------------------------------------------------------------------------------------------------
# Entry point


def model_to_onnx(
    model: CornerNet,
    meta: ModelMeta,
    outputs: str = "proposals",
    corner_pool: str = "plugin",
    opset: int = DEFAULT_OPSET,
    source: dict[str, str] | None = None,
    checkpoint_format: str | None = None,
) -> ModelProto:
    """Export a :class:`trainer.model.CornerNet` to an in-memory, checked fp32 ``ModelProto``.

    Args:
        model: the network (eval mode is set here).
        meta: classes, normalisation and test settings (top-k and local-max kernel come from here).
        outputs, corner_pool, opset: as in :func:`export_onnx`.
        source: extra ``metadata_props`` (the source checkpoint's path and sha256).
        checkpoint_format: recorded in the export info (``cornernet-deploy``, ``mmdet3``, ...).
    """
    from trainer.model.proposals import DeployModel

    check_options(outputs, corner_pool, opset)
    tc = meta.test_cfg
    deploy = DeployModel(model, outputs, tc.corner_topk, tc.local_maximum_kernel).eval()
    proto = trace_to_onnx(deploy, deploy.output_names, opset)
    clean_exported(proto)
    if corner_pool == "plugin":
        cp.add_plugin_fallback(proto, opset)
    else:
        cp.inline_decomposition(proto)
    proto.doc_string = (
        f"CornerNet ({outputs}). Input '{INPUT_NAME}': float32 [N, 3, H, W], RGB normalised with the "
        "metadata's mean/std, padded to (h | 127, w | 127) (metadata pad_rule); outputs: "
        + ", ".join(deploy.output_names)
        + "."
    )
    info = export_info(opset, corner_pool)
    info["model_config"] = model.cfg.to_dict()
    if checkpoint_format:
        info["checkpoint_format"] = checkpoint_format
    set_metadata(
        proto,
        {
            META_KEY: meta.to_json(),
            PRECISION_KEY: "fp32",
            OUTPUTS_KEY: outputs,
            EXPORT_KEY: json.dumps(info, sort_keys=True),
            **(source or {}),
        },
    )
    check_exported(proto)
    return proto


def build_onnx(
    ckpt_path: str | os.PathLike,
    outputs: str = "proposals",
    corner_pool: str = "plugin",
    opset: int = DEFAULT_OPSET,
) -> ModelProto:
    """Export a checkpoint to an in-memory, checked fp32 ``ModelProto`` with our metadata."""
    from trainer.checkpoint import build_model, load_checkpoint, sha256_file

    check_options(outputs, corner_pool, opset)
    ckpt = load_checkpoint(ckpt_path)
    source = {
        SOURCE_CHECKPOINT_KEY: str(Path(ckpt_path).resolve()),
        SOURCE_SHA256_KEY: sha256_file(ckpt_path),
    }
    return model_to_onnx(build_model(ckpt), ckpt.meta, outputs, corner_pool, opset, source, ckpt.source)


def export_onnx(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    outputs: str = "proposals",
    corner_pool: str = "plugin",
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
) -> Path:
    """Export ``ckpt_path`` to ONNX and return the written path.

    Args:
        ckpt_path: our checkpoint or an mmdet 2.x/3.x one.
        out: destination file; default ``CKPT.onnx`` (``CKPT.fp16.onnx`` with ``fp16``) beside it.
        outputs: ``"proposals"`` (the 8 top-k corner tensors, the default) or ``"heads"`` (6 raw maps).
        corner_pool: ``"plugin"`` (custom op + local-function fallback) or ``"decomposed"`` (standard ops).
        opset: default ONNX opset, at least 18.
        fp16: write the mixed-precision variant for TensorRT's strongly typed networks
            (:mod:`export.fp16`) instead of the fp32 model.

    Raises:
        UserError: bad options, unreadable checkpoint, unwritable destination.
    """
    model = build_onnx(ckpt_path, outputs, corner_pool, opset)
    if fp16:
        from .fp16 import convert_to_fp16

        model = convert_to_fp16(model)
    path = Path(out) if out is not None else default_output_path(ckpt_path, fp16)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; --out names the .onnx file to write")
    save_atomic(model, path)
    return path
