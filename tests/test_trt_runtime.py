"""Engine builder (``export.to_trt``), TensorRT backend and ``runtime.bench``.

On CPU: the sidecar schema, the profile / version / GPU / plugin checks (pure functions), a scan of the
TensorRT-facing code for API names removed in TensorRT 11 or deprecated, the builder and the backend end to
end against strict stand-ins for ``tensorrt`` and ``cuda.bindings.runtime`` (``tests/trt_fakes.py``), and the
benchmark on the golden checkpoint and its ONNX export.

With TensorRT and a GPU (marked ``tensorrt``, skipped with the reason elsewhere): build an engine from the
golden checkpoint and verify it with ``runtime.eval --verify`` (ΔAP 0.000 in fp32).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime.cuda_env as cuda_env
import runtime.engine_sidecar as engine_sidecar
import trt_plugins
from export import to_trt
from export.corner_pool_onnx import add_plugin_fallback
from export.trt_build import (
    DEFAULT_MAX_HW,
    BuildOptions,
    build,
    default_timing_cache,
    onnx_paths,
    parse_hw,
)
from runtime import bench
from runtime.backends import open_backend
from runtime.backends.onnxruntime import META_KEY, PRECISION_KEY, SOURCE_CHECKPOINT_KEY, SOURCE_SHA256_KEY
from runtime.backends.tensorrt import TensorRTBackend
from runtime.cuda_env import parse_cuda_device
from runtime.engine_sidecar import (
    GpuInfo,
    PluginInfo,
    ShapeProfile,
    Sidecar,
    SourceInfo,
    TensorSpec,
    check_engine_file,
    check_gpu,
    check_plugin,
    check_shape_in_profile,
    check_tensorrt_version,
    sidecar_path,
)
from runtime.errors import UserError
from runtime.meta import ModelMeta, TestConfig, sha256_file

from . import trt_fakes
from .trt_fakes import FakeCudart, make_fake_trt

ROOT = Path(__file__).resolve().parents[1]
TRT_FILES = (
    ROOT / "export" / "trt_build.py",
    ROOT / "runtime" / "backends" / "tensorrt.py",
    ROOT / "runtime" / "cuda_env.py",
)
PROFILE = ShapeProfile("images", (1, 3, 127, 127), (4, 3, 511, 767), (4, 3, 767, 767))


def _sidecar(**changes: Any) -> Sidecar:
    base = Sidecar(
        engine_file="m.plan",
        engine_bytes=1234,
        engine_sha256="e" * 64,
        precision="fp32",
        inputs=(TensorSpec("images", "float32", (-1, 3, -1, -1)),),
        outputs=(TensorSpec("tl_scores", "float32", (-1, 100)), TensorSpec("tl_inds", "int64", (-1, 100))),
        profile=PROFILE,
        meta=ModelMeta(classes=("a", "b"), test_cfg=TestConfig(corner_topk=50)),
        tensorrt_version="10.16.1.11",
        gpu=GpuInfo("NVIDIA H200", "9.0"),
        plugin=PluginInfo("/lib/libcornerpool_trt.so", "a" * 64, 8),
        source=SourceInfo("/ckpt/m.pth", "c" * 64, "/ckpt/m.onnx", "d" * 64),
        build={"options": {"batch": 4}},
    )
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------------------------------------------
# Sidecar schema and the pure checks


def test_sidecar_round_trip(tmp_path: Path) -> None:
    sc = _sidecar()
    path = tmp_path / "m.plan.json"
    sc.write(path)
    assert Sidecar.read(path) == sc
    d = json.loads(path.read_text())
    assert (
        d["format"] == engine_sidecar.SIDECAR_FORMAT and d["format_version"] == engine_sidecar.SIDECAR_VERSION
    )
    assert set(d) == {
        "format",
        "format_version",
        "engine",
        "precision",
        "inputs",
        "outputs",
        "profile",
        "meta",
        "tensorrt",
        "gpu",
        "plugin",
        "source",
        "build",
    }
    assert d["profile"] == {
        "input": "images",
        "min": [1, 3, 127, 127],
        "opt": [4, 3, 511, 767],
        "max": [4, 3, 767, 767],
    }
    assert d["source"] == {
        "checkpoint": "/ckpt/m.pth",
        "checkpoint_sha256": "c" * 64,
        "onnx": "/ckpt/m.onnx",
        "onnx_sha256": "d" * 64,
    }
    assert ModelMeta.from_dict(d["meta"]) == sc.meta
    no_plugin = _sidecar(plugin=None, source=SourceInfo(None, None, "/m.onnx", "d" * 64))
    assert Sidecar.from_dict(no_plugin.to_dict()) == no_plugin
    assert sidecar_path(Path("/x/m.plan")) == Path("/x/m.plan.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something-else"), "not a cornernet-deploy engine sidecar"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.pop("gpu"), "malformed engine sidecar (KeyError"),
        (lambda d: d["profile"].update(min="big"), "malformed engine sidecar"),
        (lambda d: d.update(precision="int8"), "unknown precision 'int8'"),
        (lambda d: d["profile"].update(min=[1, 3, 900, 900]), "need 1 <= min <= opt <= max"),
    ],
)
def test_sidecar_errors_name_the_file_and_the_fix(tmp_path: Path, mutate: Any, message: str) -> None:
    d = _sidecar().to_dict()
    mutate(d)
    path = tmp_path / "m.plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"m\.plan\.json") as e:
        Sidecar.read(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Sidecar.read(path)


def test_shape_inside_profile_passes() -> None:
    for shape in [(1, 3, 127, 127), (4, 3, 767, 767), (2, 3, 511, 383)]:
        check_shape_in_profile(shape, PROFILE)


@pytest.mark.parametrize(
    ("shape", "fix"),
    [
        ((5, 3, 511, 511), "--batch 5"),
        ((1, 3, 1023, 767), "--max 1023x767"),
        ((1, 3, 511, 1151), "--max 767x1151"),
        ((1, 3, 63, 511), "--min 63x127"),
        ((1, 1, 511, 511), "1 channels"),
        ((3, 511, 511), "[N, 3, H, W]"),
    ],
)
def test_shape_outside_profile_says_how_to_rebuild(shape: tuple[int, ...], fix: str) -> None:
    rebuild = "python -m export.to_trt m.pth --out m.plan"
    with pytest.raises(UserError) as e:
        check_shape_in_profile(shape, PROFILE, "m.plan", rebuild)
    msg = str(e.value)
    assert msg.startswith("m.plan: ") and fix in msg and "\n" not in msg
    if fix.startswith("--"):
        assert f"rebuild with {rebuild} {fix}" in msg


def test_version_gpu_plugin_checks() -> None:
    sc, where, rebuild = _sidecar(), "m.plan", "python -m export.to_trt /ckpt/m.pth --out m.plan"
    check_tensorrt_version(sc, "10.16.1.11", where, rebuild)
    with pytest.raises(
        UserError,
        match=r"built by TensorRT 10\.16\.1\.11, this process has TensorRT 11\.4\.0\.106.*rebuild with python -m export\.to_trt",
    ):
        check_tensorrt_version(sc, "11.4.0.106", where, rebuild)
    assert check_gpu(sc, GpuInfo("NVIDIA H200", "9.0"), where, rebuild) is None
    warning = check_gpu(sc, GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), where, rebuild)
    assert warning is not None and "H100" in warning and "rebuild" in warning
    with pytest.raises(
        UserError, match=r"compute capability 9\.0\), this GPU is NVIDIA A100.*compute capability 8\.0"
    ):
        check_gpu(sc, GpuInfo("NVIDIA A100", "8.0"), where, rebuild)
    check_plugin(
        sc, "/other/place/libcornerpool_trt.so", "a" * 64, where, rebuild
    )  # same bytes elsewhere: fine
    with pytest.raises(
        UserError, match=r"sha256 aaaaaaaaaaaa\).*sha256 bbbbbbbbbbbb\); use the original library or rebuild"
    ):
        check_plugin(sc, "/lib/libcornerpool_trt.so", "b" * 64, where, rebuild)
    with pytest.raises(
        UserError, match="8 CornerPool plugin layers but the plugin library could not be loaded"
    ):
        check_plugin(sc, None, None, where, rebuild)
    check_plugin(
        _sidecar(plugin=PluginInfo("/lib/x.so", "a" * 64, 0)), None, None, where, rebuild
    )  # no plugin layers
    check_plugin(_sidecar(plugin=None), None, None, where, rebuild)
    check_engine_file(sc, Path("m.plan"), 1234)
    with pytest.raises(UserError, match="do not belong together"):
        check_engine_file(sc, Path("m.plan"), 999)


def test_rebuild_command_and_small_helpers() -> None:
    assert (
        _sidecar().rebuild_command("e.plan", "--max 1023x1023")
        == "python -m export.to_trt /ckpt/m.pth --out e.plan --max 1023x1023"
    )
    fp16 = _sidecar(precision="fp16", source=SourceInfo(None, None, "/m.onnx", "d" * 64))
    assert fp16.rebuild_command("e.plan") == "python -m export.to_trt /m.onnx --out e.plan --fp16"
    assert (
        parse_cuda_device(None) == 0 and parse_cuda_device("cuda") == 0 and parse_cuda_device("cuda:3") == 3
    )
    with pytest.raises(UserError, match="CUDA GPUs only"):
        parse_cuda_device("cpu")
    assert (
        parse_hw("511x767") == (511, 767)
        and parse_hw("767") == (767, 767)
        and parse_hw(" 127X255 ") == (127, 255)
    )
    for bad in ("511*767", "x", "0x5", "-1x4"):
        with pytest.raises(UserError, match="--max"):
            parse_hw(bad, "--max")
    assert onnx_paths(Path("/e/m.fp16.plan")) == (Path("/e/m.onnx"), Path("/e/m.fp16.onnx"))
    assert onnx_paths(Path("/e/m.engine")) == (Path("/e/m.onnx"), Path("/e/m.fp16.onnx"))
    cache = default_timing_cache("10.16.1.11", GpuInfo("NVIDIA H200 NVL", "9.0"))
    assert (
        cache.name == "trt-10.16.1.11-nvidia-h200-nvl-sm90.timing-cache" and cache.parent.name == "cornernet"
    )
    p = BuildOptions(batch=8).profile("images")
    assert (p.min, p.opt, p.max) == ((1, 3, 127, 127), (8, 3, 511, 767), (8, 3, 767, 767))
    with pytest.raises(UserError, match="--batch 0"):
        BuildOptions(batch=0).validate()
    with pytest.raises(UserError, match="min <= opt <= max"):
        BuildOptions(opt_hw=(1023, 1023)).validate()
    with pytest.raises(UserError, match=r"--min 63x127: sides must be at least 127 \(every input is padded"):
        BuildOptions(min_hw=(63, 127)).validate()


def test_default_profile_covers_coco() -> None:
    """Every COCO val2017 image is <= 640 px a side; mmdet pads each side to ``s | 127``."""
    from runtime.preprocess import pad_shape_for

    opts = BuildOptions()
    sides = [pad_shape_for(s, s)[0] for s in range(1, 641)]
    assert (
        min(sides) == opts.min_hw[0] == opts.min_hw[1] == 127
        and max(sides) == DEFAULT_MAX_HW[0] == DEFAULT_MAX_HW[1] == 767
    )
    assert opts.opt_hw == pad_shape_for(480, 640)


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


# ---------------------------------------------------------------------------------------------------
# Builder and backend end to end on the CPU stand-ins


def _tiny_onnx(path: Path, ckpt: Path, fp16: bool = False) -> Path:
    """An ONNX with our metadata: images [N,3,H,W] -> CornerPool -> row_mean [N,H], size [N,2] (the fake's network)."""
    ckpt.write_bytes(b"weights")
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    row_mean = helper.make_tensor_value_info("row_mean", TensorProto.FLOAT, ["batch", "height"])
    size = helper.make_tensor_value_info("size", TensorProto.INT64, ["batch", 2])
    nodes = [
        helper.make_node(
            "CornerPool",
            ["images"],
            ["pooled"],
            domain="cornernet",
            mode=0,
            plugin_version="1",
            plugin_namespace="cornernet",
        ),
        helper.make_node("ReduceMean", ["pooled"], ["row_mean"], axes=[1, 3], keepdims=0),
        helper.make_node("Shape", ["images"], ["size"], start=2),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [row_mean, size]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("cornernet", 1)],
    )
    add_plugin_fallback(model, 17)  # the model-local CornerPool function every plugin export carries
    meta = ModelMeta(classes=("a", "b", "c"))
    for k, v in {
        META_KEY: meta.to_json(),
        SOURCE_CHECKPOINT_KEY: str(ckpt),
        SOURCE_SHA256_KEY: sha256_file(ckpt),
        PRECISION_KEY: "fp16" if fp16 else "fp32",
    }.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


@dataclasses.dataclass
class FakeEnv:
    trt: Any
    cudart: FakeCudart
    plugin: Path
    onnx: Path
    tmp: Path
    logs: list[str]

    def use_version(self, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
        self.trt = make_fake_trt(version, self.cudart)
        trt_fakes.install(monkeypatch, self.trt, self.cudart)
        monkeypatch.setattr(trt_plugins, "load", trt_fakes.fake_plugin_loader(self.trt, self.plugin))
        monkeypatch.setattr(cuda_env, "_LOGGER", None)

    def build(
        self, options: BuildOptions | None = None, model: Path | None = None, out: str = "m.plan"
    ) -> tuple[Path, Sidecar]:
        options = options or BuildOptions(batch=2, timing_cache=self.tmp / "cache" / "t.cache")
        return build(model or self.onnx, self.tmp / out, options, log=self.logs.append)


@pytest.fixture(params=["10.16.1.11"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEnv:
    plugin = tmp_path / "libcornerpool_trt.so"
    plugin.write_bytes(b"plugin v1")
    env = FakeEnv(
        None, FakeCudart(), plugin, _tiny_onnx(tmp_path / "tiny.onnx", tmp_path / "tiny.pth"), tmp_path, []
    )
    env.use_version(monkeypatch, request.param)
    return env


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "row_mean": x.mean(axis=(1, 3)),
        "size": np.tile(np.array(x.shape[2:], np.int64), (x.shape[0], 1)),
    }


@pytest.mark.parametrize("fake", ["10.0.1", "10.16.1.11", "11.4.0.106"], indirect=True)
def test_build_then_run_on_fakes(fake: FakeEnv) -> None:
    engine, sidecar = fake.build()
    assert engine == fake.tmp / "m.plan" and Sidecar.read(sidecar_path(engine)) == sidecar
    builder = fake.trt.Builder.last
    assert builder.network.flags == 0  # fp32: no creation flags in any version
    assert not builder.config.flags and sidecar.precision == "fp32"  # TF32 cleared: fp32 means fp32
    # The parser got the model without its fallback function; the file keeps it (ONNX Runtime needs it).
    (parsed,) = fake.trt.Builder.last.parser_models
    assert not parsed.functions and [f.name for f in onnx.load(fake.onnx).functions] == ["CornerPool"]
    assert sidecar.tensorrt_version == fake.trt.__version__
    assert sidecar.gpu == GpuInfo("NVIDIA Fake H200", "9.0")
    assert sidecar.plugin == PluginInfo(str(fake.plugin), sha256_file(fake.plugin), 1)
    assert sidecar.source.checkpoint == str(fake.tmp / "tiny.pth") and sidecar.source.onnx == str(
        fake.onnx.resolve()
    )
    assert sidecar.profile == ShapeProfile("images", (1, 3, 127, 127), (2, 3, 511, 767), (2, 3, 767, 767))
    assert sidecar.inputs == (TensorSpec("images", "float32", (-1, 3, -1, -1)),)
    assert [(o.name, o.dtype) for o in sidecar.outputs] == [("row_mean", "float32"), ("size", "int64")]
    assert sidecar.meta.classes == ("a", "b", "c") and sidecar.engine_bytes == engine.stat().st_size
    assert (fake.tmp / "cache" / "t.cache").read_bytes().startswith(trt_fakes.CACHE_MAGIC)
    assert any(line.startswith("checked  m.plan loads and runs") for line in fake.logs)
    assert not fake.cudart.allocations and fake.cudart.streams == 0  # the smoke check freed everything

    backend = open_backend(engine, device="cuda")
    assert isinstance(backend, TensorRTBackend) and backend.output_names == ("row_mean", "size")
    assert backend.meta == sidecar.meta
    assert (
        backend.info["source_checkpoint"] == sidecar.source.checkpoint and backend.info["precision"] == "fp32"
    )
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 127, 255), (1, 3, 511, 767), (2, 3, 255, 127), (2, 3, 767, 767)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        out = backend.infer(x)
        exp = _expected(x)
        np.testing.assert_allclose(out["row_mean"], exp["row_mean"], rtol=1e-6)
        assert out["size"].dtype == np.int64 and (out["size"] == exp["size"]).all()
    assert len(fake.cudart.allocations) == 6  # 3 tensors x (device + pinned host), grown in place
    with pytest.raises(
        UserError, match=r"rebuild with python -m export\.to_trt .*tiny\.pth --out .*m\.plan --max 1023x767"
    ):
        backend.infer(np.zeros((1, 3, 1023, 511), np.float32))
    backend.close()
    backend.close()
    assert not fake.cudart.allocations and fake.cudart.streams == 0


def test_buffers_grow_only_when_needed(fake: FakeEnv) -> None:
    engine, _ = fake.build(BuildOptions(batch=2, use_timing_cache=False, check=False))
    backend = TensorRTBackend(engine)
    sizes = []
    for shape in [(1, 3, 127, 127), (1, 3, 127, 127), (2, 3, 511, 511), (1, 3, 127, 127), (2, 3, 511, 511)]:
        x = np.full(shape, 2.0, np.float32)
        assert (backend.infer(x)["row_mean"] == 2.0).all()
        sizes.append(tuple(sorted(b.capacity for b in backend._buffers.values())))
    assert sizes[0] == sizes[1] and sizes[2] == sizes[3] == sizes[4] and sizes[2] > sizes[0]
    backend.close()


def test_cuda_graph_replays_for_a_fixed_shape(fake: FakeEnv) -> None:
    engine, _ = fake.build(BuildOptions(batch=2, use_timing_cache=False, check=False))
    eager, graph = TensorRTBackend(engine), TensorRTBackend(engine, cuda_graph=True)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3, 255, 383), dtype=np.float32) for _ in range(3)] + [
        rng.standard_normal((1, 3, 127, 127), dtype=np.float32)
    ]
    for x in xs:
        a, b = eager.infer(x), graph.infer(x)
        assert all(np.array_equal(a[n], b[n]) for n in a)
    assert fake.cudart.captures == 2 and fake.cudart.launches == 4 and fake.cudart.graph_execs == 1
    eager.close()
    graph.close()
    assert fake.cudart.graph_execs == 0 and not fake.cudart.allocations


@pytest.mark.parametrize("fake", ["10.16.1.11", "11.4.0.106"], indirect=True)
def test_fp16_per_version(fake: FakeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    converted: list[Any] = []
    fp16_module = types.ModuleType("export.fp16")

    def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
        converted.append(model)
        for prop in model.metadata_props:
            if prop.key == PRECISION_KEY:
                prop.value = "fp16"
        return model

    fp16_module.convert_to_fp16 = convert_to_fp16  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "export.fp16", fp16_module)
    _, sidecar = fake.build(BuildOptions(fp16=True, use_timing_cache=False, check=False), out="m.fp16.plan")
    builder = fake.trt.Builder.last
    assert sidecar.precision == "fp16"
    if fake.trt.__version__.startswith("10."):  # weak typing: the builder flag on the fp32 ONNX
        assert (
            {f.name for f in builder.config.flags} == {"FP16"}
            and builder.network.flags == 0
            and not converted
        )
        assert sidecar.build["fp16_method"] == "builder_flag" and sidecar.source.onnx == str(
            fake.onnx.resolve()
        )
    else:  # 11: no flag; strongly typed network from the fp16 ONNX
        assert not builder.config.flags and builder.network.flags == 0 and len(converted) == 1
        assert sidecar.build["fp16_method"] == "fp16_onnx" and sidecar.source.onnx == str(
            fake.tmp / "m.fp16.onnx"
        )


def test_tf32_only_when_asked(fake: FakeEnv) -> None:
    _, sidecar = fake.build(BuildOptions(tf32=True, use_timing_cache=False, check=False))
    assert {f.name for f in fake.trt.Builder.last.config.flags} == {"TF32"} and sidecar.build["options"][
        "tf32"
    ]


def test_fp16_onnx_on_trt10_is_strongly_typed(fake: FakeEnv) -> None:
    fp16 = _tiny_onnx(fake.tmp / "tiny.fp16.onnx", fake.tmp / "tiny.pth", fp16=True)
    _, sidecar = fake.build(BuildOptions(use_timing_cache=False, check=False), model=fp16)
    builder = fake.trt.Builder.last
    assert sidecar.precision == "fp16" and not builder.config.flags
    assert builder.network.flags == 1 << int(fake.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 2


def test_timing_cache_is_reused_and_replaced_when_stale(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = fake.tmp / "cache" / "t.cache"
    fake.build()
    first = cache.read_bytes()
    fake.logs.clear()
    fake.build()
    assert any(line.startswith(f"timing   cache {cache}") for line in fake.logs)
    fake.use_version(monkeypatch, "11.4.0.106")
    fake.logs.clear()
    fake.build()
    assert any("is unreadable or from another TensorRT/GPU" in line for line in fake.logs)
    assert cache.read_bytes() != first and b"11.4.0.106" in cache.read_bytes()
    cache.write_bytes(b"\x00 not a timing cache")  # createTimingCache() gives None for this
    fake.logs.clear()
    fake.build()
    assert any("is unreadable or from another TensorRT/GPU" in line for line in fake.logs)
    assert cache.read_bytes().startswith(trt_fakes.CACHE_MAGIC)


@pytest.mark.parametrize("fake", ["10.0.1", "10.16.1.11", "11.4.0.106"], indirect=True)
def test_every_corner_pool_node_becomes_a_plugin_layer(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT 10.0-10.6 expand a model-local function of the node's op name before looking for a plugin, so
    the build hides the fallback function from the parser; were it shown, the layer count check would stop
    the build instead of silently making an engine without the plugin."""
    _, sidecar = fake.build(BuildOptions(use_timing_cache=False, check=False))
    assert sidecar.plugin is not None and sidecar.plugin.layers == 1
    import export.corner_pool_onnx

    monkeypatch.setattr(export.corner_pool_onnx, "drop_fallback_function", lambda model: None)
    if fake.trt.__version__ == "10.0.1":
        with pytest.raises(
            UserError, match=r"made 0 plugin layers of 1 CornerPool nodes; rebuild the plugin"
        ):
            fake.build(BuildOptions(use_timing_cache=False, check=False))
    else:  # plugin_namespace on the node makes the registered plugin win over the function
        assert fake.build(BuildOptions(use_timing_cache=False, check=False))[1].plugin.layers == 1


def test_cuda_init_failure_and_foreign_dtypes_are_one_line(fake: FakeEnv) -> None:
    engine, _ = fake.build(BuildOptions(use_timing_cache=False, check=False))
    fake.trt.cuda_init_fails = True  # the bindings raise TypeError for a null Builder/Runtime
    with pytest.raises(UserError, match=r"TensorRT could not create a builder \(CUDA initialisation failed"):
        fake.build(BuildOptions(use_timing_cache=False, check=False), out="n.plan")
    with pytest.raises(
        UserError, match=r"m\.plan: TensorRT could not create a runtime \(CUDA initialisation"
    ):
        open_backend(engine, device="cuda")
    with pytest.raises(
        UserError, match=r"m\.plan: tensor 'logits' has type DataType\.BF16, which has no numpy"
    ):
        cuda_env.numpy_dtype(fake.trt, fake.trt.DataType.BF16, "logits", engine.name)


def test_engine_refuses_other_version_gpu_and_plugin(fake: FakeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = fake.build(BuildOptions(use_timing_cache=False, check=False))
    fake.use_version(monkeypatch, "11.4.0.106")
    with pytest.raises(
        UserError, match=r"built by TensorRT 10\.16\.1\.11, this process has TensorRT 11\.4\.0\.106"
    ):
        open_backend(engine)
    fake.use_version(monkeypatch, "10.16.1.11")
    fake.cudart.devices = [(b"NVIDIA A100-SXM4-80GB", 8, 0)]
    with pytest.raises(UserError, match=r"compute capability 9\.0\), this GPU is NVIDIA A100-SXM4-80GB"):
        open_backend(engine)
    fake.cudart.devices = [(b"NVIDIA H100 80GB HBM3", 9, 0)]
    with pytest.warns(UserWarning, match="built on NVIDIA Fake H200, running on NVIDIA H100"):
        open_backend(engine).close()
    fake.cudart.devices = [(b"NVIDIA Fake H200", 9, 0)]
    fake.plugin.write_bytes(b"plugin v2")
    with pytest.raises(UserError, match=r"built with plugin library .*libcornerpool_trt\.so"):
        open_backend(engine)

    def broken() -> str:
        raise UserError("cannot build the plugin library: nvcc not found")

    monkeypatch.setattr(trt_plugins, "load", broken)
    with pytest.raises(
        UserError, match=r"plugin: UserError: cannot build the plugin library.*could not be loaded"
    ):
        open_backend(engine)
    with pytest.raises(UserError, match="--device cuda:1: only 1 CUDA device"):
        TensorRTBackend(engine, device="cuda:1")


def test_engine_file_problems(fake: FakeEnv) -> None:
    engine, _ = fake.build(BuildOptions(use_timing_cache=False, check=False))
    with open(engine, "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="do not belong together"):
        open_backend(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(UserError, match=r"no sidecar m\.plan\.json next to it"):
        open_backend(engine)


def test_build_errors_are_one_line(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = str(fake.onnx)
    monkeypatch.setattr(
        trt_plugins, "load", lambda: str(fake.plugin)
    )  # "loads" without registering the creator
    with pytest.raises(
        UserError, match=r"ONNX parser failed with 1 error.*plugin is not registered.*Plugin not found"
    ):
        fake.build()
    fake.cudart.devices = []
    assert to_trt.main([onnx_file, "--out", str(fake.tmp / "m.plan")]) == 2
    assert (
        capsys.readouterr().err
        == "error: no CUDA device (cudaErrorNoDevice); TensorRT needs an NVIDIA GPU and driver\n"
    )
    trt_fakes.install(monkeypatch, None, fake.cudart)  # `import tensorrt` fails
    assert to_trt.main([onnx_file, "--out", str(fake.tmp / "m.plan")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: TensorRT is not available (`import tensorrt` failed:") and err.count("\n") == 1
    )
    assert to_trt.main([onnx_file, "--out", str(fake.tmp / "m.trt")]) == 2
    assert "must end in .plan or .engine" in capsys.readouterr().err
    assert to_trt.main([str(fake.tmp / "nothing.pth")]) == 2
    assert "nothing.pth: not found" in capsys.readouterr().err


def test_to_trt_help_justifies_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        to_trt.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--min 127x127 --max 767x767 cover all of COCO",
        "--opt 511x767",
        "--fp16",
        "--timing-cache",
        "--workspace",
        "BuilderFlag.FP16",
    ):
        assert text in " ".join(out.split()), text


# ---------------------------------------------------------------------------------------------------
# runtime.bench


def test_bench_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def summary(model: str, fps: float) -> dict[str, Any]:
        stats = {"p50_ms": 1e3 / fps, "p90_ms": 1.1e3 / fps, "p99_ms": 1.2e3 / fps, "fps": fps}
        return {
            "model": model,
            "backend": "x",
            "device": "cpu",
            "precision": "fp32",
            "images": 4,
            "network": stats,
            "end_to_end": stats,
        }

    table = bench.format_table([summary("a.pth", 2.0), summary("b.onnx", 5.0)])
    assert "1.00x" in table and "2.50x" in table and "p99" in table
    assert bench.main(["m.pth", "--images", str(tmp_path)]) == 2
    assert f"{tmp_path}: is empty" in capsys.readouterr().err
    assert bench.main(["m.pth"]) == 2
    assert "--images DIR" in capsys.readouterr().err


@pytest.fixture(scope="module")
def golden_onnx(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    export_onnx = pytest.importorskip(
        "export.onnx_export", reason="export/onnx_export.py not present"
    ).export_onnx
    return Path(
        export_onnx(golden_dir / "mmdet_checkpoint.pth", tmp_path_factory.mktemp("onnx") / "golden.onnx")
    )


@pytest.mark.slow
def test_bench_pth_and_onnx_on_cpu(
    golden_dir: Path, golden_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    ckpt = golden_dir / "mmdet_checkpoint.pth"
    argv = [str(ckpt), str(golden_onnx), "--images", str(golden_dir / "coco" / "images"), "--device", "cpu"]
    assert bench.main([*argv, "--limit", "2", "--warmup", "1", "--iters", "3", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("mmdet_checkpoint.pth", "golden.onnx"))]
    assert len(rows) == 2 and "pytorch" in rows[0] and "onnxruntime" in rows[1] and "1.00x" in rows[0]
    assert "network only" in out and "with pre-process + decode" in out
    results = json.loads(report.read_text())["results"]
    assert [r["backend"] for r in results] == ["pytorch", "onnxruntime"]
    for r in results:
        assert r["batches"] == 3 and r["images"] == 3 and r["device"] == "cpu"
        assert r["network"]["fps"] > 0 and r["end_to_end"]["fps"] <= r["network"]["fps"]
        assert (
            r["network"]["p50_ms"]
            <= r["network"]["p90_ms"]
            <= r["network"]["p99_ms"]
            <= r["end_to_end"]["p99_ms"]
        )


@pytest.mark.slow
@pytest.mark.parametrize("fake", ["10.0.1", "10.16.1.11"], indirect=True)
def test_checkpoint_to_engine_on_fakes_with_the_real_export(
    fake: FakeEnv, golden_dir: Path, golden_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.pth`` -> export_onnx (its real output, exported once) -> fake parse/build -> sidecar."""
    import shutil

    import export.onnx_export

    calls: list[dict[str, Any]] = []

    def export_onnx(ckpt: Path, out: Path, **kwargs: Any) -> Path:
        calls.append({"ckpt": ckpt, "out": out, **kwargs})
        shutil.copy(golden_onnx, out)
        return Path(out)

    monkeypatch.setattr(export.onnx_export, "export_onnx", export_onnx)
    ckpt = golden_dir / "mmdet_checkpoint.pth"
    engine, sc = fake.build(
        BuildOptions(batch=4, use_timing_cache=False, check=False), model=ckpt, out="hg.plan"
    )
    assert calls == [
        {
            "ckpt": ckpt,
            "out": fake.tmp / "hg.onnx",
            "outputs": "proposals",
            "corner_pool": "plugin",
            "opset": 18,
            "fp16": False,
        }
    ]
    assert sc.source == SourceInfo(
        str(ckpt.resolve()), sha256_file(ckpt), str(fake.tmp / "hg.onnx"), sha256_file(golden_onnx)
    )
    assert sc.inputs == (TensorSpec("images", "float32", (-1, 3, -1, -1)),)
    assert [o.name for o in sc.outputs] == [
        "tl_scores",
        "tl_inds",
        "tl_embs",
        "tl_offs",
        "br_scores",
        "br_inds",
        "br_embs",
        "br_offs",
    ]
    assert {o.name: o.dtype for o in sc.outputs}["tl_inds"] == "int64"
    assert sc.plugin is not None and sc.plugin.layers == 4  # one plugin layer per CornerPool node
    assert sc.meta.classes == ("shape0", "shape1", "shape2") and sc.build["export"]["corner_pool"] == "plugin"
    assert sc.rebuild_command(engine).startswith(f"python -m export.to_trt {ckpt.resolve()} --out")


# ---------------------------------------------------------------------------------------------------
# Real TensorRT on a GPU


@pytest.fixture(scope="module")
def real_trt() -> None:
    reason = cuda_env.tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def golden_engine(real_trt: None, golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "golden.plan"
    assert (
        to_trt.main(
            [str(golden_dir / "mmdet_checkpoint.pth"), "--out", str(out), "--batch", "2", "--max", "767x767"]
        )
        == 0
    )
    return out


def _eval_golden(engine: Path, golden_dir: Path, report: Path, *extra: str) -> dict[str, Any]:
    from runtime.eval import main as eval_main

    args = [
        str(engine),
        "--ann",
        str(golden_dir / "coco" / "annotations.json"),
        "--images",
        str(golden_dir / "coco" / "images"),
    ]
    code = eval_main([*args, "--no-progress", "--verify", "--report", str(report), *extra])
    rep = json.loads(report.read_text())
    assert code == 0, rep.get("verify", {}).get("reasons")
    return rep


@pytest.mark.tensorrt
def test_golden_engine_verifies_exactly_in_fp32(
    golden_engine: Path, golden_dir: Path, tmp_path: Path
) -> None:
    sidecar = Sidecar.read(sidecar_path(golden_engine))
    pools = sum(n.op_type == "CornerPool" for n in onnx.load(sidecar.source.onnx).graph.node)
    assert sidecar.precision == "fp32" and sidecar.plugin is not None and sidecar.plugin.layers == pools == 4
    rep = _eval_golden(golden_engine, golden_dir, tmp_path / "report.json")
    v = rep["verify"]
    assert v["passed"] and v["matched_rate"] >= 0.99
    assert all(abs(d) < 5e-4 for d in v["delta_ap"].values()), v["delta_ap"]  # prints as 0.000
    assert rep["backend_info"]["tensorrt"] == sidecar.tensorrt_version


@pytest.mark.tensorrt
def test_golden_engine_batches_shapes_and_graphs(golden_engine: Path, golden_dir: Path) -> None:
    from runtime.pipeline import prepare

    items = [
        prepare(i, p, Sidecar.read(sidecar_path(golden_engine)).meta, False)
        for i, p in enumerate(sorted((golden_dir / "coco" / "images").iterdir()))
    ]
    with TensorRTBackend(golden_engine) as plain, TensorRTBackend(golden_engine, cuda_graph=True) as graph:
        for p in items:  # shapes go up and down: buffers grow, graphs are re-captured
            x = p.inputs[0][None]
            a, b = plain.infer(x), graph.infer(x)
            for n in a:
                np.testing.assert_array_equal(a[n], b[n])
            two = plain.infer(np.concatenate([x, x]))  # batch 2 may pick other tactics: scores agree closely;
            for n in ("tl_scores", "br_scores"):  # indices of tied (zero) scores may come in another order
                np.testing.assert_allclose(two[n][1], a[n][0], rtol=1e-4, atol=1e-5)
        with pytest.raises(UserError, match="--max 1023x767"):
            plain.infer(np.zeros((1, 3, 1023, 511), np.float32))


@pytest.mark.tensorrt
@pytest.mark.slow
def test_golden_engine_fp16_within_tolerance(real_trt: None, golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "golden.fp16.plan"
    assert to_trt.main([str(golden_dir / "mmdet_checkpoint.pth"), "--out", str(out), "--fp16"]) == 0
    rep = _eval_golden(out, golden_dir, tmp_path / "report.json")
    assert rep["backend_info"]["precision"] == "fp16" and rep["verify"]["passed"]
