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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from runtime.atomic_write import atomic_write
from runtime.errors import UserError
from runtime.meta import COCO_CLASSES, ModelMeta, TestConfig, sha256_file  # noqa: F401 - re-exported

from . import mmdet_config, safe_load
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


def _what(obj: Any) -> str:
    """How an error names a loaded object: a skipped class by its name, anything else by its type."""
    skipped = safe_load.placeholder_name(obj)
    if skipped is not None:
        return f"a {skipped} object (a class this loader does not import; skipped, never run)"
    name = type(obj).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _strip_prefix(path: Path, state_dict: dict[Any, Any]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix DDP adds, and non-model buffers mmdet may store; tensors only."""
    out = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise UserError(
                f"{path}: state_dict entry {k!r} holds {_what(v)}, not a tensor; pass a checkpoint whose state_dict holds only weights"
            )
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith("data_preprocessor."):
            continue
        out[k] = v
    return out


def _dict_or_empty(obj: Any) -> dict[str, Any]:
    # Informational mmdet fields (meta, dataset_meta) of another type are ignored, not fatal: the
    # skipped-class warning already names what they were.
    return obj if isinstance(obj, dict) else {}


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
    meta = _dict_or_empty(obj.get("meta"))
    state_dict = _strip_prefix(path, obj["state_dict"])
    text = meta.get("cfg") or meta.get("config")
    cfg: dict[str, Any] = {}
    if isinstance(text, str) and text.strip():
        try:
            cfg = mmdet_config.parse_config_text(text)
        except SyntaxError as e:
            raise UserError(
                f"{path}: the config text embedded in the checkpoint is not valid Python ({e.msg}, line {e.lineno})"
            ) from None
    classes = meta.get("CLASSES") or _dict_or_empty(meta.get("dataset_meta")).get("classes")
    if classes is not None and not (
        isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)
    ):
        raise UserError(
            f"{path}: the class names in its meta are {_what(classes)}, not a list of names; re-save the checkpoint"
        )
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
    """Load our checkpoint, an mmdet 2.x/3.x checkpoint, or a bare mmdet-keyed state_dict (on CPU).

    Reading never runs code from the file (``trainer.safe_load``): objects of classes it does not
    import (mmengine's ``HistoryBuffer`` in an mmdet 3.x ``message_hub``, or anything crafted) become
    inert placeholders, named in a warning when the weights load without them and in the error when not.
    """
    path = Path(path)
    loaded = safe_load.load(path)
    ckpt = _parse(path, loaded.obj)
    if loaded.skipped:
        warnings.warn(
            f"{path}: skipped objects of classes this loader does not import ({loaded.skipped_text()}); "
            "kept as inert placeholders, never run; the weights do not need them",
            stacklevel=2,
        )
    return ckpt


def _parse(path: Path, obj: Any) -> Checkpoint:
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds {_what(obj)}, not a checkpoint dict; pass a CornerNet checkpoint")
    if obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(
                f"{path}: checkpoint format_version {version} is not supported by this version ({FORMAT_VERSION}); upgrade cornernet-deploy"
            )
        for key in ("model_config", "meta", "state_dict"):
            if not isinstance(obj.get(key), dict):
                raise UserError(
                    f"{path}: its '{key}' is {_what(obj.get(key))}, not a dict; the file is damaged, re-save it"
                )
        extra = {
            k: v
            for k, v in obj.items()
            if k not in ("format", "format_version", "model_config", "meta", "state_dict")
        }
        return Checkpoint(
            str(path),
            ModelConfig.from_dict(obj["model_config"]),
            ModelMeta.from_dict(obj["meta"], where=f"{path} meta"),
            _strip_prefix(path, obj["state_dict"]),
            FORMAT,
            extra,
        )
    if isinstance(obj.get("state_dict"), dict):
        return _from_mmdet(path, obj)
    if "state_dict" in obj:
        raise UserError(
            f"{path}: its state_dict is {_what(obj['state_dict'])}, not a dict of tensors; pass a checkpoint saved with model.state_dict()"
        )
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
