"""CPU checks of the CornerPool plugin build (no GPU, no TensorRT runtime needed).

- the CMake project builds the kernels (one arch here; every default arch + PTX in the `slow` test) and stamps
  them with the same sources hash :mod:`trt_plugins.stamp` computes;
- the plugin builds against real TensorRT 10.x / 11.x headers (``$TENSORRT_HEADERS_10``, ``$TENSORRT_HEADERS_11``,
  ``$TENSORRT_INCLUDE_DIR``: an ``include/`` directory or its parent) with no warning in our code and no hidden
  virtual, and exports ``getCreators`` / ``setLoggerFinder``;
- the C++ field list equals :data:`trt_plugins.fields.FIELDS`;
- the CMake modules find nvcc in the layouts of the nvidia-cuda-* wheels and read TensorRT's version;
- ``trt_plugins.load`` registers a given library once and never builds.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trt_plugins
from runtime.errors import UserError
from trt_plugins import build, fields
from trt_plugins import kernels as kernels_module
from trt_plugins.stamp import PluginIdentity, read_identity, read_stamp, sources_digest

EXPORTED = {"getCreators", "setLoggerFinder", "cornerPoolForward", "cornerPoolErrorString"}


def _build(out_dir: Path, **kwargs: object) -> build.BuildResult:
    """:func:`build.build`, skipping (with the reason) where cmake or a CUDA compiler is missing."""
    try:
        return build.build(out_dir, **kwargs)  # type: ignore[arg-type]
    except build.MissingToolError as error:
        pytest.skip(f"cannot build here: {error}")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> build.BuildResult:
    """The kernel library built by the CMake project for sm_80 only (about 20 s with CMake's configure step)."""
    return _build(tmp_path_factory.mktemp("kernels"), archs=("80",), ptx=False, kernels_only=True)


def exported_symbols(library: Path) -> set[str]:
    """Names of the defined dynamic symbols of a shared library (``nm -D --defined-only``)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    listing = subprocess.run(
        [nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    )
    return {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()}


# ---------------------------------------------------------------------------------------------------------------
# Field list and names


def test_cpp_fields_equal_python_fields() -> None:
    assert fields.parse_plugin_fields(fields.PLUGIN_SOURCE.read_text()) == fields.FIELDS


def test_cpp_plugin_names_equal_python_names() -> None:
    header = (build.PLUGIN_DIR / "cornerPoolPlugin.h").read_text()
    declared = dict(re.findall(r'kCORNER_POOL_PLUGIN_(NAME|VERSION|NAMESPACE)\{"([^"]*)"\}', header))
    assert declared == {
        "NAME": fields.PLUGIN_NAME,
        "VERSION": fields.PLUGIN_VERSION,
        "NAMESPACE": fields.PLUGIN_NAMESPACE,
    }


def test_cpp_modes_equal_python_modes() -> None:
    kernel_header = (build.PLUGIN_DIR / "cornerPoolKernel.cuh").read_text()
    declared = {
        name.lower(): int(value)
        for name, value in re.findall(r"k(TOP|BOTTOM|LEFT|RIGHT) = (\d)", kernel_header)
    }
    assert declared == fields.MODES


def test_parse_plugin_fields_reads_entries_and_rejects_bad_blocks() -> None:
    source = """
    // BEGIN PLUGIN FIELDS
    // {"commented", PluginFieldType::kFLOAT32, ...} is not a field
    constexpr FieldSpec kFIELDS[] = {
        {"mode", PluginFieldType::kINT32, &Params::mode},
        { "scale" , nvinfer1::PluginFieldType::kFLOAT32, &Params::scale},
    };
    // END PLUGIN FIELDS
    """
    assert fields.parse_plugin_fields(source) == {"mode": "kINT32", "scale": "kFLOAT32"}
    with pytest.raises(ValueError, match="one"):
        fields.parse_plugin_fields("no markers here")
    with pytest.raises(ValueError, match="no"):
        fields.parse_plugin_fields("// BEGIN PLUGIN FIELDS\n// END PLUGIN FIELDS")
    with pytest.raises(ValueError, match="twice"):
        twice = '{"mode", PluginFieldType::kINT32, a}, {"mode", PluginFieldType::kINT32, b}'
        fields.parse_plugin_fields(f"// BEGIN PLUGIN FIELDS\n{twice}\n// END PLUGIN FIELDS")


# ---------------------------------------------------------------------------------------------------------------
# Kernels


def test_kernel_library_compiles_and_exports_c_entry_points(kernels: build.BuildResult) -> None:
    assert kernels.plugin_library is None and kernels.tensorrt_version is None
    assert exported_symbols(kernels.kernel_library) == {"cornerPoolForward", "cornerPoolErrorString"}
    # CMake and Python hash the sources the same way, so the stamp says what the library was built from.
    stamp = read_stamp(kernels.kernel_library)
    assert stamp is not None and stamp["sources_sha256"] == sources_digest(build.KERNEL_SOURCES)
    assert (stamp["name"], stamp["version"], stamp["namespace"]) == (
        fields.PLUGIN_NAME,
        fields.PLUGIN_VERSION,
        fields.PLUGIN_NAMESPACE,
    )
    assert stamp["cuda_architectures"] == "80-real" and stamp["library"] == build.KERNEL_LIBRARY
    assert build.is_up_to_date(kernels.kernel_library, build.KERNEL_SOURCES)
    assert not build.is_up_to_date(kernels.kernel_library, build.PLUGIN_SOURCES)


def test_c_entry_point_validates_arguments_without_a_gpu(kernels: build.BuildResult) -> None:
    """Bad arguments and empty tensors are answered before any CUDA call; without a GPU a launch fails cleanly."""
    library = kernels_module.open_library(kernels.kernel_library)
    forward = library.cornerPoolForward
    invalid_value = 1  # cudaErrorInvalidValue
    fake_in, fake_out = 0x1000, 0x2000
    assert forward(fake_in, fake_out, 0, 1, 1, 1, 1, 4, None) == invalid_value  # mode
    assert forward(fake_in, fake_out, 0, 1, 1, 1, 1, -1, None) == invalid_value
    assert forward(fake_in, fake_out, 3, 1, 1, 1, 1, 0, None) == invalid_value  # dtype
    assert forward(fake_in, fake_out, 0, 1, -1, 1, 1, 0, None) == invalid_value  # negative dim
    assert forward(fake_in, fake_in, 0, 1, 1, 1, 1, 0, None) == invalid_value  # in place
    assert forward(None, None, 1, 0, 3, 5, 7, 2, None) == 0  # empty: nothing to launch
    assert b"invalid argument" in library.cornerPoolErrorString(invalid_value)
    if torch.cuda.is_available():
        return  # a real launch on fake pointers would fault; the GPU tests cover launches
    assert forward(fake_in, fake_out, 0, 1, 1, 1, 1, 0, None) != 0


@pytest.mark.slow
def test_kernels_compile_for_every_default_target(tmp_path: Path) -> None:
    lines: list[str] = []
    result = _build(tmp_path, kernels_only=True, log=lines.append)
    assert result.kernel_library.is_file() and result.plugin_library is None
    assert exported_symbols(result.kernel_library) == {"cornerPoolForward", "cornerPoolErrorString"}
    assert lines == [
        f"built {result.kernel_library} (sm_80, sm_86, sm_89, sm_90 + PTX, CUDA {result.cuda_version})"
    ]
    assert build.is_up_to_date(result.kernel_library, build.KERNEL_SOURCES)
    stamp = read_stamp(result.kernel_library)
    assert stamp is not None and stamp["cuda_architectures"] == "80-real;86-real;89-real;90"


def test_cuda_architectures_cover_default_targets_and_ptx() -> None:
    assert build.cuda_architectures() == "80-real;86-real;89-real;90"
    assert build.cuda_architectures(("90", "80"), ptx=False) == "90-real;80-real"
    assert build.cuda_architectures(("100a", "90")) == "100a;90-real"
    with pytest.raises(build.BuildError, match="bad GPU architecture"):
        build.cuda_architectures(["sm_90"])


def test_missing_cuda_compiler_is_told_apart_from_a_compile_error(tmp_path: Path) -> None:
    """CMakeLists.txt stops with "no CUDA compiler found" and run_command makes it a MissingToolError (tests skip
    on that); any other failure is a BuildError naming its first error line and the log."""
    assert build._NO_CUDA in (build.PACKAGE_DIR / "CMakeLists.txt").read_text()
    log = tmp_path / "build.log"
    cmake_says = (
        "print('CMake Error at CMakeLists.txt:27 (message):\\n  no CUDA compiler found (looked at'); exit(1)"
    )
    with pytest.raises(
        build.MissingToolError, match=r"^no CUDA compiler found .*pip install nvidia-cuda-nvcc"
    ):
        build.run_command([sys.executable, "-c", cmake_says], log)
    compile_error = "print('x.cu(3): error: identifier y is undefined'); exit(2)"
    with pytest.raises(build.BuildError) as raised:
        build.run_command([sys.executable, "-c", compile_error], log)
    assert not isinstance(raised.value, build.MissingToolError)
    assert str(raised.value).endswith(f"(exit 2): x.cu(3): error: identifier y is undefined; full log: {log}")
    assert "identifier y is undefined" in log.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Plugin against real TensorRT headers


@pytest.mark.parametrize(
    ("env_var", "major"),
    [("TENSORRT_HEADERS_10", 10), ("TENSORRT_HEADERS_11", 11), ("TENSORRT_INCLUDE_DIR", None)],
)
def test_plugin_compiles_against_tensorrt_headers(env_var: str, major: int | None, tmp_path: Path) -> None:
    location = os.environ.get(env_var)
    if not location:
        pytest.skip(
            f"${env_var} is not set (point it at TensorRT's include/ directory to compile the plugin)"
        )
    include_dir = build.resolve_tensorrt_include(location)
    assert include_dir is not None, f"${env_var}={location} holds no NvInferRuntime.h / NvInferVersion.h"
    result = _build(tmp_path, archs=("80",), ptx=False, tensorrt_include=include_dir, verbose=True)
    assert result.plugin_library is not None and result.tensorrt_include == include_dir
    version = result.tensorrt_version or ""
    if major is not None:
        assert version.split(".")[0] == str(major), f"${env_var} has TensorRT {version} headers"

    output = (tmp_path / "build.log").read_text()
    warnings = [line for line in output.splitlines() if ": warning:" in line]
    ours = [line for line in warnings if str(build.PLUGIN_DIR) in line]
    assert not ours, "\n".join(ours)
    assert "overloaded-virtual" not in output
    print(f"TensorRT {version}: 0 warnings in our code, {len(warnings)} inside TensorRT's headers")

    library = result.plugin_library
    assert exported_symbols(library) == EXPORTED
    assert read_identity(library) == PluginIdentity(
        fields.PLUGIN_NAME,
        fields.PLUGIN_VERSION,
        fields.PLUGIN_NAMESPACE,
        sources_digest(build.PLUGIN_SOURCES),
    )
    assert build.is_up_to_date(library, build.PLUGIN_SOURCES)

    # The library loads without TensorRT or a GPU, and getCreators() hands out one creator.
    plugin = ctypes.CDLL(str(library))
    plugin.getCreators.restype = ctypes.c_void_p
    plugin.getCreators.argtypes = [ctypes.POINTER(ctypes.c_int32)]
    count = ctypes.c_int32(-1)
    assert plugin.getCreators(ctypes.byref(count)) and count.value == 1


# ---------------------------------------------------------------------------------------------------------------
# The CMake modules: nvcc from the wheels, TensorRT's version


def _cmake_script(tmp_path: Path, body: str, env: dict[str, str], **variables: str) -> str:
    """Run ``body`` with ``cmake -P`` (the modules of trt_plugins/cmake on its path); its messages."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    script = tmp_path / "probe.cmake"
    script.write_text(f'list(APPEND CMAKE_MODULE_PATH "{build.PACKAGE_DIR / "cmake"}")\n{body}\n')
    defines = [f"-D{name}={value}" for name, value in variables.items()]
    done = subprocess.run(
        [cmake, *defines, "-P", str(script)], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout + done.stderr


def _find_nvcc_in_wheels(tmp_path: Path, site: Path) -> str:
    """What cudaFromWheels.cmake picks when nothing but the wheels under ``site`` has nvcc."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty), "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    body = 'include(cudaFromWheels)\nmessage("nvcc=${CMAKE_CUDA_COMPILER};root=${CUDAToolkit_ROOT}")'
    output = _cmake_script(
        tmp_path, body, env, CORNERNET_PYTHON=sys.executable, CORNERNET_SYSTEM_NVCC_PATHS=str(empty)
    )
    return next(line for line in output.splitlines() if line.startswith("nvcc="))


def _fake_file(path: Path, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!/bin/sh\n" if executable else b"")
    if executable:
        path.chmod(0o755)


def test_cmake_finds_nvcc_in_cuda13_wheel_layout(tmp_path: Path) -> None:
    """nvidia-cuda-nvcc/-runtime/-cccl 13.x install site-packages/nvidia/cu13/{bin,include,include/cccl,lib}."""
    root = tmp_path / "site" / "nvidia" / "cu13"
    _fake_file(root / "bin" / "nvcc", executable=True)
    for relative in ("include/cuda_runtime_api.h", "include/cccl/cub/cub.cuh", "lib/libcudart_static.a"):
        _fake_file(root / relative)
    assert _find_nvcc_in_wheels(tmp_path, tmp_path / "site") == f"nvcc={root}/bin/nvcc;root={root}"


def test_cmake_finds_nvcc_in_cuda12_wheel_layout(tmp_path: Path) -> None:
    """The -cu12 wheels install nvidia/cuda_nvcc, nvidia/cuda_runtime and nvidia/cuda_cccl side by side."""
    nvidia = tmp_path / "site" / "nvidia"
    _fake_file(nvidia / "cuda_nvcc" / "bin" / "nvcc", executable=True)
    for relative in ("cuda_runtime/include/cuda_runtime_api.h", "cuda_runtime/lib/libcudart_static.a"):
        _fake_file(nvidia / relative)
    root = nvidia / "cuda_nvcc"
    assert _find_nvcc_in_wheels(tmp_path, tmp_path / "site") == f"nvcc={root}/bin/nvcc;root={root}"


def test_cmake_without_wheels_leaves_the_compiler_to_cmake(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    assert _find_nvcc_in_wheels(tmp_path, tmp_path / "site") == "nvcc=;root="


@pytest.mark.parametrize(
    ("defines", "expected"),
    [
        (
            "#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 0\n#define NV_TENSORRT_PATCH 1\n",
            "10.0.1",
        ),
        (
            "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n#define TRT_PATCH_ENTERPRISE 0\n"
            "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"
            "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n",
            "11.1.0",
        ),
        ("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n#define NV_TENSORRT_PATCH 1\n", None),
    ],
)
def test_tensorrt_version_from_headers(defines: str, expected: str | None, tmp_path: Path) -> None:
    """FindTensorRTHeaders.cmake reads the version (through 11's indirection); headers before 10 are ignored."""
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferVersion.h").write_text(defines)
    (tmp_path / "include" / "NvInferRuntime.h").write_text("")
    include_dir = build.resolve_tensorrt_include(tmp_path)
    assert include_dir == tmp_path / "include"
    body = 'find_package(TensorRTHeaders QUIET)\nmessage("found=${TensorRTHeaders_FOUND};version=${TensorRTHeaders_VERSION}")'
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    output = _cmake_script(tmp_path, body, env, TENSORRT_INCLUDE_DIR=str(include_dir))
    line = next(line for line in output.splitlines() if line.startswith("found="))
    if expected is None:
        assert line.startswith("found=FALSE") and "predate IPluginV3" in output
    else:
        assert line == f"found=TRUE;version={expected}"


def test_load_without_tensorrt_is_a_one_line_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    monkeypatch.setattr(trt_plugins, "_loaded", None)
    with pytest.raises(UserError, match="needs TensorRT") as raised:
        trt_plugins.load(tmp_path / "libcornerpool_trt.so")
    assert "\n" not in str(raised.value)


def test_load_registers_once_and_names_what_tensorrt_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``load()`` against a registry that behaves like the binding's (None on failure or a second registration)."""
    from tests.trt_fakes import FAKE_PLUGIN_MAGIC, PLUGIN_KEY, FakeCudart, make_fake_trt

    trt = make_fake_trt("10.16.1.11", FakeCudart())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_plugins, "_loaded", None)
    library = tmp_path / "libcornerpool_trt.so"
    library.write_bytes(FAKE_PLUGIN_MAGIC)
    assert trt_plugins.load(library) == trt_plugins.load(str(library)) == str(library.resolve())
    assert trt.get_plugin_registry().loads == [str(library.resolve())]  # registered once
    assert PLUGIN_KEY in trt.registry.plugins
    other = tmp_path / "other.so"
    other.write_bytes(FAKE_PLUGIN_MAGIC)
    assert trt_plugins.load(other) == str(library.resolve())  # one CornerPool library per process

    monkeypatch.setattr(trt_plugins, "_loaded", None)
    trt.registry.plugins.clear()
    library.write_bytes(b"built against TensorRT 11")
    with pytest.raises(
        UserError, match=r"TensorRT 10\.16\.1\.11 refused to load the plugin library .*another"
    ):
        trt_plugins.load(library)
    with pytest.raises(
        UserError, match=r"plugin library .*missing\.so does not exist; build it with python -m"
    ):
        trt_plugins.load(tmp_path / "missing.so")


def test_build_cli_help_and_bad_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        build.main(["--help"])
    assert exited.value.code == 0
    assert "--tensorrt-include" in capsys.readouterr().out
    assert build.main(["--arch", "sm90", "--out-dir", str(tmp_path / "out")]) == 2
    assert "bad GPU architecture" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
