"""Build a TensorRT engine ``NAME.plan`` and its sidecar ``NAME.plan.json`` from a checkpoint or an ONNX file.

Steps (:func:`build`): export the ONNX (:func:`export.onnx_export.export_onnx`, CornerPool as plugin nodes) unless
given one; register the CornerPool plugin (built first if needed, :func:`_plugin`); parse with ``trt.OnnxParser``; build with
one optimisation profile over ``[N, 3, H, W]``; write the plan, the timing cache and the sidecar
(:class:`runtime.engine_sidecar.Sidecar`); load the engine once and run it (smoke check).

Everything that differs between TensorRT 10.x and 11.x sits in the small ``_``-functions below, each saying
which version does what (``../shared/reference/tensorrt_onnx.md`` §1.5, §4). Enum members are used by
name, never by number (11.x renumbered them). TensorRT, cuda-python and torch are imported lazily.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic_write import write_bytes_atomic
from runtime.backends.onnxruntime import (
    EXPORT_KEY,
    META_KEY,
    PRECISION_KEY,
    SOURCE_CHECKPOINT_KEY,
    SOURCE_SHA256_KEY,
    read_onnx_metadata,
)
from runtime.cuda_env import (
    gpu_info,
    import_cudart,
    import_tensorrt,
    numpy_dtype,
    select_cuda_device,
    trt_logger,
)
from runtime.engine_sidecar import (
    GpuInfo,
    PluginInfo,
    ShapeProfile,
    Sidecar,
    SourceInfo,
    TensorSpec,
    sidecar_path,
)
from runtime.errors import UserError
from runtime.meta import ModelMeta, sha256_file
from trt_plugins.stamp import PluginIdentity

# Default shape profile (H x W of the padded input). mmdet pads each side to the next 128 m - 1
# (``h | 127``); every COCO val2017 image is at most 640 px a side, so padded sides are at most 767.
# The most common COCO image, 480x640 (landscape), pads to 511x767: the shape TensorRT tunes for.
DEFAULT_MIN_HW = (127, 127)
DEFAULT_OPT_HW = (511, 767)
DEFAULT_MAX_HW = (767, 767)
CHECKPOINT_SUFFIXES = (".pth", ".pt")
ENGINE_SUFFIXES = (".plan", ".engine")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class BuildOptions:
    """What ``python -m export.to_trt`` lets you choose.

    Attributes:
        fp16: fp16 engine (TensorRT 10: ``BuilderFlag.FP16``; 11: built from an fp16 ONNX).
        int8: int8 engine from an int8 Q/DQ ONNX (``export.quantize``), strongly typed on 10.x and 11.x.
        tf32: let fp32 layers use TF32 (faster on Ampere and newer, ~1e-3 relative error); off by default.
        batch: maximum batch; the profile tunes for it (``opt`` batch = ``max`` batch).
        min_hw, opt_hw, max_hw: input ``(H, W)`` range of the profile.
        workspace_mib: builder workspace limit (``None``: TensorRT's default, the device memory).
        timing_cache: timing cache file (``None``: :func:`default_timing_cache`); ``use_timing_cache=False`` disables it.
        outputs: ``"proposals"`` (8 small tensors) or ``"heads"`` (raw maps, for debugging).
        device: ``"cuda"`` or ``"cuda:N"``.
        plugin: a prebuilt CornerPool plugin library; default ``$CORNERNET_TRT_PLUGIN``, else the one of
            ``python -m trt_plugins.build``, built first when missing or older than its sources.
        check: load the built engine and run it once on a zero image.
    """

    fp16: bool = False
    int8: bool = False
    batch: int = 1
    min_hw: tuple[int, int] = DEFAULT_MIN_HW
    opt_hw: tuple[int, int] = DEFAULT_OPT_HW
    max_hw: tuple[int, int] = DEFAULT_MAX_HW
    tf32: bool = False
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    use_timing_cache: bool = True
    outputs: str = "proposals"
    opset: int = 18
    device: str | None = None
    verbose: bool = False
    check: bool = True
    plugin: Path | None = None

    def profile(self, input_name: str, channels: int = 3) -> ShapeProfile:
        """The optimisation profile: batch 1..``batch`` (tuned at ``batch``), ``H x W`` from min to max."""
        p = ShapeProfile(
            input_name,
            (1, channels, *self.min_hw),
            (self.batch, channels, *self.opt_hw),
            (self.batch, channels, *self.max_hw),
        )
        p.validate()
        return p

    def validate(self) -> None:
        if self.batch < 1:
            raise UserError(f"--batch {self.batch}: must be at least 1")
        if self.int8 and self.fp16:
            raise UserError("--int8 and --fp16: choose one (the int8 ONNX fixes every layer's precision itself)")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UserError(f"--workspace {self.workspace_mib}: must be at least 1 MiB")
        if self.outputs not in ("proposals", "heads"):
            raise UserError(f"--outputs {self.outputs}: choose proposals or heads")
        if min(self.min_hw) < DEFAULT_MIN_HW[0]:
            # Padded inputs are never smaller, and smaller maps can hold fewer corners than the exported
            # TopK's K (100), which TensorRT refuses.
            raise UserError(
                f"--min {self.min_hw[0]}x{self.min_hw[1]}: sides must be at least {DEFAULT_MIN_HW[0]} "
                "(every input is padded to 128 m - 1 pixels a side)"
            )
        self.profile("input")


def parse_hw(text: str, flag: str = "--max") -> tuple[int, int]:
    """``"511x767"`` -> ``(511, 767)``; a single number means a square. ``UserError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise UserError(f"{flag} {text}: expected HxW in pixels, e.g. {flag} 767x767")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h < 1 or w < 1:
        raise UserError(f"{flag} {text}: sides must be at least 1 pixel")
    return h, w


def default_engine_path(model: Path, fp16: bool) -> Path:
    """``ckpt.pth`` -> ``ckpt.plan`` (``ckpt.fp16.plan`` with ``--fp16``), next to the model."""
    return model.with_name(model.stem + (".fp16.plan" if fp16 else ".plan"))


def default_timing_cache(trt_version: str, gpu: GpuInfo) -> Path:
    """``~/.cache/cornernet/trt-<version>-<gpu>-sm<cc>.timing-cache``: shared by all builds on this GPU model."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cornernet"
    gpu_slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower() or "gpu"
    return root / f"trt-{trt_version}-{gpu_slug}-sm{gpu.compute_capability.replace('.', '')}.timing-cache"


# ---------------------------------------------------------------------------------------------------
# Version-sensitive TensorRT calls (10.x vs 11.x). Keep each one small and say who does what.


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _has_fp16_flag(trt: Any) -> bool:
    """TRT 10.x has ``BuilderFlag.FP16`` (weak typing); TRT 11.x removed it (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16")


def _set_fp16(config: Any, trt: Any) -> bool:
    """Allow fp16 kernels. TRT 10.x: ``BuilderFlag.FP16`` on a weakly typed network, True.

    TRT 11.x: the flag is gone, precision comes from the network's own types, so the caller builds from an
    fp16 ONNX (``export/fp16.py``) instead; returns False.
    """
    if not hasattr(trt.BuilderFlag, "FP16"):
        return False
    config.set_flag(trt.BuilderFlag.FP16)
    return True


def _set_tf32(config: Any, trt: Any, allow: bool) -> None:
    """TF32 for fp32 layers: on by default in 10.x and 11.x (``BuilderFlag.TF32``, in both). We clear it unless
    asked, so that an fp32 engine computes in fp32 like the PyTorch reference (TF32 rounds inputs to 10 bits)."""
    if allow:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)


def _create_network(builder: Any, trt: Any, strongly_typed: bool) -> Any:
    """An explicit-batch network definition.

    TRT 10.x: explicit batch is the only mode (``EXPLICIT_BATCH`` is deprecated and ignored, so never set).
    ``STRONGLY_TYPED`` makes the ONNX's own tensor types binding: used for an fp16 ONNX, where the weakly
    typed builder would otherwise be free to run its layers in fp32.
    TRT 11.x: every network is strongly typed and ``STRONGLY_TYPED`` is deprecated and ignored: pass no flag.
    """
    flags = 0
    if (
        strongly_typed
        and _trt_major(trt) < 11
        and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    ):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def _set_workspace(config: Any, trt: Any, mib: int) -> None:
    """Builder scratch memory limit. 10.x and 11.x: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``
    (``max_workspace_size`` was removed in 10)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(mib) * 2**20)


def _count_plugin_layers(network: Any, trt: Any) -> int:
    """Number of IPluginV3 layers (our CornerPool; ``LayerType.PLUGIN_V3`` exists in 10.x and 11.x)."""
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3)


def _tensor_spec(tensor: Any, trt: Any) -> TensorSpec:
    return TensorSpec(
        str(tensor.name),
        numpy_dtype(trt, tensor.dtype, tensor.name).name,
        tuple(int(d) for d in tensor.shape),
    )


def _load_timing_cache(config: Any, path: Path | None, log: Log) -> Any:
    """Start from ``path``'s timing cache if it is there and matches this TensorRT/GPU; else from an empty one."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)  # None when `data` is not a timing cache at all
    if cache is not None and config.set_timing_cache(cache, False):
        if data:
            log(f"timing   cache {path} ({len(data)} bytes)")
        return cache
    log(f"warning: timing cache {path} is unreadable or from another TensorRT/GPU; starting an empty one")
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _plugin(explicit: Path | None, log: Log) -> tuple[str, PluginIdentity]:
    """The CornerPool library to build with, registered with TensorRT, and its identity (for the sidecar).

    ``--plugin`` or ``$CORNERNET_TRT_PLUGIN`` is used as given; otherwise the library of
    ``python -m trt_plugins.build`` is (re)built first when missing or older than its sources: this and
    ``python -m trt_plugins.build`` are the only steps that compile.
    """
    import trt_plugins
    from trt_plugins import build as plugin_build
    from trt_plugins.stamp import read_identity

    if explicit is not None or os.environ.get(trt_plugins.ENV_PLUGIN_LIBRARY):
        library = str(trt_plugins.find_library(explicit))
    else:
        library = str(plugin_build.ensure_plugin_library(log=log))
    library = trt_plugins.load(library)  # the one registered, should this process have loaded another earlier
    identity = read_identity(library)
    if identity is None:
        raise UserError(
            f"{library}: no identity stamp {Path(library).name}.json next to it, so engines built with it could not "
            f"be checked when loaded; build the plugin with {plugin_build.BUILD_COMMAND} (it writes both)"
        )
    key = f"{identity.namespace}::{identity.name} v{identity.version}"
    log(f"plugin   {library} ({key}, sources {identity.sources_sha256[:12]})")
    return library, identity


def _parse_onnx(parser: Any, onnx_path: Path) -> int:
    """Parse ``onnx_path`` without its CornerPool fallback function, so that every CornerPool node becomes a
    plugin layer on every TensorRT version; returns the number of CornerPool nodes."""
    import onnx

    from export.corner_pool_onnx import corner_pool_nodes, drop_fallback_function

    # External data (if any) stays on disk; the parser resolves it relative to `path`.
    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = len(corner_pool_nodes(model))
    drop_fallback_function(model)
    if parser.parse(model.SerializeToString(), str(onnx_path)):
        return nodes
    errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
    hint = ""
    if any("Plugin not found" in e or "CornerPool" in e for e in errors):
        hint = " (the CornerPool plugin is not registered: check python -m trt_plugins.build)"
    first = errors[0].splitlines()[0][:300] if errors else "no error recorded"
    raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s){hint}: {first}")


def _parser_error_text(error: Any) -> str:
    """An ``IParserError`` as text: its ``str`` (node, code, description), else ``desc()``."""
    text = str(error).strip()
    if text.startswith("<") and hasattr(error, "desc"):  # a bare pybind repr
        text = str(error.desc()).strip()
    return text


def _check_static_dims(spec: TensorSpec, profile: ShapeProfile) -> None:
    """A static ONNX axis must have min = opt = max = its size."""
    if len(spec.shape) != len(profile.max):
        raise UserError(f"ONNX input '{spec.name}' has shape {list(spec.shape)}; expected [N, 3, H, W]")
    for axis, (d, lo, mid, hi) in enumerate(
        zip(spec.shape, profile.min, profile.opt, profile.max, strict=True)
    ):
        if d >= 0 and not lo == mid == hi == d:
            raise UserError(
                f"ONNX input '{spec.name}' has a fixed size {d} on axis {axis} (shape {list(spec.shape)}) but the profile asks "
                f"{lo}..{hi}; re-export with dynamic shapes or make --min/--opt/--max/--batch match"
            )


# ---------------------------------------------------------------------------------------------------
# ONNX side


def onnx_paths(engine: Path) -> tuple[Path, Path]:
    """Where the intermediate ONNX files go: ``NAME.onnx`` (fp32) and ``NAME.fp16.onnx``, next to the engine."""
    base = engine.name[: -len(engine.suffix)] if engine.suffix else engine.name
    base = base.removesuffix(".fp16")
    return engine.with_name(base + ".onnx"), engine.with_name(base + ".fp16.onnx")


def _export_onnx(checkpoint: Path, engine: Path, options: BuildOptions, fp16: bool, log: Log) -> Path:
    """Checkpoint -> ONNX with CornerPool plugin nodes (+ local-function fallback); the fp16 variant for TRT 11."""
    from export.onnx_export import export_onnx

    out = onnx_paths(engine)[1 if fp16 else 0]
    log(f"export   {checkpoint} -> {out}{' (fp16)' if fp16 else ''}")
    return Path(
        export_onnx(
            checkpoint, out, outputs=options.outputs, corner_pool="plugin", opset=options.opset, fp16=fp16
        )
    )


def _fp16_onnx(src: Path, out: Path, log: Log) -> Path:
    """fp32 ONNX file -> fp16 ONNX file with fp32 inputs/outputs (``export/fp16.py``), for TRT 11 strong typing."""
    import onnx

    from export.fp16 import convert_to_fp16
    from export.onnx_export import save_atomic

    log(f"fp16     {src} -> {out}")
    model = convert_to_fp16(onnx.load(str(src)))  # also sets the precision metadata to fp16
    save_atomic(model, out)
    return out


def _resolve_onnx(
    model: Path, engine: Path, options: BuildOptions, fp16_onnx: bool, log: Log
) -> tuple[Path, str | None, str | None]:
    """The ONNX to parse (exported or converted when needed) and the source checkpoint's path and sha256."""
    if model.suffix.lower() != ".onnx":
        return _export_onnx(model, engine, options, fp16_onnx, log), str(model.resolve()), sha256_file(model)
    _, props = _onnx_meta(model)
    onnx_path = model
    if fp16_onnx and props.get(PRECISION_KEY, "fp32") != "fp16":
        onnx_path = _fp16_onnx(model, onnx_paths(engine)[1], log)
    return onnx_path, props.get(SOURCE_CHECKPOINT_KEY), props.get(SOURCE_SHA256_KEY)


def _check_int8_source(model: Path) -> None:
    """``--int8`` builds from an int8 Q/DQ ONNX (``export.quantize``): one-line ``UserError`` for anything else."""
    precision = _onnx_meta(model)[1].get(PRECISION_KEY, "fp32") if model.suffix.lower() == ".onnx" else None
    if precision != "int8":
        onnx_hint = model if precision else f"{model.with_suffix('.onnx')} (python -m export.to_onnx {model})"
        raise UserError(
            f"{model}: --int8 builds from an int8 ONNX; make one with python -m export.quantize {onnx_hint} "
            "--calib DATA, then pass MODEL.int8.onnx"
        )


def _onnx_meta(onnx_path: Path) -> tuple[ModelMeta, dict[str, str]]:
    props = read_onnx_metadata(onnx_path)
    if META_KEY not in props:
        raise UserError(
            f"{onnx_path}: no '{META_KEY}' metadata, so it was not exported by cornernet-deploy; "
            "pass the checkpoint instead, or export it with python -m export.to_onnx"
        )
    return ModelMeta.from_json(props[META_KEY], f"{onnx_path} metadata"), props


# ---------------------------------------------------------------------------------------------------
# The build


def build(
    model: str | Path, out: str | Path | None = None, options: BuildOptions | None = None, log: Log = _stderr
) -> tuple[Path, Sidecar]:
    """Checkpoint (``.pth``) or ONNX -> ``NAME.plan`` + ``NAME.plan.json``. Returns the engine path and its sidecar.

    Raises:
        UserError: bad options or input, TensorRT/GPU/plugin missing, parse or build failure (one line, with the fix).
    """
    options = options or BuildOptions()
    options.validate()
    model = Path(model)
    suffix = model.suffix.lower()
    if suffix not in (*CHECKPOINT_SUFFIXES, ".onnx"):
        raise UserError(
            f"{model}: expected a checkpoint (.pth) or an ONNX file (.onnx), got '{model.suffix}'"
        )
    if not model.is_file():
        raise UserError(f"{model}: not found; check the path")
    if options.int8:
        _check_int8_source(model)
    engine = Path(out) if out else default_engine_path(model, options.fp16)
    if engine.suffix.lower() not in ENGINE_SUFFIXES:
        raise UserError(
            f"--out {engine}: an engine file must end in .plan or .engine (that is how runtime tools recognise it)"
        )
    try:
        engine.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"--out {engine}: cannot create {engine.parent} ({e.strerror}); choose another --out"
        ) from None
    if not os.access(engine.parent, os.W_OK):
        raise UserError(f"--out {engine}: cannot write to {engine.parent}; choose another --out")

    trt = import_tensorrt()
    cudart = import_cudart()
    device = select_cuda_device(cudart, options.device)
    gpu = gpu_info(cudart, device)
    log(
        f"tensorrt {trt.__version__} on cuda:{device} {gpu.name} (compute capability {gpu.compute_capability})"
    )

    # fp16: TRT 10 sets a builder flag on the fp32 ONNX; TRT 11 needs an fp16 ONNX (strongly typed).
    fp16_by_flag = options.fp16 and _has_fp16_flag(trt)
    onnx_path, source_ckpt, source_sha = _resolve_onnx(
        model, engine, options, options.fp16 and not fp16_by_flag, log
    )
    meta, props = _onnx_meta(onnx_path)
    fp16_onnx = props.get(PRECISION_KEY, "fp32") == "fp16"
    int8_onnx = props.get(PRECISION_KEY, "fp32") == "int8"
    precision = "int8" if int8_onnx else "fp16" if options.fp16 or fp16_onnx else "fp32"

    plugin_lib, plugin_id = _plugin(options.plugin, log)

    logger = trt_logger(trt, options.verbose)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # pybind11: "factory function returned nullptr" when CUDA cannot initialise
        raise UserError(
            "TensorRT could not create a builder (CUDA initialisation failed; see its log above)"
        ) from None
    # Q/DQ (explicit quantization) is built strongly typed, with no precision flags, on 10.x as on 11.x.
    network = _create_network(builder, trt, strongly_typed=fp16_onnx or int8_onnx)
    parser = trt.OnnxParser(network, logger)
    log(f"parse    {onnx_path}")
    pool_nodes = _parse_onnx(parser, onnx_path)
    if network.num_inputs != 1:
        raise UserError(
            f"{onnx_path}: has {network.num_inputs} inputs; expected one image input [N, 3, H, W]"
        )
    inputs = (_tensor_spec(network.get_input(0), trt),)
    outputs = tuple(_tensor_spec(network.get_output(i), trt) for i in range(network.num_outputs))
    channels = inputs[0].shape[1] if len(inputs[0].shape) == 4 and inputs[0].shape[1] > 0 else 3
    profile = options.profile(inputs[0].name, channels)
    _check_static_dims(inputs[0], profile)
    plugin_layers = _count_plugin_layers(network, trt)
    if plugin_layers != pool_nodes:
        raise UserError(
            f"{onnx_path}: TensorRT made {plugin_layers} plugin layers of {pool_nodes} CornerPool nodes; "
            "rebuild the plugin (python -m trt_plugins.build) and report this with --verbose output"
        )
    if pool_nodes == 0:
        log(
            f"warning: {onnx_path} has no CornerPool nodes (exported with --corner-pool decomposed?): "
            "standard ops instead of the plugin are slower"
        )

    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        _set_workspace(config, trt, options.workspace_mib)
    _set_tf32(config, trt, options.tf32)
    if fp16_by_flag and not fp16_onnx:
        _set_fp16(config, trt)
    cache_path: Path | None = None
    if options.use_timing_cache:
        cache_path = options.timing_cache or default_timing_cache(str(trt.__version__), gpu)
        _load_timing_cache(config, cache_path, log)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(trt_profile) < 0:
        raise UserError(
            f"TensorRT rejected the shape profile min {profile.min} opt {profile.opt} max {profile.max}; fix --min/--opt/--max"
        )

    log(
        f"build    {precision}, batch <= {options.batch}, HxW {format_hw(options.min_hw)} .. {format_hw(options.max_hw)} (tuned for {format_hw(options.opt_hw)})"
    )
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise UserError("TensorRT could not build the engine (see its log above; rerun with --verbose)")
    data = memoryview(plan).cast("B")
    write_bytes_atomic(engine, data, "choose another --out")
    if cache_path is not None:
        write_bytes_atomic(cache_path, memoryview(config.get_timing_cache().serialize()).cast("B"))

    sidecar = Sidecar(
        engine_file=engine.name,
        engine_bytes=data.nbytes,
        engine_sha256=_sha256_bytes(data),
        precision=precision,
        inputs=inputs,
        outputs=outputs,
        profile=profile,
        meta=meta,
        tensorrt_version=str(trt.__version__),
        gpu=gpu,
        plugin=PluginInfo(
            plugin_lib,
            plugin_id.name,
            plugin_id.version,
            plugin_id.namespace,
            plugin_id.sources_sha256,
            plugin_layers,
        ),
        source=SourceInfo(source_ckpt, source_sha, str(onnx_path.resolve()), sha256_file(onnx_path)),
        build={
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 1),
            "options": _options_dict(options),
            "fp16_method": None if precision != "fp16" else ("fp16_onnx" if fp16_onnx else "builder_flag"),
            "strongly_typed": fp16_onnx or int8_onnx or _trt_major(trt) >= 11,
            "timing_cache": None if cache_path is None else str(cache_path),
            "export": json.loads(props[EXPORT_KEY]) if EXPORT_KEY in props else None,
        },
    )
    sidecar.write(sidecar_path(engine))
    log(f"wrote    {engine} ({data.nbytes / 2**20:.1f} MiB, {seconds:.0f} s) + {sidecar_path(engine).name}")
    if options.check:
        smoke_check(engine, options.device, log)
    return engine, sidecar


def smoke_check(engine: Path, device: str | None, log: Log = _stderr) -> None:
    """Load the engine through the runtime backend and run one zero image at the profile's opt shape."""
    from runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(engine, device=device)
    try:
        opt = backend.profile.opt
        outs = backend.infer(np.zeros((1, *opt[1:]), np.float32))
    finally:
        backend.close()
    bad = [n for n, a in outs.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if bad:
        raise UserError(
            f"{engine}: runs but outputs {', '.join(bad)} hold NaN/Inf on a zero image; rebuild without --fp16 or report a bug"
        )
    log(
        f"checked  {engine.name} loads and runs (1x{format_hw(opt[2:])}): {', '.join(f'{n} {list(a.shape)}' for n, a in outs.items())}"
    )


def format_hw(hw: tuple[int, ...]) -> str:
    """``(511, 767)`` -> ``"511x767"`` (the ``--min/--opt/--max`` notation)."""
    return f"{hw[0]}x{hw[1]}"


def _sha256_bytes(data: memoryview) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _options_dict(options: BuildOptions) -> dict[str, Any]:
    d = asdict(options)
    d["timing_cache"] = None if options.timing_cache is None else str(options.timing_cache)
    d["plugin"] = None if options.plugin is None else str(options.plugin)
    for k in ("min_hw", "opt_hw", "max_hw"):
        d[k] = list(d[k])
    return d
