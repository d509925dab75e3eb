"""Corner pooling as one PyTorch custom op, ``torch.ops.cornernet.corner_pool(x, mode)``.

Each output position takes the running max over the positions on the *opposite* side of the
named direction (mmcv's semantics):

======  ====  ============================================
mode    dim   out[..., i] =
======  ====  ============================================
0 top    H    max over i' >= i  (scan from the bottom up)
1 bottom H    max over i' <= i
2 left   W    max over j' >= j  (scan from the right)
3 right  W    max over j' <= j
======  ====  ============================================

Forward and gradient are exactly those of mmcv's ``flip -> torch.cummax -> flip`` (ties and
NaN/inf included), which is what mmdet trains with. The op name is stable: ONNX export maps it to
the ``cornernet::CornerPool`` node and TensorRT to our ``CornerPool`` plugin.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trt_plugins.fields import MODES  # one numbering for the op, the ONNX node and the plugin


def _dim_and_flip(mode: int) -> tuple[int, bool]:
    if mode not in (0, 1, 2, 3):
        raise ValueError(f"corner_pool mode must be 0 (top), 1 (bottom), 2 (left) or 3 (right), got {mode}")
    # top/left scan towards index 0, so they run cummax on the flipped tensor.
    return (2 if mode < 2 else 3), mode in (0, 2)


def _cummax_flipped(x: Tensor, mode: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of cummax in the scan frame (flipped for top/left)."""
    dim, flip = _dim_and_flip(mode)
    if flip:
        x = x.flip(dim)
    return torch.cummax(x, dim)


@torch.library.custom_op("cornernet::corner_pool", mutates_args=())
def corner_pool(x: Tensor, mode: int) -> Tensor:
    """Corner pooling of an NCHW tensor. ``mode``: 0 top, 1 bottom, 2 left, 3 right."""
    if x.dim() != 4:
        raise ValueError(f"corner_pool expects an NCHW tensor, got shape {tuple(x.shape)}")
    values, _ = _cummax_flipped(x, mode)
    dim, flip = _dim_and_flip(mode)
    return values.flip(dim) if flip else values


@corner_pool.register_fake
def _(x: Tensor, mode: int) -> Tensor:
    _dim_and_flip(mode)
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    x, mode = inputs
    ctx.save_for_backward(x)
    ctx.mode = mode


def _backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
    (x,) = ctx.saved_tensors
    dim, flip = _dim_and_flip(ctx.mode)
    # Route each output gradient to the input position cummax picked (torch's cummax backward),
    # in the same flipped frame the forward used.
    _, indices = _cummax_flipped(x, ctx.mode)
    g = grad.flip(dim) if flip else grad
    grad_in = torch.zeros_like(x).scatter_add_(dim, indices, g)
    return (grad_in.flip(dim) if flip else grad_in), None


corner_pool.register_autograd(_backward, setup_context=_setup_context)


class CornerPool(nn.Module):
    """Module wrapper with a direction name (``'top'``, ``'bottom'``, ``'left'``, ``'right'``)."""

    def __init__(self, direction: str) -> None:
        super().__init__()
        if direction not in MODES:
            raise ValueError(f"unknown corner pool direction {direction!r}; expected one of {list(MODES)}")
        self.direction = direction
        self.mode = MODES[direction]

    def forward(self, x: Tensor) -> Tensor:
        return corner_pool(x, self.mode)

    def extra_repr(self) -> str:
        return self.direction


def corner_pool_reference(x: Tensor, mode: int) -> Tensor:
    """mmcv's formulation written out with plain torch ops (flip + cummax + flip), for tests."""
    dim, flip = _dim_and_flip(mode)
    if flip:
        return torch.cummax(x.flip(dim), dim)[0].flip(dim)
    return torch.cummax(x, dim)[0]
