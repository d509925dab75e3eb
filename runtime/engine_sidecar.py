"""The TensorRT engine sidecar (``NAME.plan.json``) and the compatibility checks over it.

An engine is only valid with the TensorRT version, the GPU model and the plugin library it was built
with, so ``NAME.plan`` travels with ``NAME.plan.json`` (:class:`Sidecar`): classes, normalisation and
test settings, the shape profile, precision, versions, GPU, the plugin's identity (name, version,
namespace, sources hash) and the source checkpoint with its sha256. Everything here is plain Python
(tested on CPU); each check raises a one-line ``UserError`` that says how to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic_write import write_text_atomic
from runtime.errors import UserError
from runtime.meta import ModelMeta
from trt_plugins.stamp import PluginIdentity

SIDECAR_FORMAT = "cornernet-deploy/tensorrt-engine"
SIDECAR_VERSION = 2  # 2: the plugin is identified by name, version, namespace and sources hash
PRECISIONS = ("fp32", "fp16", "int8")


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
                    f"min {fmt_shape(self.min)}, opt {fmt_shape(self.opt)}, max {fmt_shape(self.max)}; fix --min/--opt/--max/--batch"
                )


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as TensorRT cares about it: engines are specific to the compute capability."""

    name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


@dataclass(frozen=True)
class PluginInfo:
    """The plugin the engine was built with and how many plugin layers it has.

    ``library`` is where it was at build time (a place to look for it); it is identified by TensorRT's creator key
    (``name``, ``version``, ``namespace``) and the hash of the sources it was built from (its stamp,
    :mod:`trt_plugins.stamp`), not by the library's bytes, so the same sources rebuilt elsewhere are accepted.
    """

    library: str
    name: str
    version: str
    namespace: str
    sources_sha256: str
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
    precision: str  # "fp32", "fp16" or "int8"
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
                meta=ModelMeta.from_dict(d["meta"], where),
                tensorrt_version=str(d["tensorrt"]["version"]),
                gpu=GpuInfo(str(d["gpu"]["name"]), str(d["gpu"]["compute_capability"])),
                plugin=None
                if d.get("plugin") is None
                else PluginInfo(
                    library=str(d["plugin"]["library"]),
                    name=str(d["plugin"]["name"]),
                    version=str(d["plugin"]["version"]),
                    namespace=str(d["plugin"]["namespace"]),
                    sources_sha256=str(d["plugin"]["sources_sha256"]),
                    layers=int(d["plugin"]["layers"]),
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
                f"{where}: unknown precision {sidecar.precision!r} (expected fp32, fp16 or int8); rebuild the engine with python -m export.to_trt"
            )
        try:
            sidecar.profile.validate()
        except UserError as e:
            raise UserError(f"{where}: {e}; rebuild the engine with python -m export.to_trt") from None
        return sidecar

    def write(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n", "choose another --out")

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
        if self.precision == "int8":  # from the int8 ONNX: a checkpoint would need calibrating again
            src = self.source.onnx
        parts = ["python -m export.to_trt", src, "--out", str(engine)]
        if self.precision in ("fp16", "int8"):
            parts.append(f"--{self.precision}")
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


def fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


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
            f"{where}: input must be [N, 3, H, W] like the profile {fmt_shape(hi)}, got shape {fmt_shape(shape)}"
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
            f"{where}: input {fmt_shape(shape)} is smaller than the engine's minimum {fmt_shape(lo)}; rebuild with {rebuild} --min {need}"
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


def check_plugin(
    sidecar: Sidecar, library: str, loaded: PluginIdentity | None, where: str, rebuild: str
) -> str | None:
    """Is the plugin library ``library`` the one the engine's plugin layers were built with?

    Args:
        library: the library found for this process (its path, for messages).
        loaded: its identity (read from its stamp), or ``None`` when it has no stamp.

    Returns:
        A warning when it cannot be told (no stamp) or the sources differ (the kernels may compute differently);
        ``None`` when it is the same plugin built from the same sources, wherever and by whichever compiler.

    Raises:
        UserError: another plugin (name or namespace) or another plugin version.
    """
    built = sidecar.plugin
    if built is None or built.layers == 0:
        return None
    fix = f"build the plugin from the engine's sources with python -m trt_plugins.build, or rebuild the engine with {rebuild}"
    if loaded is None:
        return (
            f"{where}: the plugin library {library} has no identity stamp {Path(library).name}.json, so it cannot be "
            f"checked against the engine's ({built.name} v{built.version}, sources {built.sources_sha256[:12]}); {fix}"
        )
    if (loaded.name, loaded.namespace) != (built.name, built.namespace):
        raise UserError(
            f"{where}: built with plugin {built.namespace}::{built.name}, but {library} is {loaded.namespace}::{loaded.name}; "
            "pass the CornerPool library with --plugin PATH"
        )
    if loaded.version != built.version:
        raise UserError(
            f"{where}: built with {built.name} plugin version {built.version}, {library} is version {loaded.version}; "
            f"use a library of version {built.version} (--plugin PATH) or rebuild the engine with {rebuild}"
        )
    if loaded.sources_sha256 != built.sources_sha256:
        return (
            f"{where}: built with plugin sources {built.sources_sha256[:12]}, {library} was built from other sources "
            f"({loaded.sources_sha256[:12]}); it may compute differently: {fix}"
        )
    return None


def check_engine_file(sidecar: Sidecar, engine: Path, size: int) -> None:
    """The sidecar must describe this engine file (cheap check: its size in bytes)."""
    if sidecar.engine_bytes != size:
        raise UserError(
            f"{engine}: is {size} bytes but its sidecar {sidecar_path(engine).name} describes a {sidecar.engine_bytes}-byte engine "
            f"({sidecar.engine_file}); the two do not belong together: rebuild with {sidecar.rebuild_command(engine)}"
        )
