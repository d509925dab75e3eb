"""CornerNet targets and losses against mmdet 3.3.0 (``targets_losses.pt`` of the golden set) and by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from runtime.names import HEAD_OUTPUTS
from trainer.data.targets import CornerTargets, build_targets, draw_gaussian, gaussian_radius
from trainer.losses import (
    LOSS_NAMES,
    associative_embedding_loss,
    corner_losses,
    corner_losses_single,
)

# mmdet's target names -> ours.
TARGET_NAMES = {
    "topleft_heatmap": "tl_heatmap",
    "bottomright_heatmap": "br_heatmap",
    "topleft_offset": "tl_offset",
    "bottomright_offset": "br_offset",
}


@pytest.fixture(scope="module")
def golden_cases(golden_dir: Path) -> list[dict]:
    return torch.load(golden_dir / "targets_losses.pt", weights_only=True)


@pytest.fixture(scope="module")
def loss_cases(golden_cases: list[dict]) -> list[tuple[int, dict]]:
    """The cases that keep mmdet's head outputs (the repository copy keeps them for one, see its README)."""
    cases = [(i, case) for i, case in enumerate(golden_cases) if "head_outputs_fp16" in case]
    assert cases, "no targets_losses case with head outputs in tests/data/golden"
    return cases


def _golden_targets(case: dict) -> CornerTargets:
    """Our targets for a golden case (every golden case is batch 1, boxes given as one tensor)."""
    num_classes = case["targets"]["topleft_heatmap"].shape[1]
    return build_targets(
        [case["gt_bboxes"]], [case["gt_labels"]], case["feat_shape"], case["pad_shape"], num_classes
    )


def _golden_heads(case: dict, stack: int) -> dict[str, torch.Tensor]:
    outs = case["head_outputs_fp16"]
    return {name: outs[name + "s"][stack].float() for name in HEAD_OUTPUTS}


def _random_heads(batch: int, classes: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    channels = {"heat": classes, "emb": 1, "off": 2}
    return {
        name: torch.randn(batch, channels[name[3:]], size, size, generator=gen).requires_grad_()
        for name in HEAD_OUTPUTS
    }


# --- golden: mmdet's own get_targets and loss_by_feat ------------------------------------------------


def test_targets_match_mmdet(golden_cases: list[dict]) -> None:
    for i, case in enumerate(golden_cases):
        ours = _golden_targets(case)
        for theirs_name, our_name in TARGET_NAMES.items():
            theirs = case["targets"][theirs_name]
            mine = getattr(ours, our_name)
            assert mine.shape == theirs.shape, f"case {i} {our_name}"
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6, msg=f"case {i} {our_name}")
        as_lists = [[[list(cell) for cell in obj] for obj in img] for img in ours.corner_embedding]
        assert as_lists == case["targets"]["corner_embedding"], f"case {i} corner_embedding"


def test_losses_match_mmdet(loss_cases: list[tuple[int, dict]]) -> None:
    for i, case in loss_cases:
        targets = _golden_targets(case)
        num_stacks = len(case["losses"]["det_loss"])
        heads = [_golden_heads(case, s) for s in range(num_stacks)]
        for s in range(num_stacks):
            ours = corner_losses_single(heads[s], targets)
            for name in LOSS_NAMES:
                ref = case["losses"][name][s]
                assert ours[name].item() == pytest.approx(ref, rel=1e-5, abs=1e-12), (
                    f"case {i} stack {s} {name}"
                )
        # mmdet sums the stacks.
        total = corner_losses(heads, targets)
        for name in LOSS_NAMES:
            assert total[name].item() == pytest.approx(sum(case["losses"][name]), rel=1e-5, abs=1e-12)
        expected_total = sum(sum(case["losses"][name]) for name in LOSS_NAMES)
        assert total["loss"].item() == pytest.approx(expected_total, rel=1e-5)


def test_batch_of_two_golden_images(loss_cases: list[tuple[int, dict]]) -> None:
    """Heatmap and offset losses are normalised over the batch; pull/push are summed over images."""
    case = loss_cases[0][1]
    single = _golden_targets(case)
    num_classes = single.tl_heatmap.shape[1]
    boxes, labels = case["gt_bboxes"], case["gt_labels"]
    pair = build_targets([boxes, boxes], [labels, labels], case["feat_shape"], case["pad_shape"], num_classes)
    assert torch.equal(pair.tl_heatmap[1], single.tl_heatmap[0])
    assert pair.corner_embedding == single.corner_embedding * 2

    heads = _golden_heads(case, 0)
    doubled = {name: torch.cat([t, t]) for name, t in heads.items()}
    ours = corner_losses_single(doubled, pair)
    for name in ("det_loss", "off_loss"):
        assert ours[name].item() == pytest.approx(case["losses"][name][0], rel=1e-5)
    for name in ("pull_loss", "push_loss"):
        assert ours[name].item() == pytest.approx(2 * case["losses"][name][0], rel=1e-5)


# --- gaussian radius and kernel, by hand -------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        # r2 = (2(h+w) - sqrt(4(h+w)^2 - 16(1-o)wh)) / 8 is the smallest of the three here:
        (10, 10, 5 - math.sqrt(7.5)),  # r1 = 3.2063, r2 = 2.2614, r3 = 4.1287
        (20, 40, 15 - math.sqrt(85)),  # r1 = 8.3383, r2 = 5.7805, r3 = 11.2996
        (1, 100, (202 - math.sqrt(39684)) / 8),  # r1 = 0.5360, r2 = 0.3489, r3 = 1.1298
    ],
)
def test_gaussian_radius_by_hand(height: int, width: int, expected: float) -> None:
    assert gaussian_radius(height, width, min_overlap=0.3) == pytest.approx(expected, rel=1e-12)


def test_gaussian_radius_is_the_original_cornernet_formula() -> None:
    # CenterNet's corrected formula gives min(16.79, 30.95, 4.95) -> radius 4 for a 10x10 box.
    assert int(gaussian_radius(10, 10)) == 2
    assert gaussian_radius(0, 0) == 0.0
    assert gaussian_radius(0, 7) == 0.0


def test_draw_gaussian_values_clipping_and_max_merge() -> None:
    heat = torch.zeros(8, 8)
    draw_gaussian(heat, 0, 1, 2)  # clipped at the left border
    sigma = 5 / 6
    assert heat[1, 0] == 1.0
    assert heat[1, 1].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)
    assert heat[3, 2].item() == pytest.approx(math.exp(-8 / (2 * sigma**2)), rel=1e-6)
    assert heat[4, 0] == 0 and heat[1, 3] == 0  # outside the radius
    before = heat.clone()
    draw_gaussian(heat, 2, 1, 1)  # overlapping: max, never overwrite with something smaller
    assert torch.all(heat >= before)
    assert heat[1, 0] == 1.0 and heat[1, 2] == 1.0
    draw_gaussian(heat, 7, 7, 0)  # radius 0 marks a single cell
    assert heat[7, 7] == 1.0 and heat[6, 7] == 0 and heat[7, 6] == 0


def test_build_targets_with_empty_image() -> None:
    boxes = [torch.zeros(0, 4), torch.tensor([[8.0, 12.0, 60.0, 100.0]])]
    labels = [torch.zeros(0, dtype=torch.int64), torch.tensor([2])]
    t = build_targets(boxes, labels, feat_shape=(32, 32), img_shape=(127, 127), num_classes=3)
    assert t.tl_heatmap.shape == (2, 3, 32, 32) and t.tl_offset.shape == (2, 2, 32, 32)
    assert t.tl_heatmap[0].abs().sum() == 0 and t.br_offset[0].abs().sum() == 0
    assert t.corner_embedding[0] == []
    ratio = 32 / 127
    top, left = int(12 * ratio), int(8 * ratio)
    bottom, right = int(100 * ratio), int(60 * ratio)
    assert t.corner_embedding[1] == [((top, left), (bottom, right))]
    assert t.tl_heatmap[1, 2, top, left] == 1 and t.br_heatmap[1, 2, bottom, right] == 1
    assert t.tl_heatmap[1, :2].abs().sum() == 0  # other classes untouched
    assert t.tl_offset[1, 0, top, left].item() == pytest.approx(8 * ratio - left, abs=1e-6)
    assert t.br_offset[1, 1, bottom, right].item() == pytest.approx(100 * ratio - bottom, abs=1e-6)


# --- losses: edge cases and gradients ----------------------------------------------------------------


@pytest.mark.parametrize("num_objects", [0, 1])
def test_batch_one_with_zero_or_one_object(num_objects: int) -> None:
    boxes = torch.tensor([[10.0, 20.0, 90.0, 70.0]])[:num_objects]
    labels = torch.tensor([1])[:num_objects]
    targets = build_targets([boxes], [labels], (32, 32), (127, 127), num_classes=3)
    heads = _random_heads(1, 3, 32)
    losses = corner_losses([heads, heads], targets)
    assert losses["push_loss"].item() == 0.0
    if num_objects == 0:
        assert losses["pull_loss"].item() == 0.0
    for name, value in losses.items():
        assert torch.isfinite(value), name
    losses["loss"].backward()
    for name in HEAD_OUTPUTS:
        grad = heads[name].grad
        assert grad is not None and torch.isfinite(grad).all(), name


def test_embedding_loss_by_hand() -> None:
    """Two objects, embeddings placed by hand: pull and push from the formula."""
    tl = torch.zeros(1, 1, 4, 4)
    br = torch.zeros(1, 1, 4, 4)
    tl[0, 0, 0, 0], br[0, 0, 2, 2] = 0.0, 1.0  # object 0: m = 0.5
    tl[0, 0, 1, 1], br[0, 0, 3, 3] = 0.6, 0.8  # object 1: m = 0.7
    matches = [[((0, 0), (2, 2)), ((1, 1), (3, 3))]]
    pull, push = associative_embedding_loss(tl, br, matches, pull_weight=1.0, push_weight=1.0)
    assert pull.item() == pytest.approx((0.25 + 0.25 + 0.01 + 0.01) / 2, rel=1e-6)
    assert push.item() == pytest.approx(2 * (1 - 0.2) / 2, rel=1e-6)
    # mmdet's config weights are 0.1 and scale both linearly.
    pull_w, push_w = associative_embedding_loss(tl, br, matches)
    assert pull_w.item() == pytest.approx(0.1 * pull.item(), rel=1e-6)
    assert push_w.item() == pytest.approx(0.1 * push.item(), rel=1e-6)


def test_gradients_reach_all_six_heads() -> None:
    boxes = [torch.tensor([[10.0, 20.0, 90.0, 70.0], [40.0, 5.0, 120.0, 110.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.int64)]
    targets = build_targets(boxes, labels, (32, 32), (127, 127), num_classes=3)
    heads = _random_heads(2, 3, 32, seed=1)
    corner_losses([heads], targets)["loss"].backward()
    for name in HEAD_OUTPUTS:
        grad = heads[name].grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_corner_losses_sum_over_stacks() -> None:
    boxes = [torch.tensor([[10.0, 20.0, 90.0, 70.0], [40.0, 5.0, 120.0, 110.0]])]
    labels = [torch.tensor([0, 2])]
    targets = build_targets(boxes, labels, (32, 32), (127, 127), num_classes=3)
    stacks = [_random_heads(1, 3, 32, seed=s) for s in (2, 3)]
    total = corner_losses(stacks, targets)
    singles = [corner_losses_single(h, targets) for h in stacks]
    for name in LOSS_NAMES:
        assert total[name].item() == pytest.approx(
            singles[0][name].item() + singles[1][name].item(), rel=1e-6
        )
    assert total["loss"].item() == pytest.approx(sum(total[n].item() for n in LOSS_NAMES), rel=1e-6)
