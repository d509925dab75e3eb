"""Engines load a prebuilt CornerPool plugin and never compile; the plugin is identified by its sources.

On the CPU stand-ins (``tests/trt_fakes.py``), with the real :mod:`trt_plugins` loader and stamps: no process is
started while a ``.plan`` loads (not even when the plugin's sources changed since it was built); the library is found
from ``--plugin``, ``$CORNERNET_TRT_PLUGIN``, the sidecar's recorded path or the build output, in that order; a
rebuild of the same sources (other bytes) is accepted, other sources warn, another plugin version is refused, and no
library anywhere is one line with the build command. The backend frees everything on every construction error.
"""

from __future__ import annotations

import _posixsubprocess
import gc
import json
import os
import subprocess
import warnings
from pathlib import Path
from subprocess import Popen as subprocess_popen
from typing import Any

import numpy as np
import pytest

import trt_plugins
from export.trt_build import BuildOptions
from runtime.backends import open_backend
from runtime.backends.tensorrt import TensorRTBackend
from runtime.engine_sidecar import sidecar_path
from runtime.errors import UserError
from trt_plugins import build as plugin_build
from trt_plugins.stamp import read_identity, sources_digest, stamp_path

from . import trt_fakes
from .trt_fakes import FakeEnv

NO_BUILD = BuildOptions(use_timing_cache=False, check=False)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEnv:
    return trt_fakes.make_fake_env("10.16.1.11", monkeypatch, tmp_path)


def _new_process(fake: FakeEnv) -> None:
    """What a new process sees: nothing registered with TensorRT, no library loaded."""
    fake.use_version(fake.trt.__version__)


def _forbid_processes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way of starting a program raise (and record the attempt)."""
    attempts: list[str] = []

    def refuse(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise AssertionError(f"{name} called while loading an engine")

        return call

    monkeypatch.setattr(subprocess, "Popen", refuse("subprocess.Popen"))
    # what every Popen ends in, also one imported elsewhere before this test
    monkeypatch.setattr(subprocess, "_fork_exec", refuse("_posixsubprocess.fork_exec"), raising=False)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", refuse("_posixsubprocess.fork_exec"))
    for name in (
        "system",
        "fork",
        "forkpty",
        "posix_spawn",
        "posix_spawnp",
        "execv",
        "execve",
        "execvp",
        "popen",
    ):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    return attempts


def test_loading_an_engine_never_starts_a_process(fake: FakeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin was built before the sources changed (its stamp's hash is not today's): the old loader rebuilt
    it here, with nvcc; now it loads the library the engine was built with and starts nothing."""
    library = fake.tmp / "build" / plugin_build.PLUGIN_LIBRARY
    library.parent.mkdir()
    trt_fakes.write_fake_plugin(library, sources_sha256="0" * 64)
    assert not plugin_build.is_up_to_date(library, plugin_build.PLUGIN_SOURCES)
    monkeypatch.setattr(trt_plugins, "default_library", lambda: library)
    monkeypatch.delenv(trt_plugins.ENV_PLUGIN_LIBRARY)
    engine, sidecar = fake.build(BuildOptions(use_timing_cache=False, check=False, plugin=library))
    assert sidecar.plugin is not None and sidecar.plugin.library == str(library.resolve())
    _new_process(fake)
    attempts = _forbid_processes(monkeypatch)
    with pytest.raises(AssertionError, match=r"subprocess\.Popen called"):  # the guard itself works
        subprocess.run(["true"])
    with pytest.raises(AssertionError, match=r"_posixsubprocess\.fork_exec called"):
        subprocess_popen(["true"])
    attempts.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_backend(engine, device="cuda") as backend:
            x = np.ones((1, 3, 127, 127), np.float32)
            assert (backend.infer(x)["row_mean"] == 1.0).all()
    assert attempts == []
    assert backend.info["plugin_library"] == str(library.resolve())
    assert fake.trt.get_plugin_registry().loads == [str(library.resolve())]


def test_rebuilt_plugin_with_identical_sources_is_accepted(fake: FakeEnv) -> None:
    """Same sources compiled again (another nvcc, other bytes), or moved: the engine loads without a warning."""
    engine, sidecar = fake.build(NO_BUILD)
    assert sidecar.plugin is not None and sidecar.plugin.sources_sha256 == "a" * 64
    before = fake.plugin.read_bytes()
    trt_fakes.write_fake_plugin(fake.plugin, build=b" compiled by nvcc 13.1")
    assert fake.plugin.read_bytes() != before
    moved = trt_fakes.write_fake_plugin(fake.tmp / "elsewhere.so", build=b" compiled by nvcc 12.9")
    for plugin in (None, moved):
        _new_process(fake)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            backend = TensorRTBackend(engine, plugin=plugin)
        assert backend.info["plugin_library"] == str(plugin or fake.plugin)
        backend.close()


def test_plugin_of_other_sources_loads_with_a_warning(fake: FakeEnv) -> None:
    engine, _ = fake.build(NO_BUILD)
    trt_fakes.write_fake_plugin(fake.plugin, sources_sha256="b" * 64)
    _new_process(fake)
    with pytest.warns(
        UserWarning, match=r"built with plugin sources aaaaaaaaaaaa, .* other sources \(bbbbbbbbbbbb\)"
    ):
        backend = TensorRTBackend(engine)
    assert backend.infer(np.zeros((1, 3, 127, 127), np.float32))["size"].tolist() == [[127, 127]]
    backend.close()
    stamp_path(fake.plugin).unlink()
    _new_process(fake)
    with pytest.warns(UserWarning, match=r"has no identity stamp libcornerpool_trt\.so\.json"):
        TensorRTBackend(engine).close()


def test_plugin_of_another_version_is_refused_before_it_is_registered(fake: FakeEnv) -> None:
    engine, _ = fake.build(NO_BUILD)
    trt_fakes.write_fake_plugin(fake.plugin, version="2")
    _new_process(fake)
    with pytest.raises(
        UserError, match=r"built with CornerPool plugin version 1, .* is version 2; use a library"
    ) as e:
        TensorRTBackend(engine)
    assert "\n" not in str(e.value)
    assert fake.trt.get_plugin_registry().loads == []
    assert not fake.cudart.allocations and fake.cudart.streams == 0


def test_no_plugin_anywhere_is_one_line_with_the_build_command(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, sidecar = fake.build(NO_BUILD)
    monkeypatch.delenv(trt_plugins.ENV_PLUGIN_LIBRARY)
    fake.plugin.unlink()  # the library the sidecar recorded
    _new_process(fake)
    _forbid_processes(monkeypatch)
    with pytest.raises(UserError) as e:
        open_backend(engine)
    message = str(e.value)
    assert "\n" not in message and message.startswith("no CornerPool TensorRT plugin library (looked at ")
    assert str(fake.plugin) in message and str(trt_plugins.default_library()) in message
    assert "build it with python -m trt_plugins.build" in message and "--plugin PATH" in message
    with pytest.raises(
        UserError, match=r"--plugin names .*missing\.so, which does not exist; build the plugin with"
    ):
        TensorRTBackend(engine, plugin=fake.tmp / "missing.so")
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(fake.tmp / "gone.so"))
    with pytest.raises(UserError, match=r"\$CORNERNET_TRT_PLUGIN names .*gone\.so, which does not exist"):
        open_backend(engine)
    assert fake.trt.get_plugin_registry().loads == [] and sidecar.plugin is not None


def test_library_is_looked_for_in_order(fake: FakeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--plugin``, then ``$CORNERNET_TRT_PLUGIN``, then the sidecar's recorded path, then the build output."""
    engine, sidecar = fake.build(NO_BUILD)
    assert sidecar.plugin is not None and sidecar.plugin.library == str(fake.plugin)
    explicit, env = (trt_fakes.write_fake_plugin(fake.tmp / f"{name}.so") for name in ("explicit", "env"))
    default = trt_fakes.write_fake_plugin(fake.tmp / "default.so")
    monkeypatch.setattr(trt_plugins, "default_library", lambda: default)
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(env))
    chosen = []
    for plugin, unset_env, remove_recorded in [
        (explicit, False, False),
        (None, False, False),
        (None, True, False),
        (None, True, True),
    ]:
        if unset_env:
            monkeypatch.delenv(trt_plugins.ENV_PLUGIN_LIBRARY, raising=False)
        if remove_recorded:
            fake.plugin.unlink()
        _new_process(fake)
        with TensorRTBackend(engine, plugin=plugin) as backend:
            chosen.append(Path(backend.info["plugin_library"]).name)
    assert chosen == ["explicit.so", "env.so", "libcornerpool_trt.so", "default.so"]
    assert trt_plugins.library_path() == str(default)  # what export.to_triton copies when nothing is recorded
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(env))
    assert trt_plugins.library_path() == str(env.resolve())


def test_to_trt_builds_a_stale_plugin_and_loading_does_not(
    fake: FakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--plugin``/``$CORNERNET_TRT_PLUGIN``, export.to_trt brings the build output up to date first (the
    build is replaced by one that writes a fake library, as CMake would with its stamp); the backend never does."""
    monkeypatch.delenv(trt_plugins.ENV_PLUGIN_LIBRARY)
    out_dir = fake.tmp / "plugin-build"
    monkeypatch.setattr(plugin_build, "default_build_dir", lambda: out_dir)
    monkeypatch.setattr(trt_plugins, "default_library", lambda: out_dir / plugin_build.PLUGIN_LIBRARY)
    builds: list[Path] = []

    def fake_build(out: Path, **kwargs: Any) -> plugin_build.BuildResult:
        builds.append(out)
        out.mkdir(exist_ok=True)
        library = out / plugin_build.PLUGIN_LIBRARY
        trt_fakes.write_fake_plugin(library, sources_sha256=sources_digest(plugin_build.PLUGIN_SOURCES))
        return plugin_build.BuildResult(out / plugin_build.KERNEL_LIBRARY, library, None, "10.16.1", "13.0")

    monkeypatch.setattr(plugin_build, "build", fake_build)
    engine, sidecar = fake.build(NO_BUILD)
    assert builds == [out_dir]
    assert sidecar.plugin is not None and sidecar.plugin.sources_sha256 == sources_digest(
        plugin_build.PLUGIN_SOURCES
    )
    fake.build(NO_BUILD, out="again.plan")
    assert builds == [out_dir]  # up to date: not built again
    stamp = json.loads(stamp_path(out_dir / plugin_build.PLUGIN_LIBRARY).read_text())
    stamp["sources_sha256"] = "0" * 64  # sources changed since
    stamp_path(out_dir / plugin_build.PLUGIN_LIBRARY).write_text(json.dumps(stamp))
    _new_process(fake)
    with pytest.warns(UserWarning, match="other sources"):
        TensorRTBackend(engine).close()
    assert builds == [out_dir]
    _new_process(fake)
    fake.build(NO_BUILD, out="third.plan")
    assert builds == [out_dir, out_dir]


def test_to_trt_refuses_a_plugin_without_identity(fake: FakeEnv) -> None:
    stamp_path(fake.plugin).unlink()
    with pytest.raises(
        UserError, match=r"libcornerpool_trt\.so: no identity stamp libcornerpool_trt\.so\.json"
    ):
        fake.build(NO_BUILD)
    stamp_path(fake.plugin).write_text("{not json")
    with pytest.raises(UserError, match=r"libcornerpool_trt\.so\.json: the plugin's stamp is not valid JSON"):
        read_identity(fake.plugin)
    stamp_path(fake.plugin).write_text(json.dumps({"name": "CornerPool", "version": 1}))
    with pytest.raises(UserError, match="lacks version, namespace, sources_sha256; rebuild the plugin"):
        fake.build(NO_BUILD)


# ---------------------------------------------------------------------------------------------------
# Resource hygiene


def _rewrite_plan(engine: Path, change: Any) -> None:
    """Edit the fake plan's JSON and keep the sidecar's size in step (so only the edit is wrong)."""
    data = engine.read_bytes()
    plan = json.loads(data[len(trt_fakes.PLAN_MAGIC) :])
    change(plan)
    engine.write_bytes(trt_fakes.PLAN_MAGIC + json.dumps(plan).encode())
    side = json.loads(sidecar_path(engine).read_text())
    side["engine"]["bytes"] = engine.stat().st_size
    sidecar_path(engine).write_text(json.dumps(side))


def _break(fake: FakeEnv, engine: Path, where: str) -> None:
    if where == "runtime":
        fake.trt.cuda_init_fails = True
    elif where == "deserialize":
        _rewrite_plan(engine, lambda plan: plan.update(version="10.16.1.12"))
    elif where == "context":
        fake.trt.context_fails = True
    elif where == "inputs":
        _rewrite_plan(engine, lambda plan: plan["inputs"][0].__setitem__(0, "image"))
    elif where == "dtype":
        _rewrite_plan(engine, lambda plan: plan["outputs"][0].__setitem__(1, "BF16"))
    elif where == "stream":
        fake.cudart.fail_stream_create = True


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("runtime", "could not create a runtime"),
        ("deserialize", "could not deserialize the engine"),
        ("context", "could not create an execution context"),
        ("inputs", r"engine inputs \['image'\] differ"),
        ("dtype", "has type DataType.BF16, which has no numpy equivalent"),
        ("stream", "CUDA error in cudaStreamCreateWithFlags: cudaErrorMemoryAllocation"),
    ],
)
def test_failed_construction_frees_everything(fake: FakeEnv, where: str, message: str) -> None:
    engine, _ = fake.build(NO_BUILD)
    _new_process(fake)
    _break(fake, engine, where)
    with pytest.raises((UserError, RuntimeError), match=message) as e:
        TensorRTBackend(engine)
    gc.collect()  # e keeps the half-built backend alive: what it still holds must be nothing
    assert not fake.trt.live, f"TensorRT objects still held after a failure at {where}: {list(fake.trt.live)}"
    assert fake.cudart.streams == 0 and not fake.cudart.allocations
    (backend,) = {
        id(f): f
        for entry in e.traceback
        if isinstance(f := entry.frame.f_locals.get("self"), TensorRTBackend)
    }.values()
    assert (
        backend._closed and backend._runtime is backend._engine is backend._context is backend._stream is None
    )
    backend.close()  # a no-op on a backend that never opened
    backend.close()


def test_close_is_idempotent_and_final(fake: FakeEnv) -> None:
    engine, _ = fake.build(NO_BUILD)
    with TensorRTBackend(engine, cuda_graph=True) as backend:
        backend.infer(np.zeros((1, 3, 127, 255), np.float32))
        backend.infer(np.zeros((1, 3, 127, 255), np.float32))
        assert fake.trt.live and fake.cudart.allocations and fake.cudart.graph_execs == 1
    gc.collect()
    assert not fake.trt.live and not fake.cudart.allocations
    assert fake.cudart.streams == 0 and fake.cudart.graph_execs == 0
    backend.close()
    backend.close()
    with pytest.raises(RuntimeError, match="backend is closed"):
        backend.infer(np.zeros((1, 3, 127, 255), np.float32))
