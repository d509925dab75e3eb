"""torch.ops.cornernet.corner_pool equals mmcv's flip + cummax + flip, forward and backward."""

from __future__ import annotations

import pytest
import torch

from trainer.model.corner_pool import MODES, CornerPool, corner_pool, corner_pool_reference

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 1, 9), (1, 2, 9, 1), (1, 4, 33, 17), (2, 1, 64, 65)]


def test_mmcv_documented_examples() -> None:
    x = torch.tensor([[1, 3, 2, 0], [0, 5, 1, 4], [2, 0, 0, 1]], dtype=torch.float32)[None, None]
    top = torch.tensor([[2, 5, 2, 4], [2, 5, 1, 4], [2, 0, 0, 1]], dtype=torch.float32)
    left = torch.tensor([[3, 3, 2, 0], [5, 5, 4, 4], [2, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(corner_pool(x, MODES["top"])[0, 0], top)
    assert torch.equal(corner_pool(x, MODES["left"])[0, 0], left)
    # bottom / right are top / left seen in a mirror
    assert torch.equal(corner_pool(x.flip(2), MODES["bottom"]).flip(2)[0, 0], top)
    assert torch.equal(corner_pool(x.flip(3), MODES["right"]).flip(3)[0, 0], left)


@pytest.mark.parametrize("mode", range(4))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_reference(mode: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    assert torch.equal(corner_pool(x, mode), corner_pool_reference(x, mode))


@pytest.mark.parametrize("mode", range(4))
def test_nan_and_inf_like_cummax(mode: int) -> None:
    x = torch.randn(2, 3, 11, 13)
    x[0, 0, 3, 4] = float("nan")
    x[0, 1, 7, 2] = float("inf")
    x[1, 2, 5, 5] = float("-inf")
    x[1, 0] = float("-inf")
    out, ref = corner_pool(x, mode), corner_pool_reference(x, mode)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out).sum() > 1  # NaN propagates along the scan
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(ref))


@pytest.mark.parametrize("mode", range(4))
def test_gradcheck_float64(mode: int) -> None:
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: corner_pool(t, mode), (x,))


@pytest.mark.parametrize("mode", range(4))
def test_gradient_with_ties_equals_cummax_formulation(mode: int) -> None:
    # Many exact ties: integers in a small range. Which tied position gets the gradient is
    # defined by torch.cummax's indices in the flipped frame; ours must route it identically.
    x = torch.randint(0, 3, (2, 3, 9, 8)).double()
    g = torch.randn_like(x)
    a = x.clone().requires_grad_(True)
    corner_pool(a, mode).backward(g)
    b = x.clone().requires_grad_(True)
    corner_pool_reference(b, mode).backward(g)
    assert torch.equal(a.grad, b.grad)


def test_module_and_bad_mode() -> None:
    assert CornerPool("right").mode == 3
    with pytest.raises(ValueError, match="direction"):
        CornerPool("up")
    with pytest.raises(ValueError, match="mode"):
        corner_pool(torch.zeros(1, 1, 2, 2), 4)


def test_op_is_registered_under_stable_name() -> None:
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(torch.ops.cornernet.corner_pool(x, 0), corner_pool_reference(x, 0))
    torch.library.opcheck(torch.ops.cornernet.corner_pool.default, (x.requires_grad_(), 2))
