"""CornerNet losses, exactly as mmdet's ``CornerHead.loss_by_feat`` (mmdet 3.3.0).

Per stack: ``det`` (Gaussian focal loss, mean of TL and BR), ``pull`` / ``push`` (associative embedding,
weights 0.1 as in mmdet's CornerNet config), ``off`` (smooth L1 at the corner cells, mean of TL and BR).
Over stacks mmdet **sums** every part (``BaseDetector._parse_losses``), it does not average them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.names import HEAD_OUTPUTS

from .data.targets import CornerMatch, CornerTargets

LOSS_NAMES = ("det_loss", "pull_loss", "push_loss", "off_loss")

# mmdet's weight_reduce_loss divides by ``avg_factor + eps`` (float32 eps) to avoid division by zero;
# kept because it changes the last bit when avg_factor is 1.
_AVG_EPS = torch.finfo(torch.float32).eps


def _mean_by(loss_sum: Tensor, avg_factor: float) -> Tensor:
    """``loss_sum / (avg_factor + eps)``, mmdet's ``reduction='mean'`` with an ``avg_factor``."""
    return loss_sum / (avg_factor + _AVG_EPS)


def gaussian_focal_loss(
    pred_sigmoid: Tensor,
    gaussian_target: Tensor,
    alpha: float = 2.0,
    gamma: float = 4.0,
    avg_factor: float = 1.0,
) -> Tensor:
    """CornerNet's focal loss against a Gaussian-splatted target, summed and divided by ``avg_factor``.

    ``pos = -log(p + 1e-12) (1 - p)^alpha [g == 1]``, ``neg = -log(1 - p + 1e-12) p^alpha (1 - g)^gamma``.
    (The original CornerNet clamped the sigmoid to [1e-4, 1 - 1e-4] instead of adding eps.)

    Args:
        pred_sigmoid: [B, C, H, W] probabilities (sigmoid of the logits).
        gaussian_target: [B, C, H, W] target heatmap, 1 at the corners.
        avg_factor: normaliser, mmdet uses ``max(1, number of target cells == 1)``.

    Returns:
        Scalar loss.
    """
    eps = 1e-12
    pos_weights = gaussian_target.eq(1)
    neg_weights = (1 - gaussian_target).pow(gamma)
    pos_loss = -(pred_sigmoid + eps).log() * (1 - pred_sigmoid).pow(alpha) * pos_weights
    neg_loss = -(1 - pred_sigmoid + eps).log() * pred_sigmoid.pow(alpha) * neg_weights
    return _mean_by((pos_loss + neg_loss).sum(), avg_factor)


def _embedding_loss_single(
    tl_emb: Tensor, br_emb: Tensor, matches: Sequence[CornerMatch]
) -> tuple[Tensor, Tensor]:
    """Unweighted pull and push losses of one image.

    Args:
        tl_emb, br_emb: [1, H, W] embedding maps of one image.
        matches: per object ``((top, left), (bottom, right))`` cells.

    Returns:
        ``(pull, push)``; both 0 (still attached to the graph) without objects, push 0 with one object.
    """
    # ``sum() * 0`` rather than a constant keeps the loss connected to the graph, as mmdet does; unlike
    # mmdet (tl only) both maps are included, so br_emb also gets a (zero) gradient without objects.
    zero = (tl_emb.sum() + br_emb.sum()) * 0.0
    num = len(matches)
    if num == 0:
        return zero, zero
    cells = torch.tensor([[t, left, b, r] for (t, left), (b, r) in matches], device=tl_emb.device)
    tl = tl_emb[0, cells[:, 0], cells[:, 1]]  # [N]
    br = br_emb[0, cells[:, 2], cells[:, 3]]  # [N]
    mean = (tl + br) / 2.0
    pull = ((tl - mean).pow(2) + (br - mean).pow(2)).sum() / num
    if num == 1:
        return pull, zero
    margin = 1.0
    dist = (mean[:, None] - mean[None, :]).abs()  # [N, N], |m_i - m_j|
    # Weighting the diagonal out (rather than indexing it away) keeps mmdet's summation order.
    off_diagonal = 1 - torch.eye(num, dtype=mean.dtype, device=mean.device)
    push = F.relu(off_diagonal * (margin - dist)).sum() / (num * (num - 1))
    return pull, push


def associative_embedding_loss(
    tl_emb: Tensor,
    br_emb: Tensor,
    corner_embedding: Sequence[Sequence[CornerMatch]],
    pull_weight: float = 0.1,
    push_weight: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Pull (group the two corners of an object) and push (separate objects) losses of a batch.

    Per image with ``N`` objects and ``m = (e_tl + e_br) / 2``: ``pull = sum((e_tl - m)^2 + (e_br - m)^2) / N``,
    ``push = sum_{i != j} relu(1 - |m_i - m_j|) / (N (N - 1))`` (0 when ``N <= 1``). Both are weighted and
    **summed** over the images of the batch (not averaged), as in mmdet.

    Args:
        tl_emb, br_emb: [B, 1, H, W] embedding maps (one channel, as in mmdet's CornerNet).
        corner_embedding: per image, per object ``((top, left), (bottom, right))`` cells.
        pull_weight, push_weight: mmdet's CornerNet config uses 0.1 (the class default is 0.25).

    Returns:
        ``(pull, push)`` scalars.
    """
    if tl_emb.shape[1] != 1 or br_emb.shape[1] != 1:
        raise ValueError(f"embedding maps need 1 channel, got {tl_emb.shape[1]} and {br_emb.shape[1]}")
    if len(corner_embedding) != tl_emb.shape[0]:
        raise ValueError(f"{len(corner_embedding)} images of corner matches for a batch of {tl_emb.shape[0]}")
    pull_all = push_all = (tl_emb.sum() + br_emb.sum()) * 0.0  # a batch of 0 images still gives tensors
    for i, matches in enumerate(corner_embedding):
        pull, push = _embedding_loss_single(tl_emb[i], br_emb[i], matches)
        pull_all = pull_all + pull_weight * pull
        push_all = push_all + push_weight * push
    return pull_all, push_all


def offset_loss(pred: Tensor, target: Tensor, heatmap: Tensor, beta: float = 1.0) -> Tensor:
    """Smooth L1 offset loss at the corner cells of any class.

    Args:
        pred: [B, 2, H, W] predicted offsets.
        target: [B, 2, H, W] target offsets.
        heatmap: [B, C, H, W] target heatmap; a cell is supervised where any class equals 1.
        beta: smooth L1 threshold.

    Returns:
        Scalar: masked sum divided by ``max(1, number of corner cells)`` (cells, not cells x 2 channels).
    """
    mask = heatmap.eq(1).any(dim=1, keepdim=True).to(pred.dtype)  # [B, 1, H, W], broadcast over x, y
    diff = (pred - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _mean_by((loss * mask).sum(), max(1.0, float(mask.sum())))


def _head(heads: Any, name: str) -> Tensor:
    """``heads.name`` or ``heads[name]``: accepts the model's ``HeadOutputs`` or a plain dict."""
    return heads[name] if isinstance(heads, Mapping) else getattr(heads, name)


def corner_losses_single(
    heads: Any, targets: CornerTargets, pull_weight: float = 0.1, push_weight: float = 0.1
) -> dict[str, Tensor]:
    """The four losses of one stack, as mmdet's ``CornerHead.loss_by_feat_single``.

    Args:
        heads: raw logits of one stack with fields (or keys) ``tl_heat, br_heat`` [B, C, H, W],
            ``tl_emb, br_emb`` [B, 1, H, W], ``tl_off, br_off`` [B, 2, H, W].
        targets: from ``build_targets`` for the same batch and feature size.

    Returns:
        ``{"det_loss", "pull_loss", "push_loss", "off_loss"}`` scalars.
    """
    tl_heat, br_heat, tl_emb, br_emb, tl_off_pred, br_off_pred = (_head(heads, n) for n in HEAD_OUTPUTS)
    # Each heatmap is normalised by its own number of corners (cells equal to 1, counted per class).
    tl_det = gaussian_focal_loss(
        tl_heat.sigmoid(), targets.tl_heatmap, avg_factor=max(1.0, float(targets.tl_heatmap.eq(1).sum()))
    )
    br_det = gaussian_focal_loss(
        br_heat.sigmoid(), targets.br_heatmap, avg_factor=max(1.0, float(targets.br_heatmap.eq(1).sum()))
    )
    pull, push = associative_embedding_loss(
        tl_emb, br_emb, targets.corner_embedding, pull_weight, push_weight
    )
    tl_off = offset_loss(tl_off_pred, targets.tl_offset, targets.tl_heatmap)
    br_off = offset_loss(br_off_pred, targets.br_offset, targets.br_heatmap)
    return {
        "det_loss": (tl_det + br_det) / 2.0,
        "pull_loss": pull,
        "push_loss": push,
        "off_loss": (tl_off + br_off) / 2.0,
    }


def corner_losses(
    heads_per_stack: Sequence[Any], targets: CornerTargets, pull_weight: float = 0.1, push_weight: float = 0.1
) -> dict[str, Tensor]:
    """Losses of every stack, summed per part over the stacks (mmdet sums, the original averaged).

    Args:
        heads_per_stack: one ``heads`` per stack (see ``corner_losses_single``), all supervised by the
            same ``targets``.
        targets: from ``build_targets``.

    Returns:
        ``det_loss, pull_loss, push_loss, off_loss`` (each summed over stacks) and ``loss``, their total.
    """
    if not heads_per_stack:
        raise ValueError("need the head outputs of at least one stack")
    per_stack = [corner_losses_single(h, targets, pull_weight, push_weight) for h in heads_per_stack]
    out = {name: sum(s[name] for s in per_stack) for name in LOSS_NAMES}
    out["loss"] = sum(out[name] for name in LOSS_NAMES)
    return out
