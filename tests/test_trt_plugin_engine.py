"""The CornerPool plugin inside TensorRT (needs TensorRT and a GPU; skips saying which is missing).

A one-node ONNX model (``cornernet::CornerPool`` with ``mode``, ``plugin_version``, ``plugin_namespace`` and no
fallback function, so only the plugin can implement it) is parsed, built into an engine with a dynamic-shape
profile, deserialized (the plugin's runtime path) and run on several shapes; the output must equal
``flip + torch.cummax + flip`` bit for bit. The model itself is checked on CPU against the contract.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import trt_plugins
from tests.corner_pool_cases import assert_bitwise_equal, make_input, reference
from trt_plugins import build
from trt_plugins.fields import FIELDS, MODES, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
}
PROFILE = ((1, 1, 1, 1), (2, 4, 33, 40), (2, 16, 130, 140))  # min, opt, max of input "x"
RUN_SHAPES = [(1, 1, 1, 1), (2, 3, 17, 33), (1, 16, 130, 140), (2, 5, 64, 1), (2, 16, 1, 139)]


def corner_pool_model(mode: int | None, dtype: torch.dtype) -> onnx.ModelProto:
    """``y = cornernet::CornerPool(x)`` on a dynamic NCHW input; ``mode=None`` leaves the attribute out."""
    attributes: dict[str, Any] = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    if mode is not None:
        attributes["mode"] = mode
    node = helper.make_node(
        PLUGIN_NAME, ["x"], ["y"], name="corner_pool", domain=PLUGIN_NAMESPACE, **attributes
    )
    dims = ["n", "c", "h", "w"]
    graph = helper.make_graph(
        [node],
        "corner_pool",
        [helper.make_tensor_value_info("x", ONNX_TYPES[dtype], dims)],
        [helper.make_tensor_value_info("y", ONNX_TYPES[dtype], dims)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(PLUGIN_NAMESPACE, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_model_node_follows_the_contract() -> None:
    """CPU: the node the engine test feeds TensorRT is the one contracts.md describes."""
    model = corner_pool_model(MODES["left"], torch.float16)
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("cornernet", "CornerPool")
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    assert attributes == {"mode": 2, "plugin_version": b"1", "plugin_namespace": b"cornernet"}
    ints = {attribute.name for attribute in node.attribute if attribute.type == onnx.AttributeProto.INT}
    assert ints == {name for name, kind in FIELDS.items() if kind == "kINT32"}


@pytest.fixture(scope="module")
def trt() -> ModuleType:
    tensorrt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed here (`import tensorrt` fails)"
    )
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device and torch.cuda.is_available() is False")
    return tensorrt


@pytest.fixture(scope="module")
def logger(trt: ModuleType) -> Any:
    return trt.Logger(trt.Logger.WARNING)


@pytest.fixture(scope="module")
def plugin_library(trt: ModuleType) -> str:
    # $CORNERNET_TRT_PLUGIN as given; else this checkout's build, brought up to date first (loading never builds)
    try:
        prebuilt = os.environ.get(trt_plugins.ENV_PLUGIN_LIBRARY)
        library = trt_plugins.find_library() if prebuilt else build.ensure_plugin_library()
    except build.MissingToolError as error:
        pytest.skip(f"cannot build the plugin here: {error}")
    path = trt_plugins.load(library)
    assert trt_plugins.load(path) == path  # idempotent: the second call registers nothing
    creator = trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    assert creator is not None
    return path


def build_engine(trt: ModuleType, logger: Any, model: onnx.ModelProto) -> Any:
    """Parse, build (one optimisation profile) and deserialize an engine."""
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:  # 11.x networks are always strongly typed
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise AssertionError("ONNX parsing failed: " + "; ".join(errors))
    assert network.num_layers == 1 and network.get_layer(0).type == trt.LayerType.PLUGIN_V3
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", *PROFILE)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT could not build the engine (see its log)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    assert engine is not None, "TensorRT could not deserialize the engine (see its log)"
    return engine


def run(engine: Any, x: torch.Tensor) -> torch.Tensor:
    context = engine.create_execution_context()
    y = torch.empty_like(x)
    context.set_input_shape("x", tuple(x.shape))
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("y", y.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return y


@pytest.mark.tensorrt
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", list(MODES))
def test_engine_matches_torch_cummax(
    trt: ModuleType, logger: Any, plugin_library: str, mode: str, dtype: torch.dtype
) -> None:
    engine = build_engine(trt, logger, corner_pool_model(MODES[mode], dtype))
    for seed, shape in enumerate(RUN_SHAPES):
        x = make_input(shape, dtype, seed, specials=True)
        assert_bitwise_equal(run(engine, x), reference(x, mode), f"TensorRT {mode} {shape} {dtype}")


@pytest.mark.tensorrt
def test_missing_mode_defaults_to_top(trt: ModuleType, logger: Any, plugin_library: str) -> None:
    """The README's default: a node without ``mode`` pools towards the top."""
    engine = build_engine(trt, logger, corner_pool_model(None, torch.float32))
    x = make_input((2, 3, 17, 33), torch.float32, 0, specials=True)
    assert_bitwise_equal(run(engine, x), reference(x, "top"), "default mode")
