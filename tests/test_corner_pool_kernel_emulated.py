"""The CornerPool CUDA kernels run on the CPU through a SIMT emulator, against torch.cummax, bit for bit.

No GPU is needed: ``cornerPoolKernel.cu`` is compiled as C++ with ``tests/simt/`` standing in for the CUDA headers
(every CUDA thread a fiber, ``__syncthreads`` and ``__shfl_*_sync`` with CUDA's rules, divergent barriers reported)
and with AddressSanitizer and UndefinedBehaviorSanitizer, so an out-of-bounds or misaligned vector access fails
the run. This checks the kernels' logic: vector widths and the alignment dispatch, H-split chunks and their
shared-memory carries, lane groups, shuffle scans and carries between tiles in both directions, and the NaN/tie
rule. It says nothing about speed or the GPU memory model; ``test_corner_pool_cuda.py`` runs the same
comparison on a real GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.corner_pool_cases import INT_VIEW, SMALL_SHAPES, assert_bitwise_equal, make_input, reference
from trt_plugins.fields import MODES

ROOT = Path(__file__).resolve().parents[1]
SIMT = ROOT / "tests" / "simt"
KERNEL_SOURCE = ROOT / "trt_plugins" / "cornerPoolPlugin" / "cornerPoolKernel.cu"
CXX = shutil.which("g++") or shutil.which("clang++")

pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++17 compiler (g++ or clang++) on PATH")

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
NUMPY_BITS = {torch.int32: np.int32, torch.int16: np.int16}
# Emulated devices of tests/simt/simt.h: 0 has 132 SMs (the vertical kernel splits H over the block for
# small maps), 1 has one SM (it mostly does not).
DEVICES = (0, 1)
SHAPES = [
    *SMALL_SHAPES,
    (1, 1, 300, 4),  # one column pack: H split over the block, several segments
    (1, 1, 3, 300),  # long rows: several 32-lane tiles, partial last tile
    (1, 16, 24, 256),  # 1024 column packs of fp32: no H split on the one-SM device
]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# LeakSanitizer needs ptrace, which containers often forbid; the driver frees what it allocates.
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def emulator_source(kernel_source: str) -> str:
    """The kernel file with each ``kernel<<<grid, block, shared, stream>>>(args)`` turned into
    ``simt::launch(kernel, grid, block, shared, stream, args)``, the one construct C++ cannot parse."""
    source, launches = re.subn(
        r"(\w+<T, V>)<<<(.*?)>>>\(", r"::simt::launch(\1, \2, ", kernel_source, flags=re.S
    )
    assert launches == kernel_source.count("<<<") == 2, (
        "expected the two kernel launches of cornerPoolKernel.cu"
    )
    return '#include "simt.h"\n' + source


def build_driver(
    kernel_source: str,
    directory: Path,
    driver: str = "corner_pool_driver",
    tensorrt_include: Path | None = None,
    defines: tuple[str, ...] = (),
) -> Path:
    """Compile ``kernel_source`` with the emulator and ``tests/simt/DRIVER.cpp`` (plus the plugin, given
    TensorRT's headers, and ``-D`` ``defines``) into an executable."""
    assert CXX is not None
    unit = directory / "corner_pool_kernel_emulated.cpp"
    unit.write_text(emulator_source(kernel_source))
    executable = directory / driver
    command = [
        CXX,
        "-std=c++17",
        "-O1",
        "-g",
        "-pthread",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unknown-pragmas",
    ]
    command += ["-I", str(SIMT), "-I", str(KERNEL_SOURCE.parent), str(unit), str(SIMT / f"{driver}.cpp")]
    if tensorrt_include is not None:
        command += ["-isystem", str(tensorrt_include), str(KERNEL_SOURCE.parent / "cornerPoolPlugin.cpp")]
    command += [f"-D{define}" for define in defines]
    built = subprocess.run([*command, *SANITIZERS, "-o", str(executable)], capture_output=True, text=True)
    if built.returncode != 0 and "sanitize" in built.stderr:
        # A compiler without the sanitizer runtimes still checks every value.
        built = subprocess.run([*command, "-o", str(executable)], capture_output=True, text=True)
    assert built.returncode == 0, f"emulator build failed:\n{built.stderr[-4000:]}"
    return executable


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_driver(KERNEL_SOURCE.read_text(), tmp_path_factory.mktemp("simt"))


def run_cases(
    driver: Path, directory: Path, cases: list[tuple[torch.Tensor, int, int, int]], header: str | None = None
) -> list[torch.Tensor | str]:
    """Run (input, mode, device, misalignment in elements) cases in one driver process; each result is the
    output tensor or the driver's error line. ``header``: the line the driver prints before the cases."""
    lines = []
    for index, (x, mode, device, offset) in enumerate(cases):
        source, target = directory / f"{index}.in", directory / f"{index}.out"
        source.write_bytes(x.contiguous().view(INT_VIEW[x.dtype]).numpy().tobytes())
        n, c, h, w = x.shape
        lines.append(f"{DTYPE_CODES[x.dtype]} {n} {c} {h} {w} {mode} {device} {offset} {source} {target}")
    finished = subprocess.run(
        [str(driver)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, **SANITIZER_ENV},
        timeout=600,
    )
    assert finished.returncode == 0, (
        f"the emulated run failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-6000:]}"
    )
    replies = finished.stdout.splitlines()
    if header is not None:
        assert replies and replies[0] == header, finished.stdout[-2000:]
        replies = replies[1:]
    assert len(replies) == len(cases), finished.stdout[-2000:]
    results: list[torch.Tensor | str] = []
    for index, ((x, _, _, _), reply) in enumerate(zip(cases, replies, strict=True)):
        if reply != "ok":
            results.append(reply)
            continue
        bits = np.frombuffer((directory / f"{index}.out").read_bytes(), dtype=NUMPY_BITS[INT_VIEW[x.dtype]])
        results.append(torch.from_numpy(bits.copy()).view(x.dtype).reshape(x.shape))
    return results


def kernel_cases(dtype: torch.dtype, mode: str) -> list[tuple[torch.Tensor, int, int, int]]:
    """Every shape, with and without NaN/inf, on both emulated devices; the specials also one element off the
    16-byte grid (the scalar path)."""
    cases = []
    for index, shape in enumerate(SHAPES):
        for seed, specials in ((2 * index, False), (2 * index + 1, True)):
            x = make_input(shape, dtype, seed, specials, device="cpu")
            for device in DEVICES:
                cases.append((x, MODES[mode], device, 0))
            if specials:
                cases.append((x, MODES[mode], 0, 1))
    return cases


def describe(case: tuple[torch.Tensor, int, int, int]) -> str:
    x, mode, device, offset = case
    return f"mode {mode} {tuple(x.shape)} {x.dtype} device {device} offset {offset}"


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("mode", list(MODES))
def test_emulated_kernel_matches_torch_cummax(
    driver: Path, tmp_path: Path, mode: str, dtype: torch.dtype
) -> None:
    cases = kernel_cases(dtype, mode)
    for case, result in zip(cases, run_cases(driver, tmp_path, cases), strict=True):
        assert not isinstance(result, str), f"{describe(case)}: {result}"
        assert_bitwise_equal(result, reference(case[0], mode), describe(case))


def test_grid_stride_loops(tmp_path: Path) -> None:
    """With the grid capped at 2 blocks, each block walks several column tiles (vertical, with and without the
    H split, whose shared-memory double buffer then spans tiles) or several row groups (horizontal). Real
    launches only reach these loops past 2^20 blocks."""
    driver = build_driver(
        KERNEL_SOURCE.read_text(), tmp_path, defines=("CORNER_POOL_MAX_GRID_BLOCKS=int64_t{2}",)
    )
    cases = []
    for dtype in (torch.float32, torch.float16):
        for index, shape in enumerate([(2, 3, 37, 45), (1, 64, 20, 33), (1, 16, 24, 256), (3, 1, 17, 8)]):
            x = make_input(shape, dtype, index, True, device="cpu")
            cases += [(x, mode, device, 0) for mode in MODES.values() for device in DEVICES]
    for case, result in zip(cases, run_cases(driver, tmp_path, cases), strict=True):
        assert not isinstance(result, str), f"{describe(case)}: {result}"
        mode_name = next(name for name, value in MODES.items() if value == case[1])
        assert_bitwise_equal(result, reference(case[0], mode_name), "grid-stride " + describe(case))


def test_bad_arguments_are_refused(driver: Path, tmp_path: Path) -> None:
    """An unknown mode or dtype returns cudaErrorInvalidValue (1) without launching anything."""
    x = make_input((1, 2, 3, 4), torch.float32, 0, False, device="cpu")
    bad_mode = run_cases(driver, tmp_path, [(x, 4, 0, 0)])[0]
    assert isinstance(bad_mode, str) and bad_mode.startswith("error 1 ")


def test_tie_order_is_checked(tmp_path: Path) -> None:
    """The inputs can tell the tie rule apart: with the shuffle scan's operands swapped (the earlier lane wins
    ties), +0/-0 and NaN payloads come out of the left/right kernel with the wrong bits."""
    original = "inclusive = combine(other, inclusive);"
    source = KERNEL_SOURCE.read_text()
    assert source.count(original) == 2
    mutant = build_driver(source.replace(original, "inclusive = combine(inclusive, other);"), tmp_path)
    cases = [case for case in kernel_cases(torch.float32, "right") if case[0].shape[-1] > 32]
    differing = 0
    for case, result in zip(cases, run_cases(mutant, tmp_path, cases), strict=True):
        assert not isinstance(result, str), f"{describe(case)}: {result}"
        expected = reference(case[0], "right")
        differing += int((result.view(torch.int32) != expected.view(torch.int32)).any())
    assert differing > 0


@pytest.mark.parametrize("env_var", ["TENSORRT_HEADERS_10", "TENSORRT_HEADERS_11", "TENSORRT_INCLUDE_DIR"])
def test_plugin_through_tensorrt_interfaces(env_var: str, tmp_path: Path) -> None:
    """The IPluginV3 driven as TensorRT drives it (tests/simt/corner_pool_plugin_driver.cpp): creator and
    capabilities, output types and shapes, formats, field errors through the logger, the serialisation round
    trip, then runtime-phase plugins whose enqueue() runs the emulated kernels, against torch.cummax."""
    location = os.environ.get(env_var)
    if not location:
        pytest.skip(f"${env_var} is not set (point it at TensorRT's include/ directory; no TensorRT here)")
    from trt_plugins import build

    include_dir = build.resolve_tensorrt_include(location)
    assert include_dir is not None, f"${env_var}={location} holds no TensorRT headers"
    driver = build_driver(KERNEL_SOURCE.read_text(), tmp_path, "corner_pool_plugin_driver", include_dir)
    cases = []
    for dtype in DTYPE_CODES:
        for mode in MODES.values():
            for index, shape in enumerate([(1, 1, 1, 1), (2, 3, 37, 45), (1, 2, 100, 12)]):
                x = make_input(shape, dtype, index, True, device="cpu")
                cases += [(x, mode, 0, 0), (x, mode, 1, 1)]
    for case, result in zip(cases, run_cases(driver, tmp_path, cases, header="checks ok"), strict=True):
        assert not isinstance(result, str), f"{describe(case)}: {result}"
        mode_name = next(name for name, value in MODES.items() if value == case[1])
        assert_bitwise_equal(
            result,
            reference(case[0], mode_name),
            f"TensorRT headers {include_dir}: " + describe(case),
        )


def test_emulator_reports_a_divergent_barrier(tmp_path: Path) -> None:
    """A kernel where half the block skips __syncthreads() fails with a launch error naming the barrier
    instead of hanging, so a barrier the real kernels get wrong cannot pass unnoticed."""
    assert CXX is not None
    program = tmp_path / "divergent.cpp"
    program.write_text(
        '#include "simt.h"\n#include <cstdio>\n'
        "__global__ void kernel(int* out) { if (threadIdx.x < 16) { __syncthreads(); } out[threadIdx.x] = 1; }\n"
        "int main() { int out[64] = {}; simt::launch(kernel, dim3(1), dim3(64), 0, nullptr, out);\n"
        '  cudaError_t e = cudaGetLastError(); std::printf("%d %s\\n", int(e), simt::gFault.c_str());'
        " return 0; }\n"
    )
    binary = tmp_path / "divergent"
    subprocess.run([CXX, "-std=c++17", "-I", str(SIMT), str(program), "-o", str(binary)], check=True)
    reply = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60).stdout
    assert reply.startswith("719 deadlock: thread (0,0,0) of block (0,0,0) waits at __syncthreads()"), reply
