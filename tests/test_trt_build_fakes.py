"""The engine builder (``export.to_trt``) and the TensorRT backend end to end on the CPU stand-ins for ``tensorrt``
and ``cuda.bindings.runtime`` (``tests/trt_fakes.py``): every supported TensorRT version's API, the sidecar they
write, buffers, CUDA graphs, precision flags, timing caches and the one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import runtime.cuda_env as cuda_env
import trt_plugins
from export import to_trt
from export.trt_build import (
    BuildOptions,
)
from runtime.backends import open_backend
from runtime.backends.onnxruntime import PRECISION_KEY
from runtime.backends.tensorrt import TensorRTBackend
from runtime.engine_sidecar import (
    GpuInfo,
    PluginInfo,
    ShapeProfile,
    Sidecar,
    SourceInfo,
    TensorSpec,
    sidecar_path,
)
from runtime.errors import UserError
from runtime.meta import sha256_file

from . import trt_fakes
from .trt_fakes import FakeEnv

# ---------------------------------------------------------------------------------------------------
# Builder and backend end to end on the CPU stand-ins


@pytest.fixture(params=["10.16.1.11"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEnv:
    return trt_fakes.make_fake_env(request.param, monkeypatch, tmp_path)


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
    assert sidecar.plugin == PluginInfo(str(fake.plugin), "CornerPool", "1", "cornernet", "a" * 64, 1)
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
        exp = trt_fakes.expected_outputs(x)
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
    fp16 = trt_fakes.tiny_onnx(fake.tmp / "tiny.fp16.onnx", fake.tmp / "tiny.pth", fp16=True)
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
    fake.use_version("11.4.0.106")
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
    fake.use_version("11.4.0.106")
    with pytest.raises(
        UserError, match=r"built by TensorRT 10\.16\.1\.11, this process has TensorRT 11\.4\.0\.106"
    ):
        open_backend(engine)
    fake.use_version("10.16.1.11")
    fake.cudart.devices = [(b"NVIDIA A100-SXM4-80GB", 8, 0)]
    with pytest.raises(UserError, match=r"compute capability 9\.0\), this GPU is NVIDIA A100-SXM4-80GB"):
        open_backend(engine)
    fake.cudart.devices = [(b"NVIDIA H100 80GB HBM3", 9, 0)]
    with pytest.warns(UserWarning, match="built on NVIDIA Fake H200, running on NVIDIA H100"):
        open_backend(engine).close()
    fake.cudart.devices = [(b"NVIDIA Fake H200", 9, 0)]
    trt_fakes.write_fake_plugin(fake.plugin, version="2")
    with pytest.raises(
        UserError, match=r"built with CornerPool plugin version 1, .*libcornerpool_trt\.so is version 2"
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
    monkeypatch.setattr(trt_plugins, "load", str)  # "loads" without registering the creator
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


@pytest.fixture(scope="module")
def golden_onnx(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    export_onnx = pytest.importorskip(
        "export.onnx_export", reason="export/onnx_export.py not present"
    ).export_onnx
    return Path(
        export_onnx(golden_dir / "mmdet_checkpoint.pth", tmp_path_factory.mktemp("onnx") / "golden.onnx")
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
