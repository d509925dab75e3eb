"""The TensorRT-facing code uses only API names that exist in TensorRT 10 and 11, and enums by name (an AST scan;
TensorRT itself is not needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRT_FILES = (
    ROOT / "export" / "trt_build.py",
    ROOT / "runtime" / "backends" / "tensorrt.py",
    ROOT / "runtime" / "cuda_env.py",
)

# ---------------------------------------------------------------------------------------------------
# The TensorRT-facing code uses only names that exist in TensorRT 10 and 11, enums by name


# Removed in TensorRT 10 or 11, or deprecated there (tensorrt_onnx.md §1.5; TRT 10/11 migration guides).
DENYLIST = {
    # binding-index API and implicit batch (removed in 10)
    "execute_async_v2", "execute_async", "execute", "set_binding_shape", "get_binding_shape", "get_binding_index",
    "get_binding_name", "get_binding_dtype", "binding_is_input", "num_bindings", "all_binding_shapes_specified",
    "build_engine", "build_cuda_engine", "max_workspace_size", "max_batch_size", "EXPLICIT_BATCH", "EXPLICIT_PRECISION",
    "active_optimization_profile", "get_profile_shape",
    # removed in 11 (weak typing, implicit quantization, ...)
    "device_memory_size", "int8_calibrator", "platform_has_fast_fp16", "platform_has_fast_int8", "set_dynamic_range",
    "dynamic_range", "create_execution_context_without_device_memory", "set_shape_values", "algorithm_selector",
    "set_output_type", "reset_precision", "reset_output_type", "precision_is_set", "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS", "STRICT_TYPES", "INT8", "BF16", "FP8", "INT4", "FP4", "get_calibration_profile",
    "set_calibration_profile", "getPluginCreatorList", "get_plugin_creator", "register_creator",
}  # fmt: skip

# ``trt.X`` / ``trt.X.Y`` chains allowed, each checked present in the tensorrt Python bindings 10.0.1,
# 10.16.1.11 and 11.4.0.106 (pybind names in tensorrt.so; nptype and __version__ in tensorrt/__init__.py),
# except the version-gated ones below.
ALLOWED_TRT = {
    "__version__", "Logger", "Logger.WARNING", "Logger.VERBOSE", "Runtime", "Builder", "OnnxParser", "nptype",
    "TensorIOMode.INPUT", "MemoryPoolType.WORKSPACE", "LayerType.PLUGIN_V3", "BuilderFlag.TF32",
    "BuilderFlag", "NetworkDefinitionCreationFlag", "OnnxParserFlag",
}  # fmt: skip
# Present in some versions only: each use must sit in a function that tests ``hasattr(..., NAME)`` first.
GATED = {
    "BuilderFlag.FP16": "FP16",  # 10.x only
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": "STRONGLY_TYPED",  # 10.x; deprecated and ignored in 11
}
FLAG_METHODS = {
    "set_flag",
    "clear_flag",
    "get_flag",
    "set_memory_pool_limit",
    "set_preview_feature",
    "set_tactic_sources",
}


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` -> ``["A", "B"]``; None when not rooted at the name ``trt``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id == "trt" else None


def _trt_chains(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return [
        (".".join(c), n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and id(n) not in inner and (c := _chain(n))
    ]


def _enclosing_functions(tree: ast.AST) -> dict[int, ast.FunctionDef]:
    owner: dict[int, ast.FunctionDef] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for n in ast.walk(fn):
                owner[id(n)] = fn  # ast.walk is breadth first: the innermost function wins
    return owner


def _hasattr_names(fn: ast.AST) -> set[str]:
    return {
        str(n.args[1].value)
        for n in ast.walk(fn)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id == "hasattr"
        and len(n.args) == 2
        and isinstance(n.args[1], ast.Constant)
    }


@pytest.mark.parametrize("path", TRT_FILES, ids=lambda p: p.name)
def test_trt_code_uses_api_of_both_10_and_11(path: Path) -> None:
    tree = ast.parse(path.read_text())
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attrs & DENYLIST, (
        f"{path.name} uses removed/deprecated TensorRT API: {sorted(attrs & DENYLIST)}"
    )
    owners = _enclosing_functions(tree)
    chains = _trt_chains(tree)
    assert chains, (
        "the scan found no trt.X use at all: did the module stop calling its TensorRT argument 'trt'?"
    )
    for chain, node in chains:
        if chain in GATED:
            fn = owners.get(id(node))
            assert fn is not None and GATED[chain] in _hasattr_names(fn), (
                f"{path.name}: trt.{chain} used without hasattr(..., {GATED[chain]!r}) in the same function"
            )
        else:
            assert chain in ALLOWED_TRT, (
                f"{path.name}: trt.{chain} is not in the list checked against TensorRT 10.0, 10.16 and 11.4"
            )


@pytest.mark.parametrize("path", TRT_FILES, ids=lambda p: p.name)
def test_trt_enums_by_name_never_by_number(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            args = [*n.args, *(k.value for k in n.keywords)]
            if n.func.attr in FLAG_METHODS:
                assert args and not isinstance(args[0], ast.Constant), (
                    f"{path.name}:{n.lineno}: {n.func.attr}() with a literal; use the enum member by name"
                )
            chain = _chain(n.func)
            if (
                chain
                and chain[0][:1].isupper()
                and len(chain) == 1
                and chain[0] not in {"Logger", "Runtime", "Builder", "OnnxParser"}
            ):
                assert not any(isinstance(a, ast.Constant) for a in args), (
                    f"{path.name}:{n.lineno}: trt.{chain[0]}(<number>)"
                )
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.LShift):
            assert not isinstance(n.right, ast.Constant), (
                f"{path.name}:{n.lineno}: hard-coded flag bit '<< {ast.unparse(n.right)}'; use 1 << int(trt.Enum.NAME)"
            )
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "create_network":
            assert not (n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value != 0), (
                "create_network(<flag bits>)"
            )
