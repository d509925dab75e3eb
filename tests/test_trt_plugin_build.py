"""CPU checks of the CornerPool plugin build (no GPU, no TensorRT runtime needed).

- the kernels compile with nvcc (one arch here; every default arch + PTX in the `slow` test);
- the plugin compiles against real TensorRT 10.x / 11.x headers (``$TENSORRT_HEADERS_10``, ``$TENSORRT_HEADERS_11``,
  ``$TENSORRT_INCLUDE_DIR``: an ``include/`` directory or its parent) with no warning in our code and no hidden
  virtual, and exports ``getCreators`` / ``setLoggerFinder``;
- the C++ field list equals :data:`trt_plugins.fields.FIELDS`;
- nvcc is found in the layouts of the nvidia-cuda-* wheels.
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
from trt_plugins import build, fields, kernels

EXPORTED = {"getCreators", "setLoggerFinder", "cornerPoolForward", "cornerPoolErrorString"}


@pytest.fixture(scope="module")
def cuda() -> build.CudaToolkit:
    try:
        return build.find_cuda()
    except build.BuildError as error:
        pytest.skip(f"no CUDA compiler here ({error})")


@pytest.fixture(scope="module")
def kernel_object(cuda: build.CudaToolkit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cornerPoolKernel.cu compiled for sm_80 only (a few seconds)."""
    output = tmp_path_factory.mktemp("kernel") / "cornerPoolKernel.o"
    build.run_command(build.kernel_object_command(cuda, output, ("80",), ptx=False))
    return output


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


def test_kernel_library_compiles_and_exports_c_entry_points(
    cuda: build.CudaToolkit, kernel_object: Path, tmp_path: Path
) -> None:
    library = tmp_path / build.KERNEL_LIBRARY
    build.run_command(build.link_command(cuda, [kernel_object], library))
    assert exported_symbols(library) == {"cornerPoolForward", "cornerPoolErrorString"}


def test_c_entry_point_validates_arguments_without_a_gpu(
    cuda: build.CudaToolkit, kernel_object: Path, tmp_path: Path
) -> None:
    """Bad arguments and empty tensors are answered before any CUDA call; without a GPU a launch fails cleanly."""
    library_path = tmp_path / build.KERNEL_LIBRARY
    build.run_command(build.link_command(cuda, [kernel_object], library_path))
    library = kernels.open_library(library_path)
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
def test_kernels_compile_for_every_default_target(cuda: build.CudaToolkit, tmp_path: Path) -> None:
    lines: list[str] = []
    result = build.build(tmp_path, kernels_only=True, log=lines.append)
    assert result.kernel_library.is_file() and result.plugin_library is None
    assert exported_symbols(result.kernel_library) == {"cornerPoolForward", "cornerPoolErrorString"}
    assert lines == [
        f"built {result.kernel_library} (sm_80, sm_86, sm_89, sm_90 + PTX, CUDA {cuda.version()})"
    ]
    assert build.is_up_to_date(result.kernel_library, build.KERNEL_SOURCES)


def test_gencode_flags_cover_default_targets_and_ptx() -> None:
    assert build.gencode_flags() == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_89,code=sm_89",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    with pytest.raises(build.BuildError, match="bad GPU architecture"):
        build.gencode_flags(["sm_90"])


# ---------------------------------------------------------------------------------------------------------------
# Plugin against real TensorRT headers


@pytest.mark.parametrize(
    ("env_var", "major"),
    [("TENSORRT_HEADERS_10", 10), ("TENSORRT_HEADERS_11", 11), ("TENSORRT_INCLUDE_DIR", None)],
)
def test_plugin_compiles_against_tensorrt_headers(
    env_var: str, major: int | None, cuda: build.CudaToolkit, kernel_object: Path, tmp_path: Path
) -> None:
    location = os.environ.get(env_var)
    if not location:
        pytest.skip(
            f"${env_var} is not set (point it at TensorRT's include/ directory to compile the plugin)"
        )
    include_dir = build.resolve_tensorrt_include(location)
    assert include_dir is not None, f"${env_var}={location} holds no NvInferRuntime.h / NvInferVersion.h"
    version = build.tensorrt_version(include_dir)
    if major is not None:
        assert version.split(".")[0] == str(major), f"${env_var} has TensorRT {version} headers"

    plugin_object = tmp_path / "cornerPoolPlugin.o"
    output = build.run_command(build.plugin_object_command(cuda, include_dir, plugin_object))
    warnings = [line for line in output.splitlines() if ": warning:" in line]
    ours = [line for line in warnings if str(build.PLUGIN_DIR) in line]
    assert not ours, "\n".join(ours)
    assert "overloaded-virtual" not in output
    print(f"TensorRT {version}: 0 warnings in our code, {len(warnings)} inside TensorRT's headers")

    library = tmp_path / build.PLUGIN_LIBRARY
    build.run_command(build.link_command(cuda, [plugin_object, kernel_object], library))
    assert exported_symbols(library) == EXPORTED

    # The library loads without TensorRT or a GPU, and getCreators() hands out one creator.
    plugin = ctypes.CDLL(str(library))
    plugin.getCreators.restype = ctypes.c_void_p
    plugin.getCreators.argtypes = [ctypes.POINTER(ctypes.c_int32)]
    count = ctypes.c_int32(-1)
    assert plugin.getCreators(ctypes.byref(count)) and count.value == 1


# ---------------------------------------------------------------------------------------------------------------
# Finding nvcc and TensorRT


def _fake_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _only_wheels(monkeypatch: pytest.MonkeyPatch, site: Path, tmp_path: Path) -> None:
    """Hide every CUDA install but the fake wheels under ``site``."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(build, "SYSTEM_CUDA_ROOTS", ())
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])


def test_find_cuda_in_cuda13_wheel_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """nvidia-cuda-nvcc/-runtime/-cccl 13.x install site-packages/nvidia/cu13/{bin,include,include/cccl,lib}."""
    root = tmp_path / "site" / "nvidia" / "cu13"
    for relative in (
        "bin/nvcc",
        "include/cuda_runtime_api.h",
        "include/cccl/cub/cub.cuh",
        "lib/libcudart_static.a",
    ):
        _fake_file(root / relative)
    _only_wheels(monkeypatch, tmp_path / "site", tmp_path)
    toolkit = build.find_cuda()
    assert toolkit.nvcc == root / "bin" / "nvcc"
    assert toolkit.include_dirs == (root / "include", root / "include" / "cccl")
    assert toolkit.library_dirs == (root / "lib",)


def test_find_cuda_in_cuda12_wheel_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The -cu12 wheels install nvidia/cuda_nvcc, nvidia/cuda_runtime and nvidia/cuda_cccl side by side."""
    nvidia = tmp_path / "site" / "nvidia"
    for relative in (
        "cuda_nvcc/bin/nvcc",
        "cuda_runtime/include/cuda_runtime_api.h",
        "cuda_runtime/lib/libcudart_static.a",
        "cuda_cccl/include/cub/cub.cuh",
    ):
        _fake_file(nvidia / relative)
    _only_wheels(monkeypatch, tmp_path / "site", tmp_path)
    monkeypatch.setattr(build, "_nvidia_wheel_dirs", lambda: [nvidia])  # real CUDA 13 wheels would win
    toolkit = build.find_cuda()
    assert toolkit.nvcc == nvidia / "cuda_nvcc" / "bin" / "nvcc"
    assert toolkit.include_dirs == (nvidia / "cuda_runtime" / "include", nvidia / "cuda_cccl" / "include")
    assert toolkit.library_dirs == (nvidia / "cuda_runtime" / "lib",)


def test_find_cuda_without_any_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    _only_wheels(monkeypatch, tmp_path / "site", tmp_path)
    monkeypatch.setattr(build, "_nvidia_wheel_dirs", lambda: [])
    with pytest.raises(build.BuildError, match="pip install nvidia-cuda-nvcc") as raised:
        build.find_cuda()
    assert "\n" not in str(raised.value)


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
    ],
)
def test_tensorrt_version_from_headers(defines: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferVersion.h").write_text(defines)
    (tmp_path / "include" / "NvInferRuntime.h").write_text("")
    include_dir = build.resolve_tensorrt_include(tmp_path)
    assert include_dir == tmp_path / "include"
    assert build.tensorrt_version(include_dir) == expected


def test_load_without_tensorrt_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    monkeypatch.setattr(trt_plugins, "_loaded", None)
    with pytest.raises(UserError, match="needs TensorRT") as raised:
        trt_plugins.load()
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
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(library))
    assert trt_plugins.load() == trt_plugins.load() == str(library.resolve())
    assert trt.get_plugin_registry().loads == [str(library.resolve())]  # registered once
    assert PLUGIN_KEY in trt.registry.plugins

    monkeypatch.setattr(trt_plugins, "_loaded", None)
    trt.registry.plugins.clear()
    library.write_bytes(b"built against TensorRT 11")
    with pytest.raises(
        UserError, match=r"TensorRT 10\.16\.1\.11 refused to load the plugin library .*another"
    ):
        trt_plugins.load()
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match=r"CORNERNET_TRT_PLUGIN names .*missing\.so, which does not exist"):
        trt_plugins.load()


def test_build_cli_help_and_bad_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        build.main(["--help"])
    assert exited.value.code == 0
    assert "--tensorrt-include" in capsys.readouterr().out
    assert build.main(["--arch", "sm90", "--out-dir", str(tmp_path / "out")]) == 2
    assert "bad GPU architecture" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
