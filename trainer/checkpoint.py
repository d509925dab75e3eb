"""Checkpoints: our self-describing format, and MMDetection 2.x / 3.x checkpoints, through one loader.

Our format (``format_version`` 1) is a ``torch.save``d dict::

    {
      "format": "cornernet-deploy", "format_version": 1,
      "model_config": ModelConfig.to_dict(),     # architecture
      "meta": ModelMeta.to_dict(),               # classes, normalisation, test settings
      "state_dict": {...},                       # mmdet key names: backbone.*, bbox_head.*
      # training checkpoints (trainer/loop.py) also carry: optimizer, scheduler, scaler, epoch, iteration,
      # rng (per rank), sampler (data position), log_window, metrics, eval_iteration, world_size,
      # train_config, torch_version
    }

mmdet checkpoints are ``{'meta': ..., 'state_dict': ...}``: class names from ``meta['CLASSES']`` (2.x) or
``meta['dataset_meta']['classes']`` (3.x), architecture and test settings from the embedded config text
(``meta['config']`` 2.x, ``meta['cfg']`` 3.x) read without executing it, HG-104 defaults otherwise.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from runtime.atomic_write import atomic_write
from runtime.errors import UserError
from runtime.meta import COCO_CLASSES, ModelMeta, TestConfig, sha256_file  # noqa: F401 - re-exported

from . import mmdet_config
from .model import CornerNet, ModelConfig

FORMAT = "cornernet-deploy"
FORMAT_VERSION = 1
_HEAT_KEY = "bbox_head.tl_heat.0.1.conv.weight"  # [num_classes, 256, 1, 1]


@dataclass
class Checkpoint:
    """A loaded checkpoint, whatever its origin."""

    path: str
    model_config: ModelConfig
    meta: ModelMeta
    state_dict: dict[str, Tensor]
    source: str  # "cornernet-deploy", "mmdet2", "mmdet3" or "state_dict"
    extra: dict[str, Any] = field(default_factory=dict)  # training state of our checkpoints


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: checkpoint file is empty; re-download or re-save it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first_error = e
    # torch.save writes a zip: a zip header without a readable central directory is a cut-short file.
    if _starts_with(path, b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: truncated checkpoint ({path.stat().st_size} bytes, the end of the zip archive is missing); re-download or re-save it"
        )
    # mmengine checkpoints may carry numpy objects (message hub, RNG) that weights_only refuses.
    if not zipfile.is_zipfile(path) and not _looks_like_legacy_pickle(path):
        raise UserError(
            f"{path}: not a PyTorch checkpoint ({type(first_error).__name__}); pass a .pth saved by torch.save"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {str(e)[:120]}); the file is truncated or corrupt, re-download or re-save it"
        ) from None
    warnings.warn(
        f"{path}: contains Python objects beyond tensors; loaded with full unpickling (load only checkpoints you trust)",
        stacklevel=3,
    )
    return obj


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _looks_like_legacy_pickle(path: Path) -> bool:
    return _starts_with(path, b"\x80")


def _strip_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix DDP adds, and non-model buffers mmdet may store."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith("data_preprocessor."):
            continue
        out[k] = v
    return out


def _num_classes_in(state_dict: dict[str, Tensor]) -> int | None:
    w = state_dict.get(_HEAT_KEY)
    return int(w.shape[0]) if isinstance(w, Tensor) else None


def _resolve_classes(path: Path, classes: tuple[str, ...] | None, num_classes: int) -> tuple[str, ...]:
    if classes is None:
        return (
            COCO_CLASSES
            if num_classes == len(COCO_CLASSES)
            else tuple(f"class{i}" for i in range(num_classes))
        )
    if len(classes) != num_classes:
        raise UserError(
            f"{path}: checkpoint names {len(classes)} classes but its heads predict {num_classes}; the file mixes two models, re-export it"
        )
    return tuple(classes)


def _from_mmdet(path: Path, obj: dict[str, Any]) -> Checkpoint:
    meta = obj.get("meta") or {}
    state_dict = _strip_prefix(obj["state_dict"])
    text = meta.get("cfg") or meta.get("config")
    cfg: dict[str, Any] = {}
    if isinstance(text, str) and text.strip():
        try:
            cfg = mmdet_config.parse_config_text(text)
        except SyntaxError as e:
            raise UserError(
                f"{path}: the config text embedded in the checkpoint is not valid Python ({e.msg}, line {e.lineno})"
            ) from None
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if classes is None and cfg:
        classes = mmdet_config.classes_from_mmdet_config(cfg)
    try:
        model_config = mmdet_config.model_config_from_mmdet(cfg, num_classes=_num_classes_in(state_dict))
        test_cfg = mmdet_config.test_config_from_mmdet(cfg) if cfg else TestConfig()
        mean, std = mmdet_config.normalization_from_mmdet(cfg)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    source = "mmdet3" if "cfg" in meta or "dataset_meta" in meta else "mmdet2"
    model_meta = ModelMeta(
        classes=_resolve_classes(path, tuple(classes) if classes else None, model_config.num_classes),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        test_cfg=test_cfg,
    )
    return Checkpoint(str(path), model_config, model_meta, state_dict, source)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load our checkpoint, an mmdet 2.x/3.x checkpoint, or a bare mmdet-keyed state_dict (on CPU)."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: holds a {type(obj).__name__}, not a checkpoint dict; pass a CornerNet checkpoint"
        )
    if obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(
                f"{path}: checkpoint format_version {version} is not supported by this version ({FORMAT_VERSION}); upgrade cornernet-deploy"
            )
        state_dict = _strip_prefix(obj["state_dict"])
        extra = {
            k: v
            for k, v in obj.items()
            if k not in ("format", "format_version", "model_config", "meta", "state_dict")
        }
        return Checkpoint(
            str(path),
            ModelConfig.from_dict(obj["model_config"]),
            ModelMeta.from_dict(obj["meta"]),
            state_dict,
            FORMAT,
            extra,
        )
    if isinstance(obj.get("state_dict"), dict):
        return _from_mmdet(path, obj)
    if any(isinstance(k, str) and k.startswith(("backbone.", "module.backbone.")) for k in obj):
        return _from_mmdet(path, {"state_dict": obj})
    keys = ", ".join(list(map(str, obj))[:5])
    raise UserError(
        f"{path}: no 'state_dict' and no backbone.* weights (keys: {keys}); pass a CornerNet checkpoint from mmdet or cornernet-deploy"
    )


def _short(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, Tensor], path: str) -> None:
    """Strict load; any mismatch becomes one line listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing [{_short(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected [{_short(unexpected)}]")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped [{_short(misshaped, 2)}]")
        raise UserError(
            f"{path}: weights do not fit the CornerNet it describes: {'; '.join(parts)}; check the checkpoint is a CornerNet of this architecture"
        )
    model.load_state_dict(state_dict, strict=True)


def build_model(ckpt: Checkpoint, device: str | torch.device = "cpu") -> CornerNet:
    """The CornerNet a checkpoint describes, with its weights, in eval mode."""
    model = CornerNet(ckpt.model_config)
    load_state_dict_checked(model, ckpt.state_dict, ckpt.path)
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CornerNet, ModelMeta]:
    ckpt = load_checkpoint(path)
    return build_model(ckpt, device), ckpt.meta


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``runtime.atomic_write``: a crash or a full disk never leaves a
    half-written checkpoint under ``path``, and the previous one stays intact."""
    atomic_write(path, lambda f: torch.save(obj, f), "free disk space or choose another --out-dir")


def checkpoint_dict(
    model_config: ModelConfig, meta: ModelMeta, state_dict: dict[str, Tensor], **extra: Any
) -> dict[str, Any]:
    """Our checkpoint schema (see module docstring); ``extra`` holds training state."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        **extra,
    }


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, model_config: ModelConfig, meta: ModelMeta, **extra: Any
) -> None:
    """Write our checkpoint atomically. ``model`` may be wrapped in DDP (the prefix is dropped)."""
    module = model.module if hasattr(model, "module") else model
    atomic_torch_save(checkpoint_dict(model_config, meta, module.state_dict(), **extra), path)
