"""TensorRT backend for ``.plan`` engines built by ``python -m export.to_trt``, and the engine sidecar.

An engine is only valid with the TensorRT version, the GPU model and the plugin library it was built
with, so ``NAME.plan`` travels with ``NAME.plan.json`` (:class:`Sidecar`): classes, normalisation and
test settings, the shape profile, precision, versions, GPU, plugin library and source checkpoint with
their sha256. The checks over it are pure functions (tested on CPU); only :class:`TensorRTBackend` needs
TensorRT, cuda-python and a GPU, all imported lazily.

TensorRT API used here exists unchanged in 10.x and 11.x (``../shared/reference/tensorrt_onnx.md`` §1.5,
§4): ``Runtime.deserialize_cuda_engine``, ``ICudaEngine.num_io_tensors/get_tensor_name/get_tensor_mode/
get_tensor_dtype``, ``IExecutionContext.set_input_shape/get_tensor_shape/set_tensor_address/
execute_async_v3``, ``trt.nptype``. No binding-index API (removed in 10).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError
from runtime.meta import ModelMeta, sha256_file

from .base import Backend

SIDECAR_FORMAT = "cornernet-deploy/tensorrt-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16")


# ---------------------------------------------------------------------------------------------------
# Sidecar schema (pure Python)


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: ``shape`` has -1 for dynamic axes; ``dtype`` is a numpy name."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """The optimisation profile of the image input: ``[N, 3, H, W]`` min / opt / max."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def validate(self) -> None:
        """Raise ``UserError`` unless all three have one rank and ``1 <= min <= opt <= max`` per axis."""
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise UserError(
                f"shape profile of '{self.input}': min/opt/max have different ranks ({self.min}, {self.opt}, {self.max})"
            )
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise UserError(
                    f"shape profile of '{self.input}': need 1 <= min <= opt <= max on every axis, got "
                    f"min {_fmt_shape(self.min)}, opt {_fmt_shape(self.opt)}, max {_fmt_shape(self.max)}; fix --min/--opt/--max/--batch"
                )


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as TensorRT cares about it: engines are specific to the compute capability."""

    name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


@dataclass(frozen=True)
class PluginInfo:
    """The plugin library loaded when the engine was built, and how many plugin layers it has."""

    library: str
    sha256: str
    layers: int


@dataclass(frozen=True)
class SourceInfo:
    """What the engine was built from."""

    checkpoint: str | None
    checkpoint_sha256: str | None
    onnx: str
    onnx_sha256: str


@dataclass(frozen=True)
class Sidecar:
    """Contents of ``NAME.plan.json``: everything needed to run and to trust ``NAME.plan``."""

    engine_file: str  # file name of the engine, relative to the sidecar
    engine_bytes: int
    engine_sha256: str
    precision: str  # "fp32" or "fp16"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: ShapeProfile
    meta: ModelMeta
    tensorrt_version: str
    gpu: GpuInfo
    plugin: PluginInfo | None
    source: SourceInfo
    build: dict[str, Any] = field(default_factory=dict)  # options and tool versions, informational

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "engine": {"file": self.engine_file, "bytes": self.engine_bytes, "sha256": self.engine_sha256},
            "precision": self.precision,
            "inputs": [_spec_dict(s) for s in self.inputs],
            "outputs": [_spec_dict(s) for s in self.outputs],
            "profile": {
                "input": self.profile.input,
                "min": list(self.profile.min),
                "opt": list(self.profile.opt),
                "max": list(self.profile.max),
            },
            "meta": self.meta.to_dict(),
            "tensorrt": {"version": self.tensorrt_version},
            "gpu": asdict(self.gpu),
            "plugin": None if self.plugin is None else asdict(self.plugin),
            "source": asdict(self.source),
            "build": self.build,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "sidecar") -> Sidecar:
        """Parse and validate; ``UserError`` naming ``where`` for anything missing or malformed."""
        if d.get("format") != SIDECAR_FORMAT:
            raise UserError(
                f"{where}: not a cornernet-deploy engine sidecar (format {d.get('format')!r}); rebuild the engine with python -m export.to_trt"
            )
        if d.get("format_version") != SIDECAR_VERSION:
            raise UserError(
                f"{where}: sidecar format_version {d.get('format_version')!r}, this version reads {SIDECAR_VERSION}; rebuild the engine with python -m export.to_trt"
            )
        try:
            prof = d["profile"]
            sidecar = cls(
                engine_file=str(d["engine"]["file"]),
                engine_bytes=int(d["engine"]["bytes"]),
                engine_sha256=str(d["engine"]["sha256"]),
                precision=str(d["precision"]),
                inputs=tuple(_spec(s) for s in d["inputs"]),
                outputs=tuple(_spec(s) for s in d["outputs"]),
                profile=ShapeProfile(
                    str(prof["input"]), _ints(prof["min"]), _ints(prof["opt"]), _ints(prof["max"])
                ),
                meta=ModelMeta.from_dict(d["meta"]),
                tensorrt_version=str(d["tensorrt"]["version"]),
                gpu=GpuInfo(str(d["gpu"]["name"]), str(d["gpu"]["compute_capability"])),
                plugin=None
                if d.get("plugin") is None
                else PluginInfo(
                    str(d["plugin"]["library"]), str(d["plugin"]["sha256"]), int(d["plugin"]["layers"])
                ),
                source=SourceInfo(
                    _opt_str(d["source"].get("checkpoint")),
                    _opt_str(d["source"].get("checkpoint_sha256")),
                    str(d["source"]["onnx"]),
                    str(d["source"]["onnx_sha256"]),
                ),
                build=dict(d.get("build") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(
                f"{where}: malformed engine sidecar ({type(e).__name__}: {e}); rebuild the engine with python -m export.to_trt"
            ) from None
        if sidecar.precision not in PRECISIONS:
            raise UserError(
                f"{where}: unknown precision {sidecar.precision!r} (expected fp32 or fp16); rebuild the engine with python -m export.to_trt"
            )
        try:
            sidecar.profile.validate()
        except UserError as e:
            raise UserError(f"{where}: {e}; rebuild the engine with python -m export.to_trt") from None
        return sidecar

    def write(self, path: str | Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Sidecar:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise UserError(
                f"{path}: cannot read the engine sidecar ({e.strerror}); check the path"
            ) from None
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: engine sidecar is not valid JSON ({e.msg} at line {e.lineno}); rebuild the engine with python -m export.to_trt"
            ) from None
        if not isinstance(d, dict):
            raise UserError(
                f"{path}: engine sidecar is not a JSON object; rebuild the engine with python -m export.to_trt"
            )
        return cls.from_dict(d, where=str(path))

    def rebuild_command(self, engine: str | Path, *extra: str) -> str:
        """The ``python -m export.to_trt`` command that rebuilds this engine, with ``extra`` flags."""
        src = self.source.checkpoint or self.source.onnx
        parts = ["python -m export.to_trt", src, "--out", str(engine)]
        if self.precision == "fp16":
            parts.append("--fp16")
        return " ".join([*parts, *extra])


def sidecar_path(engine: str | Path) -> Path:
    """``NAME.plan`` -> ``NAME.plan.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def _spec_dict(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}


def _spec(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(d["name"]), str(d["dtype"]), _ints(d["shape"]))


def _ints(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple):
        raise TypeError(f"expected a list of ints, got {type(v).__name__}")
    return tuple(int(x) for x in v)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror}); choose another --out") from None


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


# ---------------------------------------------------------------------------------------------------
# Compatibility checks (pure functions over the sidecar; each raises UserError with the fix)


def check_shape_in_profile(
    shape: tuple[int, ...],
    profile: ShapeProfile,
    where: str = "engine",
    rebuild: str = "python -m export.to_trt MODEL",
) -> None:
    """Raise ``UserError`` unless ``shape`` (``[N, 3, H, W]``) lies inside ``profile``.

    Args:
        shape: the input batch shape.
        profile: the engine's optimisation profile.
        where: the engine file, named in the message.
        rebuild: the rebuild command; the flag that fixes it (``--batch N`` / ``--max HxW`` / ``--min HxW``) is appended.
    """
    shape = tuple(int(s) for s in shape)
    lo, hi = profile.min, profile.max
    if len(shape) != len(hi) or len(shape) != 4:
        raise UserError(
            f"{where}: input must be [N, 3, H, W] like the profile {_fmt_shape(hi)}, got shape {_fmt_shape(shape)}"
        )
    if shape[1] != hi[1] or shape[1] != lo[1]:
        raise UserError(f"{where}: input has {shape[1]} channels, the engine takes {hi[1]}")
    if shape[0] > hi[0]:
        raise UserError(
            f"{where}: batch {shape[0]} exceeds the engine's maximum batch {hi[0]}; use --batch {hi[0]} or rebuild with {rebuild} --batch {shape[0]}"
        )
    if shape[2] > hi[2] or shape[3] > hi[3]:
        need = f"{max(shape[2], hi[2])}x{max(shape[3], hi[3])}"
        raise UserError(
            f"{where}: input {shape[2]}x{shape[3]} (HxW) is larger than the engine's maximum {hi[2]}x{hi[3]}; rebuild with {rebuild} --max {need}"
        )
    if shape[0] < lo[0] or shape[2] < lo[2] or shape[3] < lo[3]:
        need = f"{min(shape[2], lo[2])}x{min(shape[3], lo[3])}"
        raise UserError(
            f"{where}: input {_fmt_shape(shape)} is smaller than the engine's minimum {_fmt_shape(lo)}; rebuild with {rebuild} --min {need}"
        )


def check_tensorrt_version(sidecar: Sidecar, version: str, where: str, rebuild: str) -> None:
    """An engine runs only under the TensorRT version that built it (``trt.__version__``, compared exactly)."""
    if sidecar.tensorrt_version != version:
        raise UserError(
            f"{where}: built by TensorRT {sidecar.tensorrt_version}, this process has TensorRT {version}; "
            f"engines are tied to one version: rebuild with {rebuild}"
        )


def check_gpu(sidecar: Sidecar, gpu: GpuInfo, where: str, rebuild: str) -> str | None:
    """A different compute capability is an error; the same one under another model name is a warning (returned).

    TensorRT refuses engines from another compute capability; for another GPU model of the same capability it only
    warns that performance may differ (tactics were timed on the other one), so we do the same.
    """
    if sidecar.gpu.compute_capability != gpu.compute_capability:
        raise UserError(
            f"{where}: built for {sidecar.gpu.name} (compute capability {sidecar.gpu.compute_capability}), this GPU is {gpu.name} "
            f"(compute capability {gpu.compute_capability}); rebuild on this GPU with {rebuild}"
        )
    if sidecar.gpu.name != gpu.name:
        return (
            f"{where}: built on {sidecar.gpu.name}, running on {gpu.name} (same compute capability {gpu.compute_capability}); "
            f"it runs, but tactics were timed on the other GPU: rebuild with {rebuild} for best speed"
        )
    return None


def check_plugin(sidecar: Sidecar, library: str | None, sha256: str | None, where: str, rebuild: str) -> None:
    """The engine's plugin layers need the very plugin library it was built with (same sha256).

    Args:
        library, sha256: the library this process loaded (``None`` when it could not load one).
    """
    built = sidecar.plugin
    if built is None or built.layers == 0:
        return
    if library is None or sha256 is None:
        raise UserError(
            f"{where}: has {built.layers} CornerPool plugin layers but the plugin library could not be loaded "
            f"(built with {built.library}); build it with python -m trt_plugins.build, or rebuild with {rebuild}"
        )
    if sha256 != built.sha256:
        raise UserError(
            f"{where}: built with plugin library {built.library} (sha256 {built.sha256[:12]}), this process loaded "
            f"{library} (sha256 {sha256[:12]}); use the original library or rebuild with {rebuild}"
        )


def check_engine_file(sidecar: Sidecar, engine: Path, size: int) -> None:
    """The sidecar must describe this engine file (cheap check: its size in bytes)."""
    if sidecar.engine_bytes != size:
        raise UserError(
            f"{engine}: is {size} bytes but its sidecar {sidecar_path(engine).name} describes a {sidecar.engine_bytes}-byte engine "
            f"({sidecar.engine_file}); the two do not belong together: rebuild with {sidecar.rebuild_command(engine)}"
        )


def parse_cuda_device(device: str | None) -> int:
    """``None``/``"cuda"`` -> 0, ``"cuda:N"`` -> N; anything else is a ``UserError`` (TensorRT is CUDA only)."""
    if device is None or device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise UserError(
        f"--device {device}: TensorRT engines run on CUDA GPUs only; use --device cuda[:N], or the .onnx/.pth model on CPU"
    )


# ---------------------------------------------------------------------------------------------------
# Lazy imports and CUDA helpers (cuda-python: every call returns (err, value...))


def import_tensorrt() -> Any:
    """``import tensorrt``, or a ``UserError`` saying why it failed and how to install it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError for a missing libnvinfer
        raise UserError(
            f"TensorRT is not available (`import tensorrt` failed: {_first_line(e)}); on a machine with an NVIDIA GPU: pip install -e '.[gpu]'"
        ) from None
    return trt


def import_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python), or a ``UserError``."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as e:  # ImportError, or a missing CUDA library
        raise UserError(
            f"cuda-python is not available (`from cuda.bindings import runtime` failed: {_first_line(e)}); pip install cuda-python"
        ) from None
    return cudart


def cuda_check(cudart: Any, result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result: raise ``RuntimeError`` naming ``what`` on error.

    Returns ``None``, the single value, or a tuple of values.
    """
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA error in {what}: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device_count(cudart: Any) -> tuple[int, str | None]:
    """``(count, None)``, or ``(0, error name)`` when there is no driver or no device (it does not raise)."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        return 0, name.decode() if isinstance(name, bytes) else str(name)
    return int(count), None


def gpu_info(cudart: Any, device: int) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``."""
    prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")


def select_cuda_device(cudart: Any, device: str | None) -> int:
    """Parse ``--device``, check the GPU exists and make it current; ``UserError`` otherwise."""
    index = parse_cuda_device(device)
    count, err = cuda_device_count(cudart)
    if err is not None or count == 0:
        raise UserError(
            f"no CUDA device ({err or 'cudaGetDeviceCount returned 0'}); TensorRT needs an NVIDIA GPU and driver"
        )
    if index >= count:
        raise UserError(
            f"--device {device}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})"
        )
    cuda_check(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
    return index


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here (for test skips and messages), or ``None`` when they can."""
    try:
        import_tensorrt()
        cudart = import_cudart()
    except UserError as e:
        return str(e)
    count, err = cuda_device_count(cudart)
    if err is not None or count == 0:
        return f"no CUDA device (cudaGetDeviceCount: {err or 0})"
    return None


_LOGGER: Any = None


def trt_logger(trt: Any, verbose: bool = False) -> Any:
    """One ``trt.Logger`` per process (TensorRT warns when builder and runtime get different loggers)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    _LOGGER.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return _LOGGER


def load_plugin_library() -> tuple[str | None, str | None, str | None]:
    """Load the CornerPool plugin into TensorRT's registry: ``(library, sha256, None)`` or ``(None, None, why)``."""
    try:
        import trt_plugins

        library = str(trt_plugins.load())
    except Exception as e:  # missing build, dlopen failure, registry refusal
        return None, None, _first_line(e)
    return library, sha256_file(library), None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------
# The backend


@dataclass
class _Buffer:
    """A device buffer and its pinned host mirror, grown on demand, reused across calls."""

    device: int = 0
    host: int = 0
    capacity: int = 0  # bytes


class TensorRTBackend(Backend):
    """Runs a ``.plan`` engine with one CUDA stream, device + pinned host buffers reused across calls.

    Args:
        path: the engine; ``path + ".json"`` must be its sidecar.
        device: ``"cuda"`` or ``"cuda:N"``.
        cuda_graph: capture the enqueue in a CUDA graph and replay it while the input shape stays the same
            (re-captured when the shape changes); worth it for small batches with fixed shapes.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None, cuda_graph: bool = False) -> None:
        self._closed = True  # until resources exist, close() has nothing to free
        path = Path(path)
        side_path = sidecar_path(path)
        if not side_path.is_file():
            raise UserError(
                f"{path}: no sidecar {side_path.name} next to it (it carries classes and settings); build engines with python -m export.to_trt"
            )
        sidecar = Sidecar.read(side_path)
        check_engine_file(sidecar, path, path.stat().st_size)
        where, rebuild = str(path), sidecar.rebuild_command(path)

        trt = import_tensorrt()
        cudart = import_cudart()
        check_tensorrt_version(sidecar, trt.__version__, where, rebuild)
        index = select_cuda_device(cudart, device)
        gpu = gpu_info(cudart, index)
        warning = check_gpu(sidecar, gpu, where, rebuild)
        if warning:
            warnings.warn(warning, stacklevel=2)
        plugin_lib = None
        if sidecar.plugin is not None and sidecar.plugin.layers > 0:
            # before deserializing: the engine's plugin layers need the creator registered
            plugin_lib, plugin_sha, why = load_plugin_library()
            if why:
                where = f"{where} (plugin: {why})"
            check_plugin(sidecar, plugin_lib, plugin_sha, where, rebuild)

        self._trt, self._cudart, self._path, self._device = trt, cudart, path, index
        self.sidecar, self.meta, self.profile = sidecar, sidecar.meta, sidecar.profile
        self._rebuild = rebuild
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise UserError(
                f"{path}: TensorRT could not deserialize the engine (see its log above); rebuild with {rebuild}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [sidecar.profile.input]:
            raise UserError(
                f"{path}: engine inputs {inputs} differ from its sidecar's ({sidecar.profile.input}); rebuild with {rebuild}"
            )
        self._input = inputs[0]
        self.output_names = tuple(n for n in names if n not in inputs)
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}

        self._stream = cuda_check(
            cudart,
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self._buffers: dict[str, _Buffer] = {n: _Buffer() for n in names}
        self._closed = False
        self._shape: tuple[int, ...] | None = None
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self._use_graph = cuda_graph
        self._graph: Any = None  # cudaGraphExec_t for self._shape
        self.info: dict[str, Any] = {
            "engine": str(path),
            "precision": sidecar.precision,
            "tensorrt": trt.__version__,
            "device": f"cuda:{index}",
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "profile": {
                "min": list(self.profile.min),
                "opt": list(self.profile.opt),
                "max": list(self.profile.max),
            },
            "plugin_library": plugin_lib,
            "cuda_graph": cuda_graph,
            "onnx": sidecar.source.onnx,
            "source_checkpoint": sidecar.source.checkpoint,
            "source_sha256": sidecar.source.checkpoint_sha256,
        }

    # -- buffers ------------------------------------------------------------------------------------

    def _reserve(self, name: str, nbytes: int) -> None:
        """Make ``name``'s buffers hold ``nbytes``: reallocate (new addresses) only when they are smaller."""
        buf = self._buffers[name]
        if nbytes <= buf.capacity:
            return
        cudart = self._cudart
        self._free(buf)
        size = max(nbytes, 1)
        buf.device = int(cuda_check(cudart, cudart.cudaMalloc(size), f"cudaMalloc({size}) for {name}"))
        buf.host = int(cuda_check(cudart, cudart.cudaMallocHost(size), f"cudaMallocHost({size}) for {name}"))
        buf.capacity = size

    def _free(self, buf: _Buffer) -> None:
        cudart = self._cudart
        if buf.device:
            cuda_check(cudart, cudart.cudaFree(buf.device), "cudaFree")
        if buf.host:
            cuda_check(cudart, cudart.cudaFreeHost(buf.host), "cudaFreeHost")
        buf.device = buf.host = buf.capacity = 0

    def _host_array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of ``name``'s pinned host buffer with ``shape``."""
        dtype = self._dtypes[name]
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(self._buffers[name].host)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        """Set the input shape, size the outputs, grow buffers and (re)bind their addresses."""
        self._drop_graph()
        self._shape = None  # until everything below succeeded
        if not self._context.set_input_shape(self._input, shape):
            raise UserError(
                f"{self._path}: TensorRT rejected input shape {_fmt_shape(shape)}; rebuild with {self._rebuild}"
            )
        out_shapes = {n: tuple(int(d) for d in self._context.get_tensor_shape(n)) for n in self.output_names}
        for n, s in out_shapes.items():
            if any(d < 0 for d in s):
                raise RuntimeError(
                    f"{self._path}: output {n} has a data-dependent shape {s}; this backend needs shapes known from the input"
                )
        sizes = {self._input: int(np.prod(shape)) * self._dtypes[self._input].itemsize}
        sizes.update({n: int(np.prod(s)) * self._dtypes[n].itemsize for n, s in out_shapes.items()})
        for n, nbytes in sizes.items():
            self._reserve(n, nbytes)
        for n, buf in self._buffers.items():  # cheap; needed after any reallocation
            if not self._context.set_tensor_address(n, buf.device):
                raise RuntimeError(f"{self._path}: set_tensor_address failed for {n}")
        self._shape, self._out_shapes = shape, out_shapes

    # -- execution ----------------------------------------------------------------------------------

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"{self._path}: execute_async_v3 failed (see the TensorRT log above)")

    def _capture(self) -> Any:
        """Capture one enqueue into a CUDA graph; ``None`` (and graphs off) when the engine cannot be captured."""
        cudart = self._cudart
        self._enqueue()  # TensorRT: run once after a shape change before capturing (updates internal state)
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart, cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        ok = self._context.execute_async_v3(int(self._stream))
        err, graph = cudart.cudaStreamEndCapture(self._stream)
        if not ok or err != cudart.cudaError_t.cudaSuccess:
            if err == cudart.cudaError_t.cudaSuccess and graph is not None:
                cuda_check(cudart, cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
            warnings.warn(
                f"{self._path}: this engine cannot be captured in a CUDA graph; running without", stacklevel=3
            )
            self._use_graph = False
            self.info["cuda_graph"] = False
            return None
        try:
            return cuda_check(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            cuda_check(cudart, cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def _drop_graph(self) -> None:
        if self._graph is not None:
            cuda_check(self._cudart, self._cudart.cudaGraphExecDestroy(self._graph), "cudaGraphExecDestroy")
            self._graph = None

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` float32 ``[N, 3, H, W]`` inside the engine's profile -> outputs by name (host copies)."""
        if self._closed:
            raise RuntimeError(f"{self._path}: backend is closed")
        shape = tuple(int(s) for s in images.shape)
        check_shape_in_profile(shape, self.profile, str(self._path), self._rebuild)
        cudart, stream = self._cudart, self._stream
        # the current device is per thread: make ours current for the allocations and copies below
        cuda_check(cudart, cudart.cudaSetDevice(self._device), "cudaSetDevice")
        if shape != self._shape:
            self._set_shape(shape)
        host_in = self._host_array(self._input, shape)
        np.copyto(host_in, images, casting="same_kind")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        inp = self._buffers[self._input]
        cuda_check(
            cudart,
            cudart.cudaMemcpyAsync(inp.device, inp.host, host_in.nbytes, h2d, stream),
            "cudaMemcpyAsync H2D",
        )
        if self._use_graph and self._graph is None:
            self._graph = self._capture()
        if self._graph is not None:
            cuda_check(cudart, cudart.cudaGraphLaunch(self._graph, stream), "cudaGraphLaunch")
        else:
            self._enqueue()
        outs = {}
        for n in self.output_names:
            out = self._host_array(n, self._out_shapes[n])
            buf = self._buffers[n]
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(buf.host, buf.device, out.nbytes, d2h, stream),
                "cudaMemcpyAsync D2H",
            )
            outs[n] = out
        cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {n: a.copy() for n, a in outs.items()}  # the pinned buffers are reused by the next call

    def close(self) -> None:
        """Free graphs, buffers and the stream, then the context, engine and runtime (in that order)."""
        if self._closed:
            return
        self._closed = True
        cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._drop_graph()
        for buf in self._buffers.values():
            self._free(buf)
        cuda_check(self._cudart, self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        del self._context, self._engine, self._runtime

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown CUDA may already be gone
            self.close()
