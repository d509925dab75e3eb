"""Mixed-precision (fp16) ONNX for TensorRT 11, whose networks are always strongly typed.

TensorRT 11 has no FP16 builder flag: a layer runs in the precision its ONNX tensors have
(``tensorrt_onnx.md`` §1.5), so the precision decision is made here, in the file. We convert with
onnxconverter-common 1.16 ``convert_float_to_float16(keep_io_types=True, ...)`` and then repair it.

What runs in fp16, and why:

- The backbone and head convolutions, ReLU, Add, the nearest-neighbour ``Resize`` of the hourglass
  and the corner pools. This is where >99% of the FLOPs and memory traffic are. ``Resize`` (nearest)
  and ``Max``/``Min`` only copy or select values, so they are exact in fp16: we take them off the
  converter's default block list (it keeps them fp32 for old ONNX Runtime kernels; ONNX Runtime
  1.31 CPU and TensorRT both run them in fp16), which saves a Cast pair around every upsample and
  every step of a decomposed corner pool. A corner pool's running max in fp16 is exact too: the
  ``cornernet::CornerPool`` node simply gets an fp16 input (the plugin supports kHALF) and the
  local-function fallback is type-generic (``CastLike`` for its ``-inf``), so the converter leaves
  it as it is.

What stays fp32:

- The last convolution of every output branch (heat, embedding, offset). Its input is fp16, but
  fp32 accumulation and an fp32 result avoid rounding the logits to fp16 (|logit| ~ 5 has an fp16
  step of 0.004, i.e. a score error of up to ~4e-4 after the sigmoid), for a negligible cost
  (1x1 convs to 1-80 channels).
- Everything after those convolutions: sigmoid, the 3x3 local-maximum ``MaxPool``/``Equal``, top-k,
  and the gathers (the proposal tail). In fp16 the scores would collapse into ties (fp16 has ~3
  significant digits; sigmoid outputs around 0.1-0.5 step by 1.2e-4-2.4e-4), which changes which
  corners survive the local-max test (plateaus keep every tied maximum) and reorders top-k, so the
  proposals (and paired boxes) would change, not just their scores. The tail is tiny
  (``[N, C, H/4, W/4]`` element-wise + top-k), so fp32 costs nothing measurable.
- The converter's default block list otherwise (TopK, NonMaxSuppression, CumSum, Range, ...).

Measured on the golden set (tiny model, 5 images, ONNX Runtime CPU, vs PyTorch fp32): ΔAP = 0.000
for all 12 COCO stats; proposal scores within 6e-4, 90-92% of top-k indices identical, 80% of
detections within the strict fp32 matching rule (|score diff| <= 1e-4). Converting everything but
the converter's default list instead: scores off by up to 1.6e-3 and 71% matched; keeping only the
tail fp32 (output convolutions fp16): 75% matched. The ΔAP was 0 in all three on this small set.
- The graph input and outputs (``keep_io_types=True``): the runtime feeds float32 images and the
  decoder reads float32 proposals, whatever precision ran inside.

Repairs after converting (onnxconverter-common 1.16 behaviour, checked):

- Between two blocked (fp32) nodes whose intermediate value had a float ``value_info`` the converter
  inserts a lossy fp32 -> fp16 -> fp32 Cast round trip (e.g. sigmoid -> MaxPool). We short-circuit
  every ``Cast(to=fp16)`` of an fp32 value that is read only as ``Cast(to=fp32)``.
- A blocked node that produces a graph output leaves that output fp16 despite ``keep_io_types``
  (it ends in a ``Cast(to=fp16)``). We drop that Cast and declare the output float32 again, and then
  check every input/output dtype against the fp32 model.
- Weights of fp32 nodes are stored fp16 and cast back: we put the original fp32 tensors back.
- ``keep_io_types`` casts the input to fp16 for ``Shape`` readers too: they read the input directly.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import onnx
from onnx import ModelProto, NodeProto, TensorProto

from runtime.backends.onnxruntime import EXPORT_KEY, PRECISION_KEY

#: Ops exact in fp16 (they only select or copy values) that the converter blocks by default.
EXACT_IN_FP16 = ("Max", "Min", "Resize")


def block_list() -> list[str]:
    """``op_block_list``: the converter's default list without :data:`EXACT_IN_FP16`."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return [op for op in DEFAULT_OP_BLOCK_LIST if op not in EXACT_IN_FP16]


def _exact_resizes(model: ModelProto) -> bool:
    """Whether every ``Resize`` is nearest-neighbour (the only mode that is exact in fp16)."""
    for node in model.graph.node:
        if node.op_type == "Resize":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
            if mode != "nearest":
                return False
    return True


def fp32_nodes(model: ModelProto) -> list[str]:
    """Names of the nodes kept fp32: the last ``Conv`` of each branch and everything after it.

    Walks back from every graph output and stops at (and includes) the first ``Conv`` on each path.
    In a heads-only model that is just the six output convolutions.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type != "Conv":
            stack.extend(i for i in node.input if i)
    return sorted(keep)


def _dtypes(model: ModelProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    types.update({v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)})
    for node in model.graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    return types


def _cast_to(node: NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _rename_input(model: ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def repair_casts(model: ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 round trips and fp16 graph outputs (see the module docstring).

    Returns:
        The number of Cast nodes removed.
    """
    types = _dtypes(model)
    outputs = {o.name: o for o in model.graph.output}
    consumers: dict[str, list[NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    producer = {out: node for node in model.graph.node for out in node.output}
    dead: set[int] = set()
    for node in list(model.graph.node):
        if _cast_to(node) != TensorProto.FLOAT16 or types.get(node.input[0]) != TensorProto.FLOAT:
            continue
        src, mid = node.input[0], node.output[0]
        readers = consumers[mid]
        if any(_cast_to(r) != TensorProto.FLOAT or r.output[0] in outputs for r in readers):
            continue  # an fp16 op reads it (a real precision boundary), or an odd case we leave alone
        if mid in outputs and src not in producer:
            continue
        for back in readers:  # Cast(to=fp32) of the fp16 copy: read the fp32 original instead
            _rename_input(model, back.output[0], src)
            dead.add(id(back))
        if mid in outputs:  # the converter's fp16 graph output: the fp32 value becomes the output
            src_node = producer[src]
            src_node.output[list(src_node.output).index(src)] = mid
            producer[mid] = src_node
            _rename_input(model, src, mid)
            outputs[mid].type.tensor_type.elem_type = TensorProto.FLOAT
        dead.add(id(node))
    for node in model.graph.node:
        # ``Shape`` does not care about the dtype: read the value before a Cast (keep_io_types adds
        # one from the fp32 input to fp16 for every reader, Shape included).
        if (
            node.op_type == "Shape"
            and node.input[0] in producer
            and _cast_to(producer[node.input[0]]) is not None
        ):
            node.input[0] = producer[node.input[0]].input[0]
    still_read = {name for n in model.graph.node if id(n) not in dead for name in n.input}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] not in still_read and node.output[0] not in outputs:
            dead.add(id(node))
    removed = [n for n in model.graph.node if id(n) in dead]
    kept = [n for n in model.graph.node if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    # value_info of values that no longer exist (or changed type) would mislead shape inference.
    live = {name for n in kept for name in (*n.input, *n.output)}
    stale = [v for v in model.graph.value_info if v.name not in live or v.name in outputs]
    for v in stale:
        model.graph.value_info.remove(v)
    cast_types = {n.output[0]: _cast_to(n) for n in kept if n.op_type == "Cast"}
    for v in model.graph.value_info:  # a blocked Cast keeps its ``to``; its value_info may say fp16
        if v.name in cast_types:
            v.type.tensor_type.elem_type = cast_types[v.name]
    return len(removed)


def retarget_casts(converted: ModelProto, original: ModelProto, fp32: set[str]) -> int:
    """Make the model's own ``Cast(to=float)`` nodes in the fp16 region cast to fp16.

    The converter leaves their ``to`` at float32 while typing their outputs fp16, which gives an
    invalid model (e.g. the bool -> float mask of the local-max test, if it were converted). Casts the
    converter inserted itself are not in ``original`` and are left alone.

    Returns:
        The number of Casts changed.
    """
    own = {n.name for n in original.graph.node if n.op_type == "Cast"} - fp32
    changed = 0
    for node in converted.graph.node:
        if node.name in own and _cast_to(node) == TensorProto.FLOAT:
            for a in node.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT16
            changed += 1
    return changed


def restore_fp32_initializers(converted: ModelProto, original: ModelProto) -> int:
    """Give fp32 nodes their original fp32 weights instead of ``Cast(fp16 copy)``.

    The converter rounds every initializer to fp16 and casts it back for blocked nodes, which would
    throw away the precision the fp32 output convolutions are kept for.

    Returns:
        The number of initializers restored.
    """
    originals = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    inits = {t.name: t for t in converted.graph.initializer}
    readers: dict[str, list[NodeProto]] = defaultdict(list)
    for node in converted.graph.node:
        for name in node.input:
            readers[name].append(node)
    restored = 0
    for name, tensor in inits.items():
        casts = readers[name]
        if (
            name not in originals
            or tensor.data_type != TensorProto.FLOAT16
            or not casts
            or any(_cast_to(c) != TensorProto.FLOAT for c in casts)
        ):
            continue
        tensor.CopyFrom(originals[name])
        for cast in casts:
            _rename_input(converted, cast.output[0], name)
            converted.graph.node.remove(cast)
        restored += 1
        for value in converted.graph.value_info:  # the exporter lists initializers there too
            if value.name == name:
                value.type.tensor_type.elem_type = TensorProto.FLOAT
    return restored


def check_io_types(converted: ModelProto, original: ModelProto) -> None:
    """Every graph input and output keeps its fp32 dtype (raises ``ValueError`` otherwise)."""
    before = {v.name: v.type.tensor_type.elem_type for v in (*original.graph.input, *original.graph.output)}
    after = {v.name: v.type.tensor_type.elem_type for v in (*converted.graph.input, *converted.graph.output)}
    wrong = [
        f"{name}: {TensorProto.DataType.Name(after.get(name, 0))} instead of {TensorProto.DataType.Name(t)}"
        for name, t in before.items()
        if after.get(name) != t
    ]
    if wrong:
        raise ValueError("fp16 conversion changed graph io types: " + "; ".join(wrong))


def convert_to_fp16(model: ModelProto) -> ModelProto:
    """The mixed-precision copy of an exported fp32 model (metadata updated, checker-clean)."""
    import json

    import onnxconverter_common
    from onnxconverter_common.float16 import convert_float_to_float16

    ops = block_list()
    if not _exact_resizes(model):
        ops.append("Resize")
    keep = fp32_nodes(model)
    with warnings.catch_warnings():
        # "the float32 number 1e-09 will be truncated to 1e-07": tiny folded-BN weights, expected.
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=ops, node_block_list=keep
        )
    retarget_casts(converted, model, set(keep))
    removed = repair_casts(converted)
    restored = restore_fp32_initializers(converted, model)
    check_io_types(converted, model)
    props = {p.key: p.value for p in converted.metadata_props}
    info = json.loads(props.get(EXPORT_KEY, "{}"))
    info["fp16"] = {
        "converter": f"onnxconverter-common {onnxconverter_common.__version__}",
        "op_block_list": ops,
        "fp32_nodes": len(keep),
        "casts_removed": removed,
        "fp32_initializers": restored,
    }
    props[PRECISION_KEY] = "fp16"
    props[EXPORT_KEY] = json.dumps(info, sort_keys=True)
    del converted.metadata_props[:]
    for key in sorted(props):
        entry = converted.metadata_props.add()
        entry.key, entry.value = key, props[key]
    onnx.checker.check_model(converted, full_check=True)
    return converted
