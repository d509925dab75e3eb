"""The model is mmdet's: same keys and shapes as HG-104, same head outputs as mmdet on the golden set."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.image_io import read_image
from runtime.preprocess import preprocess
from trainer.checkpoint import build_model, load_checkpoint
from trainer.model import HEAD_OUTPUTS, CornerNet, ModelConfig, hg104, tiny

# mmdet's HG-104 state_dict keys and shapes, in order (a copy of ../shared/reference's).
TSV = Path(__file__).resolve().parent / "data" / "reference" / "mmdet_hg104_state_dict.tsv"


def test_hg104_has_exactly_mmdets_keys_and_shapes() -> None:
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines()[1:]]
    expected = {k: tuple(ast.literal_eval(s)) for k, s in rows}
    assert len(expected) == 1128
    with torch.device("meta"):  # no memory for 200M parameters
        model = CornerNet(hg104())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert list(got) == [k for k, _ in rows], "state_dict order differs from mmdet's"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 201_035_212  # mmdet 2.28.2's count (cornernet_mmdet.md §0)


def test_golden_heads_match_mmdet(golden_dir: Path, golden_info: dict) -> None:
    ckpt = load_checkpoint(golden_dir / "mmdet_checkpoint.pth")
    model = build_model(ckpt)
    outputs = np.load(golden_dir / "outputs.npz")
    for name in golden_info["images"]:
        if f"{name}/input" in outputs.files:
            x = torch.from_numpy(outputs[f"{name}/input"])
        else:  # not kept: our pre-processing, bit-exact with mmdet's (tests/test_preprocess.py)
            image = read_image(golden_dir / "coco" / "images" / name)
            x = torch.from_numpy(preprocess(image, golden_info["mean_rgb"], golden_info["std_rgb"])[0][None])
        with torch.no_grad():
            heads = model(x)
        for key in HEAD_OUTPUTS:
            ref = outputs[f"{name}/{key}"]
            err = np.abs(getattr(heads, key).numpy() - ref).max()
            assert err < 1e-4, f"{name} {key}: max abs error {err:.2e}"


def test_inference_runs_heads_on_last_stack_only() -> None:
    model = CornerNet(tiny(num_classes=3)).eval()
    calls: list[int] = []
    for level, pool in enumerate(model.bbox_head.tl_pool):
        pool.register_forward_hook(lambda *_, level=level: calls.append(level))
    x = torch.randn(1, 3, 127, 127)
    with torch.no_grad():
        heads = model(x)
    assert calls == [1]
    assert heads.tl_heat.shape == (1, 3, 32, 32) and heads.tl_off.shape == (1, 2, 32, 32)
    calls.clear()
    stacks = model.forward_stacks(x)
    assert calls == [0, 1] and len(stacks) == 2
    torch.testing.assert_close(stacks[-1].tl_heat, heads.tl_heat)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(
            downsample_times=1,
            num_stacks=1,
            stage_channels=(8, 16),
            stage_blocks=(1, 1),
            feat_channel=8,
            num_classes=2,
        ),
        ModelConfig(
            downsample_times=2,
            num_stacks=3,
            stage_channels=(8, 8, 16),
            stage_blocks=(1, 2, 1),
            feat_channel=16,
            num_classes=5,
        ),
    ],
)
def test_small_configs_build_and_train(cfg: ModelConfig) -> None:
    model = CornerNet(cfg)
    stacks = model.forward_stacks(torch.randn(2, 3, 63, 95))
    assert len(stacks) == cfg.num_stacks
    assert stacks[0].tl_heat.shape == (2, cfg.num_classes, 16, 24)
    sum(t.sum() for s in stacks for t in s).backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    # mmdet builds ``inters.0`` even with one stack, where nothing uses it.
    assert unused == (
        {n for n, _ in model.named_parameters() if n.startswith("backbone.inters.")}
        if cfg.num_stacks == 1
        else set()
    )


def test_heat_bias_prior() -> None:
    model = CornerNet(tiny(num_classes=3))
    bias = model.bbox_head.tl_heat[0][1].conv.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.1))


def test_config_rejects_inconsistent_stages() -> None:
    with pytest.raises(ValueError, match="downsample_times"):
        ModelConfig(downsample_times=2, stage_channels=(8, 8), stage_blocks=(1, 1, 1))
    assert ModelConfig.from_dict(hg104().to_dict()) == hg104()


def test_output_names_shared_with_numpy_runtime() -> None:
    from runtime.names import HEAD_OUTPUTS as RUNTIME_HEADS
    from runtime.names import PROPOSAL_OUTPUTS
    from trainer.model.proposals import DeployModel

    assert HEAD_OUTPUTS == RUNTIME_HEADS
    model = CornerNet(tiny(num_classes=3)).eval()
    assert DeployModel(model).output_names == PROPOSAL_OUTPUTS
    assert DeployModel(model, "heads").output_names == HEAD_OUTPUTS
