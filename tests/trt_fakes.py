"""CPU stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``, to run the engine builder and the TensorRT
backend end to end on a machine without either.

They are strict on purpose: only API names that exist in both TensorRT 10 and 11 (per version where they
differ: ``BuilderFlag.FP16`` and ``EXPLICIT_BATCH`` only in 10, ``ENABLE_PLUGIN_OVERRIDE`` from 10.15), enums
that are renumbered in 11, "device" memory that is plain host memory but checked on every copy and
kernel (an address must lie in a live allocation of the right kind, big enough), and counts of live
allocations so leaks and double frees show. The "network" is fixed and simple, computed in numpy:

    row_mean [N, H] float32 = mean of the input over channels and width
    size     [N, 2] int64   = (H, W) for every image

What they cannot tell: whether real TensorRT accepts our calls at run time, how it behaves on a GPU.

Also here: :class:`FakeEnv` (the stand-ins installed, a tiny ONNX model of that network with one CornerPool node,
a fake plugin library with its identity stamp) shared by the TensorRT test modules.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import json
import sys
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"
CACHE_MAGIC = b"FAKECACHE"


# ---------------------------------------------------------------------------------------------------
# cuda.bindings.runtime


class cudaError_t(enum.IntEnum):  # cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


# Aliases for annotations inside FakeCudart, whose class attributes shadow the enum names.
CudaErr: TypeAlias = cudaError_t
CopyKind: TypeAlias = cudaMemcpyKind
CaptureMode: TypeAlias = cudaStreamCaptureMode


@dataclass
class FakeCudart:
    """Enough of ``cuda.bindings.runtime`` for the backend; every call returns ``(err, *values)``."""

    devices: list[tuple[bytes, int, int]] = field(default_factory=lambda: [(b"NVIDIA Fake H200", 9, 0)])
    allocations: dict[int, tuple[str, Any]] = field(default_factory=dict)  # address -> (kind, ctypes buffer)
    capturing: list[Any] | None = None
    captures: int = 0
    launches: int = 0
    graph_execs: int = 0  # live
    streams: int = 0  # live
    current: int = -1
    fail_stream_create: bool = False  # test hook: cudaStreamCreateWithFlags reports out of memory

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def cudaGetErrorName(self, err: CudaErr) -> tuple[CudaErr, bytes]:
        return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()

    def cudaGetDeviceCount(self) -> tuple[CudaErr, int]:
        if not self.devices:
            return cudaError_t.cudaErrorNoDevice, 0
        return cudaError_t.cudaSuccess, len(self.devices)

    def cudaSetDevice(self, index: int) -> tuple[CudaErr]:
        if not 0 <= index < len(self.devices):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.current = index
        return (cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[CudaErr, Any]:
        name, major, minor = self.devices[index]
        return cudaError_t.cudaSuccess, types.SimpleNamespace(
            name=name + b"\x00" * 8, major=major, minor=minor
        )

    def _alloc(self, kind: str, size: int) -> tuple[CudaErr, int]:
        buf = (ctypes.c_uint8 * size)()
        addr = ctypes.addressof(buf)
        self.allocations[addr] = (kind, buf)
        return cudaError_t.cudaSuccess, addr

    def cudaMalloc(self, size: int) -> tuple[CudaErr, int]:
        return self._alloc("device", size)

    def cudaMallocHost(self, size: int) -> tuple[CudaErr, int]:
        return self._alloc("host", size)

    def _free(self, kind: str, addr: int) -> tuple[CudaErr]:
        if self.allocations.get(int(addr), ("", None))[0] != kind:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self.allocations[int(addr)]
        return (cudaError_t.cudaSuccess,)

    def cudaFree(self, addr: int) -> tuple[CudaErr]:
        return self._free("device", addr)

    def cudaFreeHost(self, addr: int) -> tuple[CudaErr]:
        return self._free("host", addr)

    def check_range(self, addr: int, nbytes: int, kind: str) -> None:
        """``[addr, addr + nbytes)`` must lie inside one live allocation of ``kind``."""
        for start, (k, buf) in self.allocations.items():
            if start <= addr and addr + nbytes <= start + ctypes.sizeof(buf):
                assert k == kind, f"address {addr:#x} is {k} memory, expected {kind}"
                return
        raise AssertionError(f"{kind} address {addr:#x} (+{nbytes}) is not inside a live allocation")

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: CopyKind, stream: Any) -> tuple[CudaErr]:
        src_kind, dst_kind = {
            cudaMemcpyKind.cudaMemcpyHostToDevice: ("host", "device"),
            cudaMemcpyKind.cudaMemcpyDeviceToHost: ("device", "host"),
        }[kind]
        self.check_range(int(src), count, src_kind)
        self.check_range(int(dst), count, dst_kind)
        assert self.capturing is None, "copies are not part of the captured graph"
        ctypes.memmove(int(dst), int(src), count)
        return (cudaError_t.cudaSuccess,)

    def launch(self, kernel: Any) -> None:
        """A "kernel" on the stream: run now, or record it while capturing."""
        if self.capturing is not None:
            self.capturing.append(kernel)
        else:
            kernel()

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[CudaErr, int]:
        if self.fail_stream_create:
            return cudaError_t.cudaErrorMemoryAllocation, 0
        self.streams += 1
        return cudaError_t.cudaSuccess, 0x5000 + self.streams

    def cudaStreamDestroy(self, stream: Any) -> tuple[CudaErr]:
        self.streams -= 1
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[CudaErr]:
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream: Any, mode: CaptureMode) -> tuple[CudaErr]:
        assert self.capturing is None
        self.capturing = []
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[CudaErr, Any]:
        graph, self.capturing = self.capturing, None
        self.captures += 1
        return cudaError_t.cudaSuccess, graph

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[CudaErr, Any]:
        self.graph_execs += 1
        return cudaError_t.cudaSuccess, list(graph)

    def cudaGraphDestroy(self, graph: Any) -> tuple[CudaErr]:
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec: Any) -> tuple[CudaErr]:
        self.graph_execs -= 1
        return (cudaError_t.cudaSuccess,)

    def cudaGraphLaunch(self, graph_exec: Any, stream: Any) -> tuple[CudaErr]:
        self.launches += 1
        for kernel in graph_exec:
            kernel()
        return (cudaError_t.cudaSuccess,)


# ---------------------------------------------------------------------------------------------------
# tensorrt


def _int_enum(name: str, members: dict[str, int]) -> Any:
    return enum.IntEnum(name, members)  # type: ignore[misc]  # members built at run time


def make_fake_trt(version: str, cudart: FakeCudart) -> types.ModuleType:
    """A ``tensorrt`` module of ``version`` ("10.0.1", "10.16.1.11", "11.4.0.106"...)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    trt: Any = types.ModuleType("tensorrt")
    trt.__version__ = version

    class DataType(enum.Enum):
        FLOAT = "float32"
        HALF = "float16"
        INT32 = "int32"
        INT64 = "int64"
        BOOL = "bool"
        BF16 = "bfloat16"

    trt.DataType = DataType
    trt.float32, trt.float16, trt.int32, trt.int64 = (
        DataType.FLOAT,
        DataType.HALF,
        DataType.INT32,
        DataType.INT64,
    )

    def nptype(t: DataType) -> Any:
        if t is DataType.BF16:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.dtype(t.value).type

    trt.nptype = nptype
    # Renumbered in 11 (EXPLICIT_BATCH removed): a hard-coded 1 << 1 would mean PREFER_JIT there.
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = _int_enum(
            "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0, "PREFER_JIT": 1, "PREFER_AOT": 2}
        )
        # 11 dropped FP16/INT8 but kept the other numbers (only NetworkDefinitionCreationFlag was renumbered).
        builder_flags = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "TF32": 6, "VERSION_COMPATIBLE": 12}
    else:
        trt.NetworkDefinitionCreationFlag = _int_enum(
            "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        )
        builder_flags = {
            "FP16": 0,
            "INT8": 1,
            "DEBUG": 2,
            "GPU_FALLBACK": 3,
            "REFIT": 4,
            "TF32": 6,
            "VERSION_COMPATIBLE": 12,
        }
    trt.BuilderFlag = _int_enum("BuilderFlag", builder_flags)
    parser_flags = {"NATIVE_INSTANCENORM": 0}
    if (major, minor) >= (10, 15):
        parser_flags["ENABLE_PLUGIN_OVERRIDE"] = 3
    trt.OnnxParserFlag = _int_enum("OnnxParserFlag", parser_flags)
    trt.MemoryPoolType = _int_enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.TensorIOMode = _int_enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.LayerType = _int_enum("LayerType", {"CONVOLUTION": 0, "PLUGIN_V2": 1, "PLUGIN_V3": 2, "REDUCE": 3})

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    trt.Logger = Logger
    registry = types.SimpleNamespace(plugins=set())
    trt.registry = registry  # test hook: plugin creators "registered"
    trt.cuda_init_fails = False  # test hook: Builder/Runtime raise as pybind11 does for a null factory result
    trt.context_fails = False  # test hook: create_execution_context() returns None (out of device memory)
    trt.live = weakref.WeakSet()  # test hook: Runtime, Engine and ExecutionContext objects still referenced

    class PluginRegistry:
        """``IPluginRegistry`` as the binding exposes it: ``load_library`` returns a handle, or None when the
        library does not load or any of its creators is registered already (it never raises)."""

        def __init__(self) -> None:
            self.loads: list[str] = []

        def load_library(self, path: str) -> object | None:
            self.loads.append(path)
            data = Path(path).read_bytes() if Path(path).is_file() else b""
            if not data.startswith(FAKE_PLUGIN_MAGIC) or PLUGIN_KEY in registry.plugins:
                return None
            registry.plugins.add(PLUGIN_KEY)
            return object()

        def get_creator(self, name: str, version: str, namespace: str = "") -> object | None:
            return object() if (name, version, namespace) in registry.plugins else None

    plugin_registry = PluginRegistry()
    trt.get_plugin_registry = lambda: plugin_registry

    def check_cuda_init() -> None:
        if trt.cuda_init_fails:
            raise TypeError("pybind11::init(): factory function returned nullptr")

    # -- builder side --
    @dataclass
    class Tensor:
        name: str
        dtype: DataType
        shape: tuple[int, ...]

    class Layer:
        def __init__(self, layer_type: Any) -> None:
            self.type = layer_type

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.layers: list[Layer] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    onnx_types = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64}

    class ParserError:
        """Like the binding's ParserError: ``str()`` is "In node ... : CODE: desc", ``desc()`` the description."""

        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return self.text

        def desc(self) -> str:
            return self.text.rsplit(": ", 1)[-1]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.flags: set[Any] = set()
            self.errors: list[ParserError] = []

        def set_flag(self, flag: Any) -> None:
            assert flag in trt.OnnxParserFlag
            self.flags.add(flag)

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            return self.parse(Path(path).read_bytes(), path)

        def parse(self, model_bytes: bytes, path: str | None = None) -> bool:
            import onnx

            model = onnx.load_from_string(bytes(model_bytes))
            if Builder.last is not None:
                Builder.last.parser_models.append(model)
            functions = {f.name for f in model.functions}

            def tensor(vi: Any) -> Tensor:
                dims = tuple(
                    d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
                )
                return Tensor(vi.name, onnx_types[vi.type.tensor_type.elem_type], dims)

            self.network.inputs = [tensor(v) for v in model.graph.input]
            self.network.outputs = [tensor(v) for v in model.graph.output]
            for node in model.graph.node:
                attributes = {
                    a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING
                }
                key = (
                    "CornerPool",
                    attributes.get("plugin_version", "1"),
                    attributes.get("plugin_namespace", ""),
                )
                registered = key in registry.plugins
                if node.op_type != "CornerPool":
                    self.network.layers.append(Layer(trt.LayerType.REDUCE))
                elif (major, minor) >= (10, 7) and "plugin_namespace" in attributes and registered:
                    self.network.layers.append(Layer(trt.LayerType.PLUGIN_V3))  # plugin before local function
                elif node.op_type in functions:
                    # onnx-tensorrt 10.0-10.6: a local function of the op's name is expanded before any
                    # plugin lookup.
                    self.network.layers.extend(Layer(trt.LayerType.REDUCE) for _ in range(3))
                elif registered or (
                    (major, minor) >= (10, 10) and ("CornerPool", key[1], node.domain) in registry.plugins
                ):
                    self.network.layers.append(Layer(trt.LayerType.PLUGIN_V3))  # FallbackPluginImporter
                else:
                    self.errors.append(
                        ParserError(
                            f"In node 0 with name: {node.name} and operator: CornerPool (importFallbackPluginImporter): "
                            "UNSUPPORTED_NODE: Plugin not found, are the plugin name, version, and namespace correct?"
                        )
                    )
                    return False
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return CACHE_MAGIC + version.encode() + b"|" + self.data[-16:]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: Any, mid: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set[Any] = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
            self.pools: dict[Any, int] = {}
            self.profiles: list[Profile] = []
            self.cache: TimingCache | None = None

        def set_flag(self, flag: Any) -> None:
            assert flag in trt.BuilderFlag
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            assert flag in trt.BuilderFlag
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[pool] = size

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            if data and not data.startswith(CACHE_MAGIC):
                return None  # createTimingCache() returns nullptr for a blob that is no timing cache
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data and not cache.data.startswith(CACHE_MAGIC + version.encode()):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        last: Builder | None = None

        def __init__(self, logger: Logger) -> None:
            assert cudart.current >= 0, "no current CUDA device"
            check_cuda_init()
            Builder.last = self
            self.parser_models: list[Any] = []  # test hook: the models its networks' parsers were given
            self.network: Network | None = None
            self.config: BuilderConfig | None = None

        def create_network(self, flags: int) -> Network:
            self.network = Network(flags)
            return self.network

        def create_builder_config(self) -> BuilderConfig:
            self.config = BuilderConfig()
            return self.config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            if not config.profiles:
                return None
            ((name, (lo, mid, hi)),) = config.profiles[0].shapes.items()
            plan = {
                "version": version,
                "plugins": [list(p) for p in sorted(registry.plugins)]
                if any(layer.type == trt.LayerType.PLUGIN_V3 for layer in network.layers)
                else [],
                "inputs": [[t.name, t.dtype.name] for t in network.inputs],
                "outputs": [[t.name, t.dtype.name] for t in network.outputs],
                "profile": [name, lo, mid, hi],
                "flags": sorted(f.name for f in config.flags),
            }
            if config.cache is not None:
                config.cache.data += b"timed"
            return PLAN_MAGIC + json.dumps(plan).encode()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    # -- runtime side --
    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.enqueues = 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, hi = self.engine.profile[1], self.engine.profile[3]
            shape = tuple(int(s) for s in shape)
            if name != self.engine.input or not all(
                a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)
            ):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            n, _, h, _w = self.shapes[self.engine.input]
            return {"row_mean": (n, h), "size": (n, 2)}.get(name, (-1,))

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert isinstance(stream_handle, int), "pass the stream handle as an int"
            self.enqueues += 1
            shape = self.shapes[self.engine.input]
            views = {}
            for name in self.engine.names:
                dtype = np.dtype(nptype(self.engine.dtypes[name]))
                s = shape if name == self.engine.input else self.get_tensor_shape(name)
                nbytes = int(np.prod(s)) * dtype.itemsize
                cudart.check_range(self.addresses[name], nbytes, "device")
                raw = (ctypes.c_uint8 * nbytes).from_address(self.addresses[name])
                views[name] = np.frombuffer(raw, dtype=dtype).reshape(s)

            def kernel() -> None:
                x = views[self.engine.input].astype(np.float32)
                views["row_mean"][...] = x.mean(axis=(1, 3))
                views["size"][...] = np.array(shape[2:], np.int64)

            cudart.launch(kernel)
            return True

    class Engine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.input = plan["inputs"][0][0]
            self.names = [t[0] for t in plan["inputs"] + plan["outputs"]]
            self.dtypes = {t[0]: DataType[t[1]] for t in plan["inputs"] + plan["outputs"]}
            self.profile = plan["profile"]

        num_io_tensors = property(lambda self: len(self.names))

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == self.input else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return self.dtypes[name]

        def create_execution_context(self) -> ExecutionContext | None:
            if trt.context_fails:
                return None
            context = ExecutionContext(self)
            trt.live.add(context)
            return context

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            check_cuda_init()
            trt.live.add(self)

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(PLAN_MAGIC):
                return None
            plan = json.loads(data[len(PLAN_MAGIC) :])
            if plan["version"] != version or any(tuple(p) not in registry.plugins for p in plan["plugins"]):
                return None
            engine = Engine(plan)
            trt.live.add(engine)
            return engine

    trt.Runtime = Runtime
    return trt


#: First bytes of a file the fake registry accepts as a plugin library, and what it registers.
FAKE_PLUGIN_MAGIC = b"fake CornerPool plugin"
PLUGIN_KEY = ("CornerPool", "1", "cornernet")


def install(monkeypatch: Any, trt: types.ModuleType | None, cudart: FakeCudart) -> None:
    """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` return the fakes."""
    cuda: Any = types.ModuleType("cuda")
    bindings: Any = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)


def write_fake_plugin(
    path: Path, sources_sha256: str = "a" * 64, version: str = "1", build: bytes = b"", stamp: bool = True
) -> Path:
    """A library the fake registry accepts (``build`` stands for what differs between two compilations) and, with
    ``stamp``, its identity stamp as the CMake build writes it."""
    from trt_plugins.stamp import stamp_path

    path.write_bytes(FAKE_PLUGIN_MAGIC + build)
    stamp_path(path).unlink(missing_ok=True)
    if stamp:
        name, _, namespace = PLUGIN_KEY
        identity = {
            "name": name,
            "version": version,
            "namespace": namespace,
            "sources_sha256": sources_sha256,
        }
        stamp_path(path).write_text(json.dumps({**identity, "library": path.name, "cuda": "13.0.88"}))
    return path


def tiny_onnx(path: Path, ckpt: Path, fp16: bool = False) -> Path:
    """An ONNX with our metadata: images [N,3,H,W] -> CornerPool -> row_mean [N,H], size [N,2] (the fake's network)."""
    import onnx
    from onnx import TensorProto, helper

    from export.corner_pool_onnx import add_plugin_fallback
    from runtime.backends.onnxruntime import META_KEY, PRECISION_KEY, SOURCE_CHECKPOINT_KEY, SOURCE_SHA256_KEY
    from runtime.meta import ModelMeta, sha256_file

    ckpt.write_bytes(b"weights")
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    row_mean = helper.make_tensor_value_info("row_mean", TensorProto.FLOAT, ["batch", "height"])
    size = helper.make_tensor_value_info("size", TensorProto.INT64, ["batch", 2])
    nodes = [
        helper.make_node(
            "CornerPool",
            ["images"],
            ["pooled"],
            domain="cornernet",
            mode=0,
            plugin_version="1",
            plugin_namespace="cornernet",
        ),
        helper.make_node("ReduceMean", ["pooled"], ["row_mean"], axes=[1, 3], keepdims=0),
        helper.make_node("Shape", ["images"], ["size"], start=2),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [row_mean, size]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("cornernet", 1)],
    )
    add_plugin_fallback(model, 17)  # the model-local CornerPool function every plugin export carries
    meta = ModelMeta(classes=("a", "b", "c"))
    for k, v in {
        META_KEY: meta.to_json(),
        SOURCE_CHECKPOINT_KEY: str(ckpt),
        SOURCE_SHA256_KEY: sha256_file(ckpt),
        PRECISION_KEY: "fp16" if fp16 else "fp32",
    }.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


def expected_outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake network computes for ``x``."""
    return {
        "row_mean": x.mean(axis=(1, 3)),
        "size": np.tile(np.array(x.shape[2:], np.int64), (x.shape[0], 1)),
    }


@dataclasses.dataclass
class FakeEnv:
    """The stand-ins installed, with a fake plugin library (``$CORNERNET_TRT_PLUGIN``) and a tiny ONNX model."""

    trt: Any
    cudart: FakeCudart
    plugin: Path
    onnx: Path
    tmp: Path
    logs: list[str]
    monkeypatch: Any

    def use_version(self, version: str) -> None:
        """Install a fresh fake TensorRT ``version`` (nothing registered yet: as in a new process)."""
        import runtime.cuda_env as cuda_env
        import trt_plugins

        self.trt = make_fake_trt(version, self.cudart)
        install(self.monkeypatch, self.trt, self.cudart)
        self.monkeypatch.setattr(trt_plugins, "_loaded", None)
        self.monkeypatch.setattr(cuda_env, "_LOGGER", None)

    def build(self, options: Any = None, model: Path | None = None, out: str = "m.plan") -> tuple[Path, Any]:
        """``export.trt_build.build`` with the fakes (default: batch 2, a timing cache in ``tmp/cache``)."""
        from export.trt_build import BuildOptions, build

        options = options or BuildOptions(batch=2, timing_cache=self.tmp / "cache" / "t.cache")
        return build(model or self.onnx, self.tmp / out, options, log=self.logs.append)


def make_fake_env(version: str, monkeypatch: Any, tmp_path: Path) -> FakeEnv:
    """A :class:`FakeEnv` of TensorRT ``version``; a real plugin build output is never found."""
    import trt_plugins

    plugin = write_fake_plugin(tmp_path / "libcornerpool_trt.so")
    monkeypatch.setenv(trt_plugins.ENV_PLUGIN_LIBRARY, str(plugin))
    monkeypatch.setattr(
        trt_plugins, "default_library", lambda: tmp_path / "default-build" / "libcornerpool_trt.so"
    )
    env = FakeEnv(
        None,
        FakeCudart(),
        plugin,
        tiny_onnx(tmp_path / "tiny.onnx", tmp_path / "tiny.pth"),
        tmp_path,
        [],
        monkeypatch,
    )
    env.use_version(version)
    return env
