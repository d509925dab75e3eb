"""Read the settings we need from the config text mmdet embeds in its checkpoints, without executing it.

mmdet stores its config as Python source (``meta['config']`` in 2.x, ``meta['cfg']`` in 3.x). We parse
it with :mod:`ast` and evaluate only literals and ``dict(...)`` calls; anything else (variables,
imports, arithmetic on names) becomes ``None``. Nothing in the text is ever run.
"""

from __future__ import annotations

import ast
from typing import Any

from runtime.meta import MMDET_MEAN_RGB, MMDET_STD_RGB, TestConfig

from .model.config import ModelConfig

_UNKNOWN = object()


def _literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """Value of a literal / ``dict(...)`` expression; ``_UNKNOWN`` for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e, names) for e in node.elts]
        return (
            _UNKNOWN
            if any(i is _UNKNOWN for i in items)
            else (list(items) if isinstance(node, ast.List) else tuple(items))
        )
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            key = _literal(k, names) if k is not None else _UNKNOWN
            if key is _UNKNOWN:
                continue
            out[key] = _literal(v, names)
        return out
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        return {kw.arg: _literal(kw.value, names) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, names)
        if isinstance(v, (int, float)):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        # Earlier top-level assignments (e.g. ``img_norm_cfg = dict(...)`` used later by name).
        return names.get(node.id, _UNKNOWN)
    return _UNKNOWN


def parse_config_text(text: str) -> dict[str, Any]:
    """Top-level ``name = <literal>`` assignments of an mmdet config text. Raises ``SyntaxError``."""
    names: dict[str, Any] = {}
    for stmt in ast.parse(text).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = _literal(stmt.value, names)
            if value is not _UNKNOWN:
                names[stmt.targets[0].id] = value
    return names


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d or d[key] is _UNKNOWN:
            return None
        d = d[key]
    return d


def model_config_from_mmdet(cfg: dict[str, Any], num_classes: int | None = None) -> ModelConfig:
    """HourglassNet/CornerHead settings from a parsed mmdet config; HG-104 defaults for what is absent."""
    backbone = _get(cfg, "model", "backbone") or {}
    head = _get(cfg, "model", "bbox_head") or {}
    if backbone and backbone.get("type", "HourglassNet") != "HourglassNet":
        raise ValueError(f"not a CornerNet config: backbone type {backbone.get('type')!r}")
    default = ModelConfig()
    kw: dict[str, Any] = {}
    for key in ("downsample_times", "num_stacks", "stage_channels", "stage_blocks", "feat_channel"):
        if isinstance(backbone.get(key), (int, list, tuple)):
            kw[key] = backbone[key]
    kw["num_classes"] = num_classes or head.get("num_classes") or default.num_classes
    return ModelConfig.from_dict({**default.to_dict(), **kw})


def test_config_from_mmdet(cfg: dict[str, Any]) -> TestConfig:
    """``test_cfg`` (inside ``model`` since mmdet 2.12, top level before)."""
    tc = _get(cfg, "model", "test_cfg") or cfg.get("test_cfg") or {}
    if not isinstance(tc, dict):
        tc = {}
    nms = tc.get("nms") if isinstance(tc.get("nms"), dict) else {}
    if nms.get("type", "soft_nms") != "soft_nms" or nms.get("method", "gaussian") != "gaussian":
        raise ValueError(f"only gaussian soft-NMS is supported, config has nms={nms}")
    d = TestConfig()
    return TestConfig(
        corner_topk=int(tc.get("corner_topk", d.corner_topk)),
        local_maximum_kernel=int(tc.get("local_maximum_kernel", d.local_maximum_kernel)),
        distance_threshold=float(tc.get("distance_threshold", d.distance_threshold)),
        num_dets=int(tc.get("num_dets", d.num_dets)),
        max_per_img=int(tc.get("max_per_img", d.max_per_img)),
        soft_nms_sigma=float(nms.get("sigma", d.soft_nms_sigma)),
        soft_nms_min_score=float(nms.get("min_score", d.soft_nms_min_score)),
    )


def normalization_from_mmdet(cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB mean/std: ``model.data_preprocessor`` (3.x) or ``img_norm_cfg`` (2.x)."""
    norm = _get(cfg, "model", "data_preprocessor") or cfg.get("img_norm_cfg") or {}
    if not isinstance(norm, dict) or not isinstance(norm.get("mean"), (list, tuple)):
        return MMDET_MEAN_RGB, MMDET_STD_RGB
    to_rgb = norm.get("bgr_to_rgb", norm.get("to_rgb", True))
    if not to_rgb:
        raise ValueError("configs that feed BGR images to the network (to_rgb=False) are not supported")
    return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])


def classes_from_mmdet_config(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """Class names written in the config (``metainfo.classes`` / ``classes``), if any."""
    for section in ("test_dataloader", "val_dataloader", "train_dataloader"):
        classes = _get(cfg, section, "dataset", "metainfo", "classes")
        if isinstance(classes, (list, tuple)):
            return tuple(classes)
    for path in (("data", "test", "classes"), ("classes",)):
        classes = _get(cfg, *path)
        if isinstance(classes, (list, tuple)):
            return tuple(classes)
    return None
