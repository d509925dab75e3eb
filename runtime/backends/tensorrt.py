"""TensorRT backend for ``.plan`` engines built by ``python -m export.to_trt``.

The engine's sidecar and its compatibility checks live in :mod:`runtime.engine_sidecar`; TensorRT and
cuda-python are reached through :mod:`runtime.cuda_env`, imported lazily.

TensorRT API used here exists unchanged in 10.x and 11.x (``../shared/reference/tensorrt_onnx.md`` §1.5,
§4): ``Runtime.deserialize_cuda_engine``, ``ICudaEngine.num_io_tensors/get_tensor_name/get_tensor_mode/
get_tensor_dtype``, ``IExecutionContext.set_input_shape/get_tensor_shape/set_tensor_address/
execute_async_v3``, ``trt.nptype``. No binding-index API (removed in 10).
"""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cuda_env import (
    cuda_check,
    gpu_info,
    import_cudart,
    import_tensorrt,
    numpy_dtype,
    select_cuda_device,
    trt_logger,
)
from runtime.engine_sidecar import (
    Sidecar,
    check_engine_file,
    check_gpu,
    check_plugin,
    check_shape_in_profile,
    check_tensorrt_version,
    fmt_shape,
    sidecar_path,
)
from runtime.errors import UserError

from .base import Backend


def _load_plugin(sidecar: Sidecar, plugin: str | Path | None, where: str, rebuild: str) -> str:
    """Find the prebuilt plugin library, check its identity against the sidecar, register it; never compiles.

    Returns the registered library's path. Warns when the library's sources differ from the engine's (or it has no
    stamp); ``UserError`` when none is found (with the build command) or its version differs.
    """
    import trt_plugins
    from trt_plugins.stamp import read_identity

    assert sidecar.plugin is not None
    library = str(trt_plugins.find_library(plugin, recorded=sidecar.plugin.library))
    warning = check_plugin(sidecar, library, read_identity(library), where, rebuild)  # before registering it
    registered = trt_plugins.load(library)
    if registered != library:  # this process registered another library earlier: that one runs the layers
        warning = check_plugin(sidecar, registered, read_identity(registered), where, rebuild)
    if warning:
        warnings.warn(warning, stacklevel=3)
    return registered


@dataclass
class _Buffer:
    """A device buffer and its pinned host mirror, grown on demand, reused across calls."""

    device: int = 0
    host: int = 0
    capacity: int = 0  # bytes


class TensorRTBackend(Backend):
    """Runs a ``.plan`` engine with one CUDA stream, device + pinned host buffers reused across calls.

    Loading never compiles: the engine's CornerPool layers need a prebuilt plugin library, found by
    :func:`trt_plugins.find_library` (``plugin``, then ``$CORNERNET_TRT_PLUGIN``, then the path the sidecar
    recorded at build time, then ``trt_plugins/build/``) and checked against the sidecar by its identity
    stamp (:func:`runtime.engine_sidecar.check_plugin`). Everything acquired is freed if construction
    fails; ``close()`` (also on leaving a ``with`` block) frees the rest and may be called more than once.

    Args:
        path: the engine; ``path + ".json"`` must be its sidecar.
        device: ``"cuda"`` or ``"cuda:N"``.
        cuda_graph: capture the enqueue in a CUDA graph and replay it while the input shape stays the same
            (re-captured when the shape changes); worth it for small batches with fixed shapes.
        plugin: the CornerPool plugin library to load (the commands' ``--plugin PATH``).
    """

    name = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        cuda_graph: bool = False,
        plugin: str | Path | None = None,
    ) -> None:
        # Nothing is held yet: close() and _release() work from any point of the construction.
        self._closed = True
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._graph: Any = None  # cudaGraphExec_t for self._shape
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
            plugin_lib = _load_plugin(sidecar, plugin, where, rebuild)

        self._trt, self._cudart, self._path, self._device = trt, cudart, path, index
        self.sidecar, self.meta, self.profile = sidecar, sidecar.meta, sidecar.profile
        self._rebuild = rebuild
        try:
            self._open(trt, cudart, path, sidecar, rebuild)
        except BaseException:
            with contextlib.suppress(Exception):  # the construction error is the one to report
                self._release()
            raise
        self._closed = False
        self._shape: tuple[int, ...] | None = None
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self._use_graph = cuda_graph
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

    def _open(self, trt: Any, cudart: Any, path: Path, sidecar: Sidecar, rebuild: str) -> None:
        """Runtime, engine, context, tensor names and types, stream; each kept on ``self`` as soon as it exists."""
        try:
            self._runtime = trt.Runtime(trt_logger(trt))
        except TypeError:  # pybind11: "factory function returned nullptr" when CUDA cannot initialise
            raise UserError(
                f"{path}: TensorRT could not create a runtime (CUDA initialisation failed; see its log above)"
            ) from None
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
        self._dtypes = {n: numpy_dtype(trt, self._engine.get_tensor_dtype(n), n, path) for n in names}
        self._stream = cuda_check(
            cudart,
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self._buffers = {n: _Buffer() for n in names}

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
        return np.frombuffer(memoryview(raw), dtype=dtype, count=count).reshape(shape)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        """Set the input shape, size the outputs, grow buffers and (re)bind their addresses."""
        self._drop_graph()
        self._shape = None  # until everything below succeeded
        if not self._context.set_input_shape(self._input, shape):
            raise UserError(
                f"{self._path}: TensorRT rejected input shape {fmt_shape(shape)}; rebuild with {self._rebuild}"
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
        """Free graphs, buffers and the stream, then the context, engine and runtime (in that order). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Free whatever is held, each step even if an earlier one failed; then raise the first failure."""
        cudart = self._cudart
        steps: list[Any] = []
        if self._stream is not None:
            steps.append(
                lambda: cuda_check(
                    cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize"
                )
            )
        steps.append(self._drop_graph)
        steps += [lambda buf=buf: self._free(buf) for buf in self._buffers.values()]
        if self._stream is not None:
            steps.append(
                lambda: cuda_check(cudart, cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            )
        first: BaseException | None = None
        for step in steps:
            try:
                step()
            except Exception as error:
                first = first or error
        self._stream = None
        self._buffers = {}
        # TensorRT objects go in dependency order: the context uses the engine, the engine the runtime.
        self._context = None
        self._engine = None
        self._runtime = None
        if first is not None:
            raise first

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown CUDA may already be gone
            self.close()
