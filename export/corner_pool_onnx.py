"""Corner pooling in ONNX: the ``cornernet::CornerPool`` custom op, its fallback and its decomposition.

Three forms of the same computation (the running max of mmcv's ``flip -> torch.cummax -> flip``):

``plugin`` (default)
    One node per pool, domain ``cornernet``, op type ``CornerPool``, INT attribute ``mode``
    (0 top, 1 bottom, 2 left, 3 right) plus STRING ``plugin_version="1"`` and
    ``plugin_namespace="cornernet"``, which is what TensorRT's ONNX parser needs to pick our plugin
    (``../shared/reference/contracts.md``). The model also carries a model-local ``FunctionProto``
    ``cornernet::CornerPool`` written with standard ops only, so ONNX Runtime runs the file
    unchanged. (A TensorRT without the plugin would import that function instead; whether its parser
    accepts the run-time ``axes``/``steps`` inputs is unverified: use ``decomposed`` there.)
``decomposed``
    The same standard-op body inlined for each node, specialised for its mode (constant axis, static
    flip): no custom domain and no function, for runtimes that know neither.

How the exporter is made to emit the node (torch 2.13 dynamo exporter, ``tensorrt_onnx.md`` §7): an
``@onnxscript.script`` translation would be inlined, so we register an ``onnx.defs.OpSchema`` for
``cornernet::CornerPool`` and translate ``torch.ops.cornernet.corner_pool`` to a plain
``onnxscript.values.Op`` call. The function and the ``plugin_*`` attributes are added to the
``ModelProto`` after export (:func:`add_plugin_fallback`).

The standard-op body (Hillis-Steele log-step scan, ``tensorrt_onnx.md`` §6)::

    flip along the axis (top/left scan towards index 0)
    y = x
    for k in 1, 2, 4, ..., 2048:  y = Max(y, shift(y, k))   # shift fills with -inf
    flip back

``shift(y, k)`` is ``Slice(Pad(y, k leading -inf), 0, -k)``; padding first keeps the shape right even
when ``k`` exceeds the side (then it is all ``-inf`` and the step is a no-op). 12 steps give the exact
running max for sides up to :data:`MAX_SIDE` = 4096 (inputs up to 16384 pixels). ``Max`` selects one
of its inputs, so the result is bit-exact with ``torch.cummax`` in any float type; in ONNX Runtime
NaN also propagates along the scan as in torch (its ``Max`` returns NaN when either input is NaN;
tested, with ±inf, in ``tests/test_export_onnx.py``). The ``-inf`` fill is a
float32 constant passed through ``CastLike(x)``, so the body stays valid after fp16 conversion (the
converter does not touch function bodies).

In the function, ``mode`` is an attribute: the body reads it as a tensor with ``Constant``
(``ref_attr_name="mode"``), derives ``axis = 2 + mode // 2`` and the flip (``mode`` even) and feeds
them to ``Slice``/``Pad`` as inputs (opset 18 ``Pad`` takes ``axes``), so one function serves all four
directions. The flip is itself a ``Slice`` whose starts/ends/steps are chosen with ``Where`` (step -1
or the identity step 1), so nothing is computed twice. The ``decomposed`` body has constant axes and
only the flips its mode needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, ModelProto, NodeProto, TensorProto, helper

from trainer.model.corner_pool import MODES
from trt_plugins.fields import FIELDS, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

DOMAIN = "cornernet"
OP_TYPE = PLUGIN_NAME  # the parser matches the plugin creator by op type
DOMAIN_VERSION = 1
MIN_OPSET = 18  # Pad's ``axes`` input
MAX_SIDE = 4096  # longest feature-map side the log-step scan covers exactly
LOG_STEPS = int(np.log2(MAX_SIDE))  # 12 shifts: 1, 2, ..., 2048
CORNER_POOL_MODES = ("plugin", "decomposed")

#: TensorRT ``PluginFieldType`` of each ONNX attribute type the parser converts (``tensorrt_onnx.md`` §1.2).
ONNX_TO_PLUGIN_FIELD = {
    AttributeProto.INT: "kINT32",
    AttributeProto.FLOAT: "kFLOAT32",
    AttributeProto.STRING: "kCHAR",
}
PLUGIN_ATTRIBUTES = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)
_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]


# --------------------------------------------------------------------------------------------------
# Schema and exporter translation


def register_schema() -> None:
    """Register ``cornernet::CornerPool`` v1 with ``onnx.defs`` (idempotent; process-wide).

    The dynamo exporter only emits a custom-domain node for an op ONNX knows; the schema also lets
    ``onnx.checker`` validate the node in this process. Other processes validate it through the
    model-local function instead, so the ``plugin_*`` attributes are declared here too.
    """
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        DOMAIN_VERSION,
        doc="Corner pooling: running max towards one side of an NCHW tensor (mmcv's flip+cummax+flip).",
        inputs=[onnx.defs.OpSchema.FormalParameter("X", "T", "NCHW input")],
        outputs=[onnx.defs.OpSchema.FormalParameter("Y", "T", "running max, same shape and type as X")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[
            onnx.defs.OpSchema.Attribute(
                "mode", onnx.defs.OpSchema.AttrType.INT, "0 top, 1 bottom, 2 left, 3 right"
            ),
            onnx.defs.OpSchema.Attribute(
                "plugin_version",
                helper.make_attribute("plugin_version", PLUGIN_VERSION),
                "TensorRT plugin version",
            ),
            onnx.defs.OpSchema.Attribute(
                "plugin_namespace",
                helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                "TensorRT plugin namespace",
            ),
        ],
    )
    onnx.defs.register_schema(schema)


def corner_pool_translation(x: Any, mode: int) -> Any:
    """Exporter translation of ``torch.ops.cornernet.corner_pool``: one ``cornernet::CornerPool`` node."""
    from onnxscript.values import Op, Opset

    register_schema()  # the Op resolves its signature from the registered schema
    return Op(Opset(DOMAIN, DOMAIN_VERSION), OP_TYPE)(x, mode=mode)


# --------------------------------------------------------------------------------------------------
# The standard-op body


class _Body:
    """Collects the nodes of one body; value names are ``prefix + name``, unique and deterministic."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self._consts: dict[tuple[Any, ...], str] = {}
        self._count = 0

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        out = f"{self.prefix}{name}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, values: Sequence[int] | float, name: str) -> str:
        """An int64 1-D constant (a list) or a float32 scalar (a float), shared within the body."""
        key = (name, tuple(values) if isinstance(values, Sequence) else float(values))
        if key not in self._consts:
            if isinstance(values, Sequence):
                tensor = helper.make_tensor(
                    f"{self.prefix}{name}", TensorProto.INT64, [len(values)], list(values)
                )
            else:
                tensor = helper.make_tensor(f"{self.prefix}{name}", TensorProto.FLOAT, [], [values])
            self._consts[key] = self.op("Constant", [], name, value=tensor)
        return self._consts[key]

    def attr_ref(self, attribute: str, name: str) -> str:
        """``Constant`` whose ``value_int`` is the enclosing function's attribute (int64 scalar)."""
        out = f"{self.prefix}{name}"
        node = helper.make_node("Constant", [], [out], name=out)
        ref = AttributeProto()
        ref.name, ref.ref_attr_name, ref.type = "value_int", attribute, AttributeProto.INT
        node.attribute.append(ref)
        self.nodes.append(node)
        return out


def _log_step_max(b: _Body, x: str, axes: str, out: str | None = None) -> str:
    """Inclusive running max of ``x`` along ``axes`` (1-element int64), from index 0 upwards.

    The last ``Max`` writes ``out`` when given (no trailing Identity), else a body-local name.
    """
    ninf = b.op("CastLike", [b.const(float("-inf"), "ninf_f32"), x], "ninf")  # fp16-safe fill value
    zero = b.const([0], "zero")
    y = x
    for step in range(LOG_STEPS):
        k = 1 << step
        padded = b.op("Pad", [y, b.const([k, 0], f"pads{k}"), ninf, axes], f"pad{k}", mode="constant")
        shifted = b.op("Slice", [padded, zero, b.const([-k], f"end{k}"), axes], f"shift{k}")
        if out is not None and step == LOG_STEPS - 1:
            b.nodes.append(helper.make_node("Max", [y, shifted], [out], name=f"{b.prefix}max{k}"))
            return out
        y = b.op("Max", [y, shifted], f"max{k}")
    return y


def _function_body(b: _Body, x: str, y: str) -> None:
    """Body reading ``mode`` at run time: axis and flip as tensors (one function for all modes)."""
    mode = b.attr_ref("mode", "mode")
    two = b.op("Constant", [], "two", value_int=2)
    half = b.op("Div", [mode, two], "mode_div_2")  # 0 for top/bottom, 1 for left/right
    axis = b.op("Add", [half, two], "axis")  # H = 2, W = 3
    axes = b.op("Unsqueeze", [axis, b.const([0], "zero")], "axes")
    flip = b.op(
        "Equal", [b.op("Mod", [mode, two], "mode_mod_2"), b.op("Constant", [], "zero_s", value_int=0)], "flip"
    )
    # A flip is Slice(start -1, end INT64_MIN, step -1); no flip is the identity Slice(0, INT64_MAX, 1).
    starts = b.op("Where", [flip, b.const([-1], "minus_one"), b.const([0], "zero")], "starts")
    ends = b.op(
        "Where", [flip, b.const([_INT64_MIN], "int64_min"), b.const([_INT64_MAX], "int64_max")], "ends"
    )
    steps = b.op("Where", [flip, b.const([-1], "minus_one"), b.const([1], "one")], "steps")
    scan_in = b.op("Slice", [x, starts, ends, axes, steps], "flip_in")
    scanned = _log_step_max(b, scan_in, axes)
    b.nodes.append(
        helper.make_node("Slice", [scanned, starts, ends, axes, steps], [y], name=f"{b.prefix}flip_out")
    )


def _static_body(b: _Body, x: str, y: str, mode: int) -> None:
    """Body for one known ``mode``: constant axis, flips only where needed (TensorRT-friendly)."""
    if mode not in MODES.values():
        raise ValueError(f"CornerPool mode must be 0-3, got {mode}")
    axes = b.const([2 + mode // 2], "axes")
    if mode % 2:  # bottom/right: the scan runs from index 0 already
        _log_step_max(b, x, axes, out=y)
        return
    rev = [b.const([-1], "minus_one"), b.const([_INT64_MIN], "int64_min"), axes, b.const([-1], "minus_one")]
    scanned = _log_step_max(b, b.op("Slice", [x, *rev], "flip_in"), axes)
    b.nodes.append(helper.make_node("Slice", [scanned, *rev], [y], name=f"{b.prefix}flip_out"))


def corner_pool_function(opset: int = MIN_OPSET) -> FunctionProto:
    """The model-local ``cornernet::CornerPool`` function (attribute ``mode``), standard ops of ``opset``."""
    b = _Body("")
    _function_body(b, "X", "Y")
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=["X"],
        outputs=["Y"],
        nodes=b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["mode"],
        doc_string="Standard-op fallback of the CornerPool TensorRT plugin: running max (log-step scan, "
        f"exact for sides up to {MAX_SIDE}); mode 0 top, 1 bottom, 2 left, 3 right.",
    )


def decomposed_nodes(x: str, y: str, mode: int, prefix: str) -> list[NodeProto]:
    """Standard-op nodes computing ``y = CornerPool(x, mode)``; every value name starts with ``prefix``."""
    b = _Body(prefix)
    _static_body(b, x, y, mode)
    return b.nodes


# --------------------------------------------------------------------------------------------------
# Post-processing of the exported ModelProto


def corner_pool_nodes(model: ModelProto) -> list[NodeProto]:
    """The ``cornernet::CornerPool`` nodes of the main graph."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_mode(node: NodeProto) -> int:
    for a in node.attribute:
        if a.name == "mode":
            return int(a.i)
    raise ValueError(f"CornerPool node {node.name!r} has no 'mode' attribute")


def plugin_attribute_types() -> dict[str, str]:
    """What export writes on each node, as TensorRT field types: :data:`FIELDS` plus ``plugin_*`` (kCHAR)."""
    return {**FIELDS, **dict.fromkeys(PLUGIN_ATTRIBUTES, ONNX_TO_PLUGIN_FIELD[AttributeProto.STRING])}


def add_plugin_fallback(model: ModelProto, opset: int) -> None:
    """``plugin`` form: ``plugin_*`` attributes on every node and the model-local fallback function."""
    for node in corner_pool_nodes(model):
        # One attribute order whatever the exporter wrote (it may fill schema defaults): the plugin
        # fields first, then plugin_version / plugin_namespace with the contract's values.
        fields = [a for a in node.attribute if a.name in FIELDS]
        fields.sort(key=lambda a: list(FIELDS).index(a.name))
        del node.attribute[:]
        node.attribute.extend(fields)
        node.attribute.extend(helper.make_attribute(name, value) for name, value in PLUGIN_ATTRIBUTES.items())
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        model.functions.append(corner_pool_function(opset))
    _ensure_opset(model, DOMAIN, DOMAIN_VERSION)


def inline_decomposition(model: ModelProto) -> None:
    """``decomposed`` form: replace every CornerPool node by its static standard-op body."""
    new_nodes: list[NodeProto] = []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            new_nodes.extend(
                decomposed_nodes(node.input[0], node.output[0], node_mode(node), f"{node.name}/")
            )
        else:
            new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    drop_fallback_function(model)
    _drop_opset(model, DOMAIN)


def drop_fallback_function(model: ModelProto) -> None:
    """Remove the model-local ``CornerPool`` function, leaving the nodes to a plugin.

    TensorRT's ONNX parser needs this: 10.0 to 10.6 expand a local function of a node's op name before they
    look for a plugin (10.7+ prefer a registered plugin), so with the function present the engine would
    silently use the slow fallback; 10.0-10.3 cannot even parse the fallback's runtime Slice/Pad axes.
    """
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept)


def _ensure_opset(model: ModelProto, domain: str, version: int) -> None:
    for o in model.opset_import:
        if o.domain == domain:
            o.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def _drop_opset(model: ModelProto, domain: str) -> None:
    kept = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)


# --------------------------------------------------------------------------------------------------
# A one-node model, for tests and for checking a runtime


def single_op_model(
    mode: int,
    corner_pool: str = "plugin",
    dtype: int = TensorProto.FLOAT,
    opset: int = MIN_OPSET,
    ir_version: int = 10,
) -> ModelProto:
    """``Y = CornerPool(X, mode)`` on a dynamic NCHW input, in the ``plugin`` or ``decomposed`` form."""
    dims: Iterable[str] = ("N", "C", "H", "W")
    x = helper.make_tensor_value_info("X", dtype, list(dims))
    y = helper.make_tensor_value_info("Y", dtype, list(dims))
    node = helper.make_node(OP_TYPE, ["X"], ["Y"], name="corner_pool", domain=DOMAIN, mode=mode)
    graph = helper.make_graph([node], f"corner_pool_{mode}", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        ir_version=ir_version,
    )
    if corner_pool == "plugin":
        add_plugin_fallback(model, opset)
    elif corner_pool == "decomposed":
        inline_decomposition(model)
    else:
        raise ValueError(f"corner_pool must be one of {CORNER_POOL_MODES}, got {corner_pool!r}")
    return model
