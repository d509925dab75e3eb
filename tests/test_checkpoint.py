"""One loader for our checkpoints and mmdet 2.x / 3.x checkpoints; clear one-line errors otherwise."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import pytest
import torch

from runtime.errors import UserError
from runtime.meta import COCO_CLASSES, ModelMeta, TestConfig
from trainer import checkpoint as ckpt_mod
from trainer.checkpoint import build_model, load_checkpoint, save_checkpoint
from trainer.mmdet_config import parse_config_text
from trainer.model import CornerNet, tiny

MMDET2_CONFIG = """
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/coco_detection.py']
model = dict(
    type='CornerNet',
    backbone=dict(type='HourglassNet', downsample_times=3, num_stacks=2,
                  stage_channels=[32, 32, 48, 64], stage_blocks=[1, 1, 1, 2], feat_channel=32,
                  norm_cfg=dict(type='BN', requires_grad=True)),
    neck=None,
    bbox_head=dict(type='CornerHead', num_classes=3, in_channels=32, num_feat_levels=2),
    train_cfg=None,
    test_cfg=dict(corner_topk=77, local_maximum_kernel=3, distance_threshold=0.4, score_thr=0.05,
                  max_per_img=50, nms=dict(type='soft_nms', iou_threshold=0.5, method='gaussian')))
img_norm_cfg = dict(mean=[120.0, 110.0, 100.0], std=[50.0, 51.0, 52.0], to_rgb=True)
test_pipeline = [dict(type='Normalize', **img_norm_cfg)]
import os  # never executed
evil = os.system('echo pwned')
"""


@pytest.fixture(scope="module")
def golden_sd(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "mmdet_checkpoint.pth", map_location="cpu", weights_only=True)


def test_mmdet3_checkpoint(golden_dir: Path, golden_info: dict) -> None:
    ckpt = load_checkpoint(golden_dir / "mmdet_checkpoint.pth")
    arch = golden_info["architecture"]
    assert ckpt.source == "mmdet3"
    assert ckpt.model_config.stage_channels == tuple(arch["stage_channels"])
    assert ckpt.model_config.downsample_times == arch["downsample_times"]
    assert ckpt.meta.classes == tuple(golden_info["classes"])
    assert ckpt.meta.mean == tuple(golden_info["mean_rgb"]) and ckpt.meta.std == tuple(golden_info["std_rgb"])
    assert ckpt.meta.test_cfg == TestConfig()
    build_model(ckpt)


def test_mmdet2_checkpoint_with_module_prefix(golden_sd: dict, tmp_path: Path) -> None:
    obj = {
        "meta": {"CLASSES": ("a", "b", "c"), "config": MMDET2_CONFIG, "mmdet_version": "2.28.2"},
        "state_dict": {f"module.{k}": v for k, v in golden_sd["state_dict"].items()},
    }
    path = tmp_path / "mmdet2.pth"
    torch.save(obj, path)
    ckpt = load_checkpoint(path)
    assert ckpt.source == "mmdet2"
    assert ckpt.meta.classes == ("a", "b", "c")
    assert ckpt.meta.mean == (120.0, 110.0, 100.0) and ckpt.meta.std == (50.0, 51.0, 52.0)
    assert ckpt.meta.test_cfg.corner_topk == 77 and ckpt.meta.test_cfg.max_per_img == 50
    assert ckpt.meta.test_cfg.distance_threshold == 0.4
    model = build_model(ckpt)
    assert set(model.state_dict()) == {k[len("module.") :] for k in obj["state_dict"]}


def test_config_text_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = parse_config_text(
        f"x = dict(a=1)\nimport os\ny = os.system('touch {marker}')\nz = [1, -2.5, 'q']\n"
    )
    assert cfg == {"x": {"a": 1}, "z": [1, -2.5, "q"]}
    assert not marker.exists()


def test_no_config_means_hg104_and_coco_names(tmp_path: Path) -> None:
    with torch.device("meta"):
        sd = CornerNet(tiny(80)).state_dict()
    path = tmp_path / "bare.pth"
    torch.save(
        {"meta": {}, "state_dict": {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}}, path
    )
    ckpt = load_checkpoint(path)
    assert ckpt.model_config.stage_channels == (256, 256, 384, 384, 384, 512)  # HG-104 assumed
    assert ckpt.meta.classes == COCO_CLASSES
    with pytest.raises(UserError, match=r"mis-shaped") as err:
        build_model(ckpt)  # tiny weights into the HG-104 it assumed
    assert "\n" not in str(err.value)


def test_mismatch_lists_missing_unexpected_misshaped(golden_sd: dict, tmp_path: Path) -> None:
    sd = dict(golden_sd["state_dict"])
    sd.pop("bbox_head.tl_emb.1.1.conv.bias")
    sd["bbox_head.extra.weight"] = torch.zeros(1)
    sd["backbone.stem.0.conv.weight"] = torch.zeros(16, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save({"meta": golden_sd["meta"], "state_dict": sd}, path)
    with pytest.raises(UserError) as err:
        build_model(load_checkpoint(path))
    msg = str(err.value)
    assert "1 missing [bbox_head.tl_emb.1.1.conv.bias]" in msg
    assert "1 unexpected [bbox_head.extra.weight]" in msg
    assert "1 mis-shaped [backbone.stem.0.conv.weight (16, 3, 5, 5) vs model (16, 3, 7, 7)]" in msg
    assert str(path) in msg and "\n" not in msg


def test_class_count_mismatch(golden_sd: dict, tmp_path: Path) -> None:
    path = tmp_path / "classes.pth"
    torch.save(
        {"meta": {"dataset_meta": {"classes": ("a", "b")}}, "state_dict": golden_sd["state_dict"]}, path
    )
    with pytest.raises(UserError, match="names 2 classes but its heads predict 3"):
        load_checkpoint(path)


def test_our_format_roundtrip(tmp_path: Path) -> None:
    cfg = tiny(num_classes=2)
    model = CornerNet(cfg)
    meta = ModelMeta(classes=("cat", "dog"), test_cfg=TestConfig(max_per_img=20))
    path = tmp_path / "ours.pth"
    save_checkpoint(path, model, cfg, meta, epoch=3)
    ckpt = load_checkpoint(path)
    assert ckpt.source == "cornernet-deploy" and ckpt.model_config == cfg and ckpt.meta == meta
    assert ckpt.extra["epoch"] == 3
    loaded = build_model(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pth"]  # no temp files left


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"this is not a checkpoint", "not a PyTorch checkpoint"),
        (None, "not found"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(golden_dir: Path, tmp_path: Path) -> None:
    data = (golden_dir / "mmdet_checkpoint.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated\.pth"):
        load_checkpoint(path)


def test_non_checkpoint_pickle(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="not a checkpoint dict"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="no 'state_dict'"):
        load_checkpoint(path)


def test_full_disk_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(num_classes=2)
    model, meta = CornerNet(cfg), ModelMeta(classes=("a", "b"))
    path = tmp_path / "latest.pth"
    save_checkpoint(path, model, cfg, meta, epoch=1)
    before = path.read_bytes()

    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):  # the disk fills up half-way through the write
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", save_then_fail)
    with pytest.raises(UserError, match="No space left"):
        save_checkpoint(path, model, cfg, meta, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_meta_warns_about_keys_it_does_not_know(tmp_path: Path) -> None:
    meta = ModelMeta(classes=("a", "b"), test_cfg=TestConfig(max_per_img=20))
    d = meta.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own output round-trips silently
        assert ModelMeta.from_dict(d) == meta
    d["future_key"] = 1
    d["test_cfg"]["nms_iou"] = 0.6
    with pytest.warns(
        UserWarning,
        match=r"x\.json: ignoring keys this version does not know \(future_key, test_cfg\.nms_iou\)",
    ):
        assert ModelMeta.from_dict(d, where="x.json") == meta
    # ... and a checkpoint's meta names the checkpoint
    cfg = tiny(num_classes=2)
    path = tmp_path / "newer.pth"
    save_checkpoint(path, CornerNet(cfg), cfg, meta)
    obj = torch.load(path, weights_only=True)
    obj["meta"]["pad_value"] = 0
    torch.save(obj, path)
    with pytest.warns(UserWarning, match=rf"{path} meta: ignoring keys .*\(pad_value\)"):
        assert load_checkpoint(path).meta == meta


def test_our_format_with_a_damaged_part(tmp_path: Path) -> None:
    cfg = tiny(num_classes=2)
    path = tmp_path / "ours.pth"
    save_checkpoint(path, CornerNet(cfg), cfg, ModelMeta(classes=("a", "b")))
    obj = torch.load(path, weights_only=True)
    obj["model_config"] = [1, 2]
    torch.save(obj, path)
    with pytest.raises(UserError, match=r"its 'model_config' is a list, not a dict"):
        load_checkpoint(path)


def test_class_names_must_be_names(golden_sd: dict, tmp_path: Path) -> None:
    path = tmp_path / "names.pth"
    torch.save({"meta": {"dataset_meta": {"classes": 3}}, "state_dict": golden_sd["state_dict"]}, path)
    with pytest.raises(UserError, match="the class names in its meta are an int, not a list of names"):
        load_checkpoint(path)
