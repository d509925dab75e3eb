"""Build the CornerPool libraries by running the CMake project ``trt_plugins/CMakeLists.txt`` (the one build
description: it finds CUDA, TensorRT's headers and compiles; this module only drives it).

Two shared libraries come out, copied to ``trt_plugins/build/`` (or ``~/.cache/cornernet/trt_plugins`` when the
package directory is read-only), each with its identity stamp ``LIBRARY.json`` (:mod:`trt_plugins.stamp`):

- ``libcornerpool_kernels.so``: the CUDA kernels behind a C entry point (``cornerPoolForward``), for
  :mod:`trt_plugins.kernels`. Needs only the CUDA compiler.
- ``libcornerpool_trt.so``: the TensorRT plugin (same kernels + ``getCreators``/``setLoggerFinder``), loaded by
  :func:`trt_plugins.load`. Needs TensorRT's headers (never its libraries).

Both link the CUDA runtime statically, so they only need the NVIDIA driver at run time. Needs ``cmake`` >= 3.24
(``pip install cmake`` if the system has none). Building happens here and in ``python -m export.to_trt`` only:
loading an engine never compiles.

Usage::

    python -m trt_plugins.build                      # all default GPU targets; plugin too if headers are found
    python -m trt_plugins.build --arch 90 --no-ptx   # one target, quick
    TENSORRT_INCLUDE_DIR=/opt/TensorRT-10.16/include python -m trt_plugins.build
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EXIT_BAD_INPUT, EXIT_OK, UserError
from trt_plugins.stamp import read_stamp, sources_digest, stamp_path

PACKAGE_DIR = Path(__file__).resolve().parent
PLUGIN_DIR = PACKAGE_DIR / "cornerPoolPlugin"
# The sources each library is stamped with, in the order of cornerPoolPlugin/CMakeLists.txt.
KERNEL_SOURCES = tuple(
    PLUGIN_DIR / name for name in ("cornerPoolKernel.cu", "cornerPoolKernel.cuh", "cornerPoolExports.map")
)
PLUGIN_SOURCES = (*KERNEL_SOURCES, PLUGIN_DIR / "cornerPoolPlugin.cpp", PLUGIN_DIR / "cornerPoolPlugin.h")

KERNEL_LIBRARY = "libcornerpool_kernels.so"
PLUGIN_LIBRARY = "libcornerpool_trt.so"

#: GPU targets compiled to machine code (A100, A10/RTX 30, L4/L40/RTX 40, H100/H200); PTX of the last one is
#: embedded too, so newer GPUs JIT-compile it.
DEFAULT_ARCHS = ("80", "86", "89", "90")

#: Cache directory used when the package directory is not writable.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cornernet" / "trt_plugins"

#: The command that builds the plugin, quoted in every "no plugin library" message.
BUILD_COMMAND = "python -m trt_plugins.build"

_ARCH_PATTERN = re.compile(r"^\d{2,3}[af]?$")
# CMakeLists.txt's message when it finds no CUDA compiler.
_NO_CUDA = "no CUDA compiler found"


class BuildError(UserError):
    """CMake, the CUDA compiler or TensorRT headers are missing, or compiling failed (message: one line)."""


class MissingToolError(BuildError):
    """No ``cmake`` or no CUDA compiler: nothing was compiled (tests skip on this, never on a compile error)."""


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` produced (``tensorrt_*`` are None when no plugin library was built)."""

    kernel_library: Path
    plugin_library: Path | None
    tensorrt_include: Path | None
    tensorrt_version: str | None
    cuda_version: str


# ---------------------------------------------------------------------------------------------------------------
# Tools and arguments


def find_cmake() -> str:
    """``cmake`` on PATH, else the one of the ``cmake`` wheel; :class:`MissingToolError` if neither."""
    on_path = shutil.which("cmake")
    if on_path:
        return on_path
    try:
        import cmake  # type: ignore[import-not-found]  # the PyPI wheel: pip install cmake

        wheel = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if wheel.is_file():
            return str(wheel)
    except (ImportError, AttributeError):
        pass
    raise MissingToolError(
        "cmake is not installed (needed to build the CornerPool libraries); pip install cmake"
    )


def resolve_tensorrt_include(path: str | os.PathLike[str]) -> Path | None:
    """``path`` or ``path/include`` if it holds ``NvInferRuntime.h`` and ``NvInferVersion.h``, else None."""
    for candidate in (Path(path), Path(path) / "include"):
        if (candidate / "NvInferRuntime.h").is_file() and (candidate / "NvInferVersion.h").is_file():
            return candidate
    return None


def cuda_architectures(archs: Sequence[str] = DEFAULT_ARCHS, ptx: bool = True) -> str:
    """``CMAKE_CUDA_ARCHITECTURES`` for machine code of each arch (``"80"`` -> ``80-real``) and, with ``ptx``, PTX of
    the newest (its entry without ``-real``)."""
    for arch in archs:
        if not _ARCH_PATTERN.match(arch):
            raise BuildError(f"bad GPU architecture {arch!r}: use compute capability digits such as 80 or 90")
    if not archs:
        raise BuildError("no GPU architecture given: use e.g. --arch 90")
    newest = max(archs, key=lambda arch: int(arch.rstrip("af")))
    return ";".join(arch if ptx and arch == newest else f"{arch}-real" for arch in archs)


def configure_command(
    cmake: str,
    binary_dir: Path,
    archs: Sequence[str],
    ptx: bool,
    tensorrt_include: Path | None,
    kernels_only: bool,
) -> list[str]:
    """``cmake -S trt_plugins -B binary_dir ...``: Ninja when available; this interpreter's CUDA wheels."""
    command = [cmake, "-S", str(PACKAGE_DIR), "-B", str(binary_dir)]
    if shutil.which("ninja") and not (binary_dir / "CMakeCache.txt").is_file():
        command += ["-G", "Ninja"]  # a generator can only be chosen for a fresh binary directory
    command += [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures(archs, ptx)}",
        f"-DCORNERNET_PYTHON={sys.executable}",
        f"-DCORNERNET_KERNELS_ONLY={'ON' if kernels_only else 'OFF'}",
    ]
    if tensorrt_include is not None:
        command.append(f"-DTENSORRT_INCLUDE_DIR={tensorrt_include}")
    return command


def run_command(command: Sequence[str], log_file: Path | None = None, verbose: bool = False) -> str:
    """Run a build command; return its combined output.

    Raises:
        MissingToolError: CMake found no CUDA compiler.
        BuildError: the command failed; the message names its first error line and the log file.
    """
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError as error:
        raise BuildError(f"cannot run {command[0]}: {error}") from error
    output = result.stdout + result.stderr
    if log_file is not None:
        with log_file.open("a") as log:
            log.write("$ " + " ".join(command) + "\n" + output + "\n")
    if verbose and output.strip():
        print(output.rstrip(), file=sys.stderr)
    if result.returncode != 0:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        where = f"; full log: {log_file}" if log_file is not None else ""
        if _NO_CUDA in " ".join(output.split()):
            raise MissingToolError(
                "no CUDA compiler found (looked at CUDACXX, nvcc on PATH, $CUDA_HOME, /usr/local/cuda and the "
                f"nvidia-cuda-* wheels); pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl{where}"
            )
        first = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
        raise BuildError(f"{Path(command[0]).name} failed (exit {result.returncode}): {first}{where}")
    return output


# ---------------------------------------------------------------------------------------------------------------
# Building


def default_build_dir() -> Path:
    """``trt_plugins/build`` when the package directory is writable, else the user cache directory."""
    return PACKAGE_DIR / "build" if os.access(PACKAGE_DIR, os.W_OK) else CACHE_DIR


def is_up_to_date(library: Path, sources: Sequence[Path]) -> bool:
    """True when ``library`` exists and its stamp says it was built from the current ``sources``."""
    try:
        stamp = read_stamp(library)
    except UserError:
        return False
    return library.is_file() and stamp is not None and stamp["sources_sha256"] == sources_digest(sources)


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise builds into one directory across processes (pytest-xdist workers, parallel jobs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(built: Path, library: Path) -> None:
    """Copy a library and its stamp into place, each atomically, the stamp last."""
    for source, target in ((built, library), (stamp_path(built), stamp_path(library))):
        scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copy2(source, scratch)
        os.replace(scratch, target)


def build(
    out_dir: Path | None = None,
    archs: Sequence[str] = DEFAULT_ARCHS,
    ptx: bool = True,
    tensorrt_include: Path | None = None,
    kernels_only: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Configure and build the CMake project in ``out_dir/cmake``; copy the libraries and stamps to ``out_dir``.

    Args:
        out_dir: where the libraries go (default :func:`default_build_dir`).
        archs: compute capabilities to compile machine code for.
        ptx: also embed PTX of the newest arch.
        tensorrt_include: TensorRT include directory (or its parent); default: CMake's search
            (``$TENSORRT_INCLUDE_DIR``, ``$TENSORRT_ROOT``, pip packages, system paths).
        kernels_only: skip the plugin even if headers are found.
        verbose: echo the build's output.
        log: receives one line per library built (and the one-line note when TensorRT headers are missing).

    Raises:
        MissingToolError: no cmake or no CUDA compiler.
        BuildError: a given TensorRT path without headers, or a compiler error.
    """
    cuda_architectures(archs, ptx)  # refuses bad arch names before anything touches the build directory
    include_dir: Path | None = None
    if tensorrt_include is not None and not kernels_only:
        include_dir = resolve_tensorrt_include(tensorrt_include)
        if include_dir is None:
            raise BuildError(
                f"no TensorRT headers (NvInferRuntime.h, NvInferVersion.h) in {tensorrt_include}"
            )
    cmake = find_cmake()
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    say = log or (lambda _line: None)
    with _build_lock(out_dir):
        binary_dir = out_dir / "cmake"
        log_file = out_dir / "build.log"
        log_file.write_text("")
        run_command(
            configure_command(cmake, binary_dir, archs, ptx, include_dir, kernels_only), log_file, verbose
        )
        run_command([cmake, "--build", str(binary_dir)], log_file, verbose)
        built = binary_dir / "cornerPoolPlugin"
        if not is_up_to_date(built / KERNEL_LIBRARY, KERNEL_SOURCES):
            raise BuildError(
                f"the CMake build left no up-to-date {KERNEL_LIBRARY} in {built}; full log: {log_file}"
            )
        kernel_library = out_dir / KERNEL_LIBRARY
        _install(built / KERNEL_LIBRARY, kernel_library)
        stamp = read_stamp(kernel_library) or {}
        cuda = str(stamp.get("cuda", "unknown"))
        targets = ", ".join(f"sm_{arch}" for arch in archs) + (" + PTX" if ptx else "")
        say(f"built {kernel_library} ({targets}, CUDA {cuda})")
        plugin_library: Path | None = None
        trt_version: str | None = None
        # A plugin left in the binary directory by an earlier configuration counts only if built from these sources.
        if not kernels_only and is_up_to_date(built / PLUGIN_LIBRARY, PLUGIN_SOURCES):
            plugin_library = out_dir / PLUGIN_LIBRARY
            _install(built / PLUGIN_LIBRARY, plugin_library)
            plugin_stamp = read_stamp(plugin_library) or {}
            trt_version = plugin_stamp.get("tensorrt_headers")
            include_dir = (
                Path(plugin_stamp["tensorrt_include"]) if plugin_stamp.get("tensorrt_include") else None
            )
            say(f"built {plugin_library} against TensorRT {trt_version} headers in {include_dir}")
        elif not kernels_only:
            say(
                "TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT; the pip wheels ship none): "
                f"built only the kernel library {kernel_library}"
            )
    return BuildResult(kernel_library, plugin_library, include_dir, trt_version, cuda)


def ensure_kernel_library(out_dir: Path | None = None) -> Path:
    """Path of an up-to-date kernel library, building it (all default targets) if missing or stale.

    For :mod:`trt_plugins.kernels` (tests and benchmarks on torch tensors); engines never come here.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    library = out_dir / KERNEL_LIBRARY
    if not is_up_to_date(library, KERNEL_SOURCES):
        build(out_dir, kernels_only=True)
    return library


def ensure_plugin_library(out_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Path of a TensorRT plugin library built from the current sources, building it first if missing or stale.

    The explicit build step of ``python -m export.to_trt``; loading an engine never calls it.

    Raises:
        MissingToolError, BuildError: it has to be built and cmake, the CUDA compiler or TensorRT headers are
            missing, or compiling failed.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    library = out_dir / PLUGIN_LIBRARY
    if not is_up_to_date(library, PLUGIN_SOURCES):
        result = build(out_dir, log=log)
        if result.plugin_library is None:
            raise BuildError(
                f"cannot build {PLUGIN_LIBRARY}: TensorRT headers not found; TensorRT's pip wheels ship none, "
                "so set TENSORRT_INCLUDE_DIR to the include/ of a TensorRT tar or deb install (or of "
                "github.com/NVIDIA/TensorRT at your TensorRT version)"
            )
    return library


# ---------------------------------------------------------------------------------------------------------------
# Command line


def make_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m trt_plugins.build``."""
    parser = argparse.ArgumentParser(
        prog="python -m trt_plugins.build",
        description=(
            "Compile the CornerPool CUDA kernels (libcornerpool_kernels.so) and, when TensorRT headers are found, "
            "the TensorRT plugin (libcornerpool_trt.so), by running the CMake project trt_plugins/CMakeLists.txt. "
            "CUDA: nvcc on PATH, $CUDA_HOME, /usr/local/cuda or this Python's nvidia-cuda-nvcc/-runtime/-cccl "
            "wheels; TensorRT headers: --tensorrt-include, $TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include or "
            "system paths. No GPU is needed to build."
        ),
        epilog="Each library gets LIBRARY.json: its name, version, namespace and a hash of its sources.",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, metavar="DIR",
        help=f"directory for the libraries (default: {default_build_dir()})",
    )  # fmt: skip
    parser.add_argument(
        "--arch", action="append", metavar="CC",
        help="compute capability to compile for, repeatable or comma-separated, e.g. --arch 90 or --arch 80,90 "
        f"(default: {','.join(DEFAULT_ARCHS)})",
    )  # fmt: skip
    parser.add_argument(
        "--no-ptx", action="store_true", help="do not embed PTX of the newest arch (no JIT fallback)"
    )
    parser.add_argument(
        "--tensorrt-include", type=Path, default=None, metavar="DIR",
        help="TensorRT include directory (or the directory above it) holding NvInferRuntime.h",
    )  # fmt: skip
    parser.add_argument("--kernels-only", action="store_true", help="build only the kernel library")
    parser.add_argument("--verbose", action="store_true", help="echo CMake's and the compilers' output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trt_plugins.build``; returns the exit code (0 built, 2 could not build)."""
    args = make_parser().parse_args(argv)
    archs = tuple(
        arch.strip() for value in (args.arch or [",".join(DEFAULT_ARCHS)]) for arch in value.split(",")
    )
    try:
        build(
            out_dir=args.out_dir,
            archs=tuple(arch for arch in archs if arch),
            ptx=not args.no_ptx,
            tensorrt_include=args.tensorrt_include,
            kernels_only=args.kernels_only,
            verbose=args.verbose,
            log=print,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
