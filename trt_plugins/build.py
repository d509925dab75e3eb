"""Build the CornerPool libraries with nvcc directly (``trt_plugins/CMakeLists.txt`` builds the same with CMake).

Two shared libraries come out, in ``trt_plugins/build/`` (or ``~/.cache/cornernet/trt_plugins`` when the
package directory is read-only):

- ``libcornerpool_kernels.so``: the CUDA kernels behind a C entry point (``cornerPoolForward``), for
  :mod:`trt_plugins.kernels`. Needs only the CUDA compiler.
- ``libcornerpool_trt.so``: the TensorRT plugin (same kernels + ``getCreators``/``setLoggerFinder``), loaded by
  :func:`trt_plugins.load`. Needs TensorRT's headers (never its libraries).

Both link the CUDA runtime statically, so they only need the NVIDIA driver at run time.

Usage::

    python -m trt_plugins.build                      # all default GPU targets; plugin too if headers are found
    python -m trt_plugins.build --arch 90 --no-ptx   # one target, quick
    TENSORRT_INCLUDE_DIR=/opt/TensorRT-10.16/include python -m trt_plugins.build
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EXIT_BAD_INPUT, EXIT_OK, UserError

PACKAGE_DIR = Path(__file__).resolve().parent
PLUGIN_DIR = PACKAGE_DIR / "cornerPoolPlugin"
KERNEL_SOURCE = PLUGIN_DIR / "cornerPoolKernel.cu"
PLUGIN_SOURCE = PLUGIN_DIR / "cornerPoolPlugin.cpp"
EXPORTS_MAP = PLUGIN_DIR / "cornerPoolExports.map"
KERNEL_SOURCES = (KERNEL_SOURCE, PLUGIN_DIR / "cornerPoolKernel.cuh", EXPORTS_MAP)
PLUGIN_SOURCES = (*KERNEL_SOURCES, PLUGIN_SOURCE, PLUGIN_DIR / "cornerPoolPlugin.h")

KERNEL_LIBRARY = "libcornerpool_kernels.so"
PLUGIN_LIBRARY = "libcornerpool_trt.so"

#: GPU targets compiled to machine code (A100, A10/RTX 30, L4/L40/RTX 40, H100/H200); PTX of the last one is
#: embedded too, so newer GPUs JIT-compile it.
DEFAULT_ARCHS = ("80", "86", "89", "90")

#: Cache directory used when the package directory is not writable.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cornernet" / "trt_plugins"

#: Compiler warnings for the plugin source. The TensorRT headers are included with -I, not -isystem, so that
#: -Woverloaded-virtual sees our overrides against TensorRT's base classes.
PLUGIN_WARNING_FLAGS = ("-Wall", "-Wextra", "-Werror=overloaded-virtual")

SYSTEM_CUDA_ROOTS = (Path("/usr/local/cuda"),)
_TENSORRT_SYSTEM_INCLUDES = (
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
    "/usr/include",
    "/usr/local/include",
    "/usr/local/tensorrt/include",
    "/usr/local/TensorRT/include",
    "/opt/tensorrt/include",
)
_ARCH_PATTERN = re.compile(r"^\d{2,3}[af]?$")


class BuildError(UserError):
    """The CUDA compiler or TensorRT headers are missing, or compiling failed (message: one line)."""


@dataclass(frozen=True)
class CudaToolkit:
    """Where nvcc, the CUDA headers (runtime + CCCL) and ``libcudart_static.a`` are."""

    nvcc: Path
    include_dirs: tuple[Path, ...]
    library_dirs: tuple[Path, ...]

    def version(self) -> str:
        """``release X.Y`` as printed by ``nvcc --version`` (e.g. ``"13.0"``), or ``"unknown"``."""
        try:
            text = subprocess.run(
                [str(self.nvcc), "--version"], capture_output=True, text=True, check=False
            ).stdout
        except OSError:
            return "unknown"
        match = re.search(r"release (\d+\.\d+)", text)
        return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` produced."""

    kernel_library: Path
    plugin_library: Path | None
    tensorrt_include: Path | None
    tensorrt_version: str | None


# ---------------------------------------------------------------------------------------------------------------
# Finding the tools


def _existing_dirs(paths: Sequence[Path]) -> list[Path]:
    """The directories among ``paths`` that exist, each once (``lib64`` is often a link to ``lib``)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.is_dir():
            seen.setdefault(path.resolve(), path)
    return list(seen.values())


def _toolkit(
    nvcc: Path, include_candidates: Sequence[Path], library_candidates: Sequence[Path]
) -> CudaToolkit | None:
    """A toolkit if ``nvcc`` exists and the runtime header and static runtime library are among the candidates."""
    includes = _existing_dirs(include_candidates)
    libraries = [
        path for path in _existing_dirs(library_candidates) if (path / "libcudart_static.a").is_file()
    ]
    if (
        not nvcc.is_file()
        or not any((path / "cuda_runtime_api.h").is_file() for path in includes)
        or not libraries
    ):
        return None
    return CudaToolkit(nvcc=nvcc, include_dirs=tuple(includes), library_dirs=tuple(libraries))


def _toolkit_from_root(root: Path) -> CudaToolkit | None:
    """A CUDA install or a CUDA 13 wheel tree (``site-packages/nvidia/cu13``: bin/, include/, include/cccl, lib/)."""
    targets = (
        sorted((root / "targets").glob("*-linux")) if (root / "targets").is_dir() else []
    )  # x86_64, sbsa
    return _toolkit(
        root / "bin" / "nvcc",
        [root / "include", root / "include" / "cccl", *(target / "include" for target in targets)],
        [root / "lib64", root / "lib", *(target / "lib" for target in targets)],
    )


def _toolkit_from_cuda12_wheels(nvidia: Path) -> CudaToolkit | None:
    """CUDA 12 wheels: ``nvidia/cuda_nvcc``, ``nvidia/cuda_runtime``, ``nvidia/cuda_cccl`` side by side."""
    return _toolkit(
        nvidia / "cuda_nvcc" / "bin" / "nvcc",
        [
            nvidia / "cuda_runtime" / "include",
            nvidia / "cuda_cccl" / "include",
            nvidia / "cuda_nvcc" / "include",
        ],
        [nvidia / "cuda_runtime" / "lib"],
    )


def _nvidia_wheel_dirs() -> list[Path]:
    """Every ``site-packages/nvidia`` directory on sys.path (``nvidia`` is a namespace package)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    return [Path(location) for location in (spec.submodule_search_locations or [])] if spec else []


def find_cuda() -> CudaToolkit:
    """Find the CUDA compiler, headers and static runtime.

    Looks, in order, at ``$CUDA_HOME``/``$CUDA_PATH``, the ``nvcc`` on ``PATH``, ``/usr/local/cuda``, and the
    ``nvidia-cuda-nvcc``/``-runtime``/``-cccl`` wheels (CUDA 13 layout ``nvidia/cu13``, CUDA 12 layout
    ``nvidia/cuda_*``).

    Raises:
        BuildError: nothing usable was found.
    """
    roots = [Path(os.environ[name]) for name in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(name)]
    on_path = shutil.which("nvcc")
    if on_path:
        roots.append(Path(on_path).resolve().parent.parent)
    roots += SYSTEM_CUDA_ROOTS
    wheel_dirs = _nvidia_wheel_dirs()
    roots += [nvidia / name for nvidia in wheel_dirs for name in ("cu13", "cu12")]
    for root in roots:
        toolkit = _toolkit_from_root(root)
        if toolkit:
            return toolkit
    for nvidia in wheel_dirs:
        toolkit = _toolkit_from_cuda12_wheels(nvidia)
        if toolkit:
            return toolkit
    raise BuildError(
        "no CUDA compiler found (looked at $CUDA_HOME, nvcc on PATH, /usr/local/cuda and the nvidia-cuda-* wheels); "
        "install one with `pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl`"
    )


def resolve_tensorrt_include(path: str | os.PathLike[str]) -> Path | None:
    """``path`` or ``path/include`` if it holds ``NvInferRuntime.h``, else None."""
    for candidate in (Path(path), Path(path) / "include"):
        if (candidate / "NvInferRuntime.h").is_file() and (candidate / "NvInferVersion.h").is_file():
            return candidate
    return None


def tensorrt_version(include_dir: Path) -> str:
    """``major.minor.patch`` of the TensorRT headers in ``include_dir`` (read from ``NvInferVersion.h``)."""
    text = (include_dir / "NvInferVersion.h").read_text(errors="replace")
    defines = dict(re.findall(r"^\s*#define\s+(\w+)\s+(\w+)", text, flags=re.M))

    def value(name: str) -> str:
        seen = set()
        while name in defines and name not in seen:  # NV_TENSORRT_MAJOR -> TRT_MAJOR_ENTERPRISE -> 11
            seen.add(name)
            name = defines[name]
        return name

    return ".".join(value(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH"))


def tensorrt_major(include_dir: Path) -> int:
    """Major version of the TensorRT headers in ``include_dir`` (0 if unreadable)."""
    major = tensorrt_version(include_dir).split(".")[0]
    return int(major) if major.isdigit() else 0


def find_tensorrt_include() -> Path | None:
    """TensorRT's include directory, or None.

    Looks at ``$TENSORRT_INCLUDE_DIR``, ``$TENSORRT_ROOT/include``, an ``include`` folder of pip-installed
    ``tensorrt*`` packages (the PyPI wheels ship none today), then system paths (Debian ``libnvinfer-dev`` puts
    the headers in ``/usr/include/<triplet>``).
    """
    candidates = [
        os.environ[name] for name in ("TENSORRT_INCLUDE_DIR", "TENSORRT_ROOT") if os.environ.get(name)
    ]
    for name in ("tensorrt", "tensorrt_libs", "tensorrt_bindings"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            candidates += [Path(location) / "include" for location in (spec.submodule_search_locations or [])]
    candidates += _TENSORRT_SYSTEM_INCLUDES
    for candidate in candidates:
        include_dir = resolve_tensorrt_include(candidate)
        if include_dir is not None and tensorrt_major(include_dir) >= 10:  # IPluginV3 appeared in 10.0
            return include_dir
    return None


def host_compiler() -> str:
    """``$CXX``, else ``c++``."""
    return os.environ.get("CXX") or "c++"


# ---------------------------------------------------------------------------------------------------------------
# Commands


def gencode_flags(archs: Sequence[str] = DEFAULT_ARCHS, ptx: bool = True) -> list[str]:
    """nvcc flags for machine code of each arch (``"80"`` -> sm_80) and, with ``ptx``, PTX of the newest."""
    for arch in archs:
        if not _ARCH_PATTERN.match(arch):
            raise BuildError(f"bad GPU architecture {arch!r}: use compute capability digits such as 80 or 90")
    flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in archs]
    if ptx and archs:
        newest = max(archs, key=lambda arch: int(arch.rstrip("af")))
        flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def kernel_object_command(cuda: CudaToolkit, output: Path, archs: Sequence[str], ptx: bool) -> list[str]:
    """nvcc command compiling ``cornerPoolKernel.cu`` to a position-independent object."""
    includes = [flag for path in cuda.include_dirs for flag in ("-I", str(path))]
    return [
        str(cuda.nvcc), "-ccbin", host_compiler(), "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden",
        *gencode_flags(archs, ptx), *includes, "-c", str(KERNEL_SOURCE), "-o", str(output),
    ]  # fmt: skip


def plugin_object_command(cuda: CudaToolkit, tensorrt_include: Path, output: Path) -> list[str]:
    """Host-compiler command compiling ``cornerPoolPlugin.cpp`` (TensorRT headers via -I, see PLUGIN_WARNING_FLAGS)."""
    includes = [flag for path in cuda.include_dirs for flag in ("-isystem", str(path))]
    return [
        host_compiler(), "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", *PLUGIN_WARNING_FLAGS,
        "-I", str(tensorrt_include), *includes, "-c", str(PLUGIN_SOURCE), "-o", str(output),
    ]  # fmt: skip


def link_command(cuda: CudaToolkit, objects: Sequence[Path], output: Path) -> list[str]:
    """nvcc command linking a shared library with the static CUDA runtime and only our entry points exported."""
    libraries = [flag for path in cuda.library_dirs for flag in ("-L", str(path))]
    return [
        str(cuda.nvcc), "-ccbin", host_compiler(), "-shared", "-o", str(output), *map(str, objects), *libraries,
        "-cudart", "static", "-Xlinker", f"--version-script={EXPORTS_MAP}", "-Xlinker", "-z,defs",
    ]  # fmt: skip


def run_command(command: Sequence[str], log_file: Path | None = None, verbose: bool = False) -> str:
    """Run a compiler command; return its combined output.

    Raises:
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
        first = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
        where = f"; full log: {log_file}" if log_file is not None else ""
        raise BuildError(f"{Path(command[0]).name} failed (exit {result.returncode}): {first}{where}")
    return output


# ---------------------------------------------------------------------------------------------------------------
# Building


def default_build_dir() -> Path:
    """``trt_plugins/build`` when the package directory is writable, else the user cache directory."""
    return PACKAGE_DIR / "build" if os.access(PACKAGE_DIR, os.W_OK) else CACHE_DIR


def sources_digest(sources: Sequence[Path]) -> str:
    """sha256 over the given source files' names and contents."""
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _stamp_path(library: Path) -> Path:
    return library.with_name(library.name + ".json")


def is_up_to_date(library: Path, sources: Sequence[Path]) -> bool:
    """True when ``library`` exists and was built from the current ``sources``."""
    try:
        stamp = json.loads(_stamp_path(library).read_text())
    except (OSError, ValueError):
        return False
    return library.is_file() and stamp.get("sources") == sources_digest(sources)


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


def _install(built: Path, library: Path, sources: Sequence[Path], info: dict[str, object]) -> None:
    """Move a finished library into place atomically and write its stamp."""
    os.replace(built, library)
    _stamp_path(library).write_text(json.dumps({"sources": sources_digest(sources), **info}, indent=2) + "\n")


def build(
    out_dir: Path | None = None,
    archs: Sequence[str] = DEFAULT_ARCHS,
    ptx: bool = True,
    tensorrt_include: Path | None = None,
    kernels_only: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Compile the kernel library and, when TensorRT headers are available, the plugin library.

    Args:
        out_dir: where the libraries go (default :func:`default_build_dir`).
        archs: compute capabilities to compile machine code for.
        ptx: also embed PTX of the newest arch.
        tensorrt_include: TensorRT include directory (or its parent); default :func:`find_tensorrt_include`.
        kernels_only: skip the plugin even if headers are found.
        verbose: echo compiler output.
        log: receives one line per library built (and the one-line note when TensorRT headers are missing).

    Raises:
        BuildError: no CUDA compiler, a given TensorRT path without headers, or a compiler error.
    """
    gencode_flags(archs, ptx)  # reject bad arch names before touching the build directory
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    with _build_lock(out_dir):
        return _build_locked(out_dir, archs, ptx, tensorrt_include, kernels_only, verbose, log)


def _build_locked(
    out_dir: Path,
    archs: Sequence[str],
    ptx: bool,
    tensorrt_include: Path | None,
    kernels_only: bool,
    verbose: bool,
    log: Callable[[str], None] | None,
) -> BuildResult:
    """:func:`build`, with the build directory's lock already held."""
    say = log or (lambda _line: None)
    cuda = find_cuda()
    include_dir: Path | None = None
    if not kernels_only:
        if tensorrt_include is not None:
            include_dir = resolve_tensorrt_include(tensorrt_include)
            if include_dir is None:
                raise BuildError(
                    f"no TensorRT headers (NvInferRuntime.h, NvInferVersion.h) in {tensorrt_include}"
                )
        else:
            include_dir = find_tensorrt_include()
    trt_version = tensorrt_version(include_dir) if include_dir is not None else None
    targets = ", ".join(f"sm_{arch}" for arch in archs) + (" + PTX" if ptx else "")
    info: dict[str, object] = {
        "archs": list(archs),
        "ptx": ptx,
        "nvcc": str(cuda.nvcc),
        "cuda": cuda.version(),
    }
    log_file = out_dir / "build.log"
    log_file.write_text("")

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as scratch:
        work = Path(scratch)
        kernel_object = work / "cornerPoolKernel.o"
        run_command(kernel_object_command(cuda, kernel_object, archs, ptx), log_file, verbose)
        kernel_library = out_dir / KERNEL_LIBRARY
        run_command(link_command(cuda, [kernel_object], work / KERNEL_LIBRARY), log_file, verbose)
        _install(work / KERNEL_LIBRARY, kernel_library, KERNEL_SOURCES, info)
        say(f"built {kernel_library} ({targets}, CUDA {info['cuda']})")

        plugin_library: Path | None = None
        if include_dir is not None:
            plugin_object = work / "cornerPoolPlugin.o"
            run_command(plugin_object_command(cuda, include_dir, plugin_object), log_file, verbose)
            run_command(
                link_command(cuda, [plugin_object, kernel_object], work / PLUGIN_LIBRARY), log_file, verbose
            )
            plugin_library = out_dir / PLUGIN_LIBRARY
            trt_info = {"tensorrt_include": str(include_dir), "tensorrt_headers": trt_version}
            _install(work / PLUGIN_LIBRARY, plugin_library, PLUGIN_SOURCES, {**info, **trt_info})
            say(f"built {plugin_library} against TensorRT {trt_version} headers in {include_dir}")
        elif not kernels_only:
            say(
                "TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT; the pip wheels ship none): "
                f"built only the kernel library {kernel_library}"
            )
    return BuildResult(kernel_library, plugin_library, include_dir, trt_version)


def ensure_kernel_library(out_dir: Path | None = None) -> Path:
    """Path of an up-to-date kernel library, building it (all default targets) if missing or stale."""
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    library = out_dir / KERNEL_LIBRARY
    if not is_up_to_date(library, KERNEL_SOURCES):
        with _build_lock(out_dir):
            if not is_up_to_date(library, KERNEL_SOURCES):  # another process may have built it meanwhile
                _build_locked(out_dir, DEFAULT_ARCHS, True, None, True, False, None)
    return library


def ensure_plugin_library(out_dir: Path | None = None) -> Path:
    """Path of an up-to-date TensorRT plugin library, building it if missing or stale.

    Raises:
        BuildError: it has to be built and TensorRT headers or the CUDA compiler are missing, or compiling failed.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    library = out_dir / PLUGIN_LIBRARY
    if not is_up_to_date(library, PLUGIN_SOURCES):
        with _build_lock(out_dir):
            if not is_up_to_date(library, PLUGIN_SOURCES):
                include_dir = find_tensorrt_include()
                if include_dir is None:
                    raise BuildError(
                        f"cannot build {PLUGIN_LIBRARY}: TensorRT headers not found; TensorRT's pip wheels ship none, "
                        "so set TENSORRT_INCLUDE_DIR to the include/ of a TensorRT tar or deb install (or of "
                        "github.com/NVIDIA/TensorRT at your TensorRT version)"
                    )
                _build_locked(out_dir, DEFAULT_ARCHS, True, include_dir, False, False, None)
    return library


# ---------------------------------------------------------------------------------------------------------------
# Command line


def make_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m trt_plugins.build``."""
    parser = argparse.ArgumentParser(
        prog="python -m trt_plugins.build",
        description=(
            "Compile the CornerPool CUDA kernels (libcornerpool_kernels.so) and, when TensorRT headers are found, "
            "the TensorRT plugin (libcornerpool_trt.so). Uses nvcc from $CUDA_HOME, PATH, /usr/local/cuda or the "
            "nvidia-cuda-nvcc/-runtime/-cccl wheels; TensorRT headers from --tensorrt-include, "
            "$TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include or system paths. No GPU is needed to build."
        ),
        epilog="The CMake build (trt_plugins/CMakeLists.txt) produces the same libraries.",
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
    parser.add_argument("--verbose", action="store_true", help="echo compiler commands' output")
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
