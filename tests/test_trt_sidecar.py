"""The engine sidecar ``NAME.plan.json`` and the pure checks over it (schema, profile, TensorRT version, GPU,
plugin identity), plus the small helpers of the engine builder. Plain Python: runs everywhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import runtime.engine_sidecar as engine_sidecar
from export.trt_build import (
    DEFAULT_MAX_HW,
    BuildOptions,
    default_timing_cache,
    onnx_paths,
    parse_hw,
)
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
from runtime.meta import ModelMeta, TestConfig
from trt_plugins.stamp import PluginIdentity

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
        plugin=PluginInfo("/lib/libcornerpool_trt.so", "CornerPool", "1", "cornernet", "a" * 64, 8),
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
        (lambda d: d.update(precision="bf16"), "unknown precision 'bf16'"),
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
    check_engine_file(sc, Path("m.plan"), 1234)
    with pytest.raises(UserError, match="do not belong together"):
        check_engine_file(sc, Path("m.plan"), 999)


def test_plugin_identified_by_name_version_namespace_and_sources() -> None:
    """The same sources anywhere pass; other sources or no stamp warn; another version or plugin is refused."""
    sc, where, rebuild = _sidecar(), "m.plan", "python -m export.to_trt /ckpt/m.pth --out m.plan"
    same = PluginIdentity("CornerPool", "1", "cornernet", "a" * 64)
    assert check_plugin(sc, "/other/place/libcornerpool_trt.so", same, where, rebuild) is None
    warning = check_plugin(
        sc, "/x/lib.so", dataclasses.replace(same, sources_sha256="b" * 64), where, rebuild
    )
    assert warning is not None and "\n" not in warning
    assert (
        "built with plugin sources aaaaaaaaaaaa, /x/lib.so was built from other sources (bbbbbbbbbbbb)"
        in warning
    )
    assert "python -m trt_plugins.build" in warning and f"rebuild the engine with {rebuild}" in warning
    warning = check_plugin(sc, "/x/lib.so", None, where, rebuild)
    assert warning is not None and "has no identity stamp lib.so.json" in warning
    with pytest.raises(
        UserError, match=r"^m\.plan: built with CornerPool plugin version 1, /x/lib\.so is version 2;"
    ):
        check_plugin(sc, "/x/lib.so", dataclasses.replace(same, version="2"), where, rebuild)
    with pytest.raises(
        UserError, match=r"built with plugin cornernet::CornerPool, but /x/lib\.so is other::CornerPool"
    ):
        check_plugin(sc, "/x/lib.so", dataclasses.replace(same, namespace="other"), where, rebuild)
    no_layers = _sidecar(plugin=dataclasses.replace(sc.plugin, layers=0))
    assert (
        check_plugin(no_layers, "/x/lib.so", dataclasses.replace(same, version="2"), where, rebuild) is None
    )
    assert check_plugin(_sidecar(plugin=None), "/x/lib.so", None, where, rebuild) is None


def test_sidecar_of_format_1_asks_for_a_rebuild(tmp_path: Path) -> None:
    """Format 1 pinned the plugin library's sha256; its engines are rebuilt rather than guessed at."""
    d = _sidecar().to_dict()
    d["format_version"] = 1
    d["plugin"] = {"library": "/lib/libcornerpool_trt.so", "sha256": "a" * 64, "layers": 8}
    path = tmp_path / "m.plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"format_version 1, this version reads 2; rebuild the engine"):
        Sidecar.read(path)


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
