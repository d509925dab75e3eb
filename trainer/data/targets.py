"""CornerNet training targets, exactly as mmdet's ``CornerHead.get_targets(..., with_corner_emb=True)``.

Per object (box ``l, t, r, b`` in padded-input pixels, ``C`` classes, features ``H x W``):

- the box is scaled by ``W / img_w`` and ``H / img_h``; the corner cells are the scaled coordinates
  clipped to the last cell and truncated to int;
- a Gaussian of radius ``gaussian_radius(ceil(h), ceil(w))`` (the original CornerNet formula) is drawn
  at each corner cell in the object's class channel, merged with elementwise max;
- the sub-cell offset ``scaled - cell`` is written at each corner cell (class-agnostic, 2 channels x, y);
- the corner cells ``((top, left), (bottom, right))`` are recorded for the embedding loss.

Objects are processed in order, so where two objects share a corner cell the later one's offset wins
(mmdet writes the offsets one object at a time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# ((top_idx, left_idx), (bottom_idx, right_idx)) of one object on the feature grid.
CornerMatch = tuple[tuple[int, int], tuple[int, int]]


@dataclass
class CornerTargets:
    """Targets of one batch (``B`` images, ``C`` classes, ``H x W`` features).

    Attributes:
        tl_heatmap: [B, C, H, W] top-left Gaussian heatmaps, exactly 1 at each top-left corner cell.
        br_heatmap: [B, C, H, W] bottom-right Gaussian heatmaps.
        tl_offset: [B, 2, H, W] (x, y) sub-cell offsets at the top-left corner cells, 0 elsewhere.
        br_offset: [B, 2, H, W] same for the bottom-right corners.
        corner_embedding: per image, per object ``((top_idx, left_idx), (bottom_idx, right_idx))``.
    """

    tl_heatmap: Tensor
    br_heatmap: Tensor
    tl_offset: Tensor
    br_offset: Tensor
    corner_embedding: list[list[CornerMatch]]

    def to(self, device: torch.device | str) -> CornerTargets:
        """Copy of the targets with every tensor on ``device``."""
        return CornerTargets(
            tl_heatmap=self.tl_heatmap.to(device),
            br_heatmap=self.br_heatmap.to(device),
            tl_offset=self.tl_offset.to(device),
            br_offset=self.br_offset.to(device),
            corner_embedding=self.corner_embedding,
        )


def gaussian_radius(height: float, width: float, min_overlap: float = 0.3) -> float:
    """Radius of the corner Gaussian: the original CornerNet formula (not CenterNet's corrected one).

    The smallest of the three radii at which a box whose corners are moved by ``r`` keeps IoU
    ``min_overlap`` with the true box (one corner in / one out, both in, both out). mmdet and the
    original CornerNet use this form, whose discriminants and divisors differ from the textbook
    quadratic solution; it is kept as is because the published models were trained with it.

    Args:
        height: box height on the feature grid (mmdet passes ``ceil`` of the scaled height).
        width: box width on the feature grid.
        min_overlap: the IoU to keep.

    Returns:
        The radius as a float; callers take ``max(0, int(radius))``.
    """
    # The operand order follows mmdet's expression so that the float64 result is bit-identical,
    # which matters because the caller truncates it to an int.
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - math.sqrt(b1**2 - 4 * c1)) / 2

    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 - math.sqrt(b2**2 - 4 * 4 * c2)) / (2 * 4)

    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


def gaussian_kernel(
    radius: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """[2r+1, 2r+1] Gaussian with sigma = (2r+1)/6, peak 1, values below ``eps * max`` set to 0."""
    sigma = (2 * radius + 1) / 6
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device).view(1, -1)
    y = torch.arange(-radius, radius + 1, dtype=dtype, device=device).view(-1, 1)
    # Same expression as mmdet's gaussian2D (float32 ops in this order) so the values match bit for bit.
    kernel = (-(x * x + y * y) / (2 * sigma * sigma)).exp()
    kernel[kernel < torch.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel


def draw_gaussian(heatmap: Tensor, cx: int, cy: int, radius: int) -> Tensor:
    """Merge a Gaussian centred on cell ``(cx, cy)`` into ``heatmap`` in place, by elementwise max.

    Args:
        heatmap: [H, W] one class channel; modified in place.
        cx, cy: centre cell (column, row), inside the map.
        radius: kernel radius in cells (>= 0); the kernel is clipped at the map border.

    Returns:
        ``heatmap`` itself.
    """
    kernel = gaussian_kernel(radius, dtype=heatmap.dtype, device=heatmap.device)
    height, width = heatmap.shape
    left, right = min(cx, radius), min(width - cx, radius + 1)
    top, bottom = min(cy, radius), min(height - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = kernel[radius - top : radius + bottom, radius - left : radius + right]
    # Max, not overwrite: mmdet 2.3.0 overwrote, which erased nearby objects of the same class.
    torch.maximum(region, patch, out=region)
    return heatmap


def _corner_geometry(
    boxes: Tensor, feat_shape: tuple[int, int], img_shape: tuple[int, int]
) -> tuple[Tensor, Tensor, list[int]]:
    """Scaled corners, their integer cells and the Gaussian radii of ``n`` boxes.

    Args:
        boxes: [n, 4] float32 ``x1, y1, x2, y2`` in input pixels.

    Returns:
        scaled: [n, 4] float32 ``l, t, r, b`` on the feature grid.
        cells: [n, 4] int64 ``left, top, right, bottom`` cell indices.
        radii: n ints.
    """
    height, width = feat_shape
    img_h, img_w = img_shape[:2]
    # Python floats, multiplied as scalars, as mmdet does (the ratio is rounded to float32 with the box).
    width_ratio = float(width / img_w)
    height_ratio = float(height / img_h)
    scaled = torch.stack(
        [
            boxes[:, 0] * width_ratio,
            boxes[:, 1] * height_ratio,
            boxes[:, 2] * width_ratio,
            boxes[:, 3] * height_ratio,
        ],
        dim=1,
    )
    limits = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=scaled.dtype)
    # int(min(v, W - 1)) in mmdet: clip to the last cell, then truncate toward zero.
    cells = torch.minimum(scaled, limits.to(scaled.device)).long()
    box_w = torch.ceil(scaled[:, 2] - scaled[:, 0]).tolist()
    box_h = torch.ceil(scaled[:, 3] - scaled[:, 1]).tolist()
    # ceil() gives whole numbers; mmdet passes them to gaussian_radius as Python ints.
    radii = [
        max(0, int(gaussian_radius(int(h), int(w), min_overlap=0.3)))
        for h, w in zip(box_h, box_w, strict=True)
    ]
    return scaled, cells, radii


def build_targets(
    gt_bboxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    feat_shape: tuple[int, int],
    img_shape: tuple[int, int],
    num_classes: int,
) -> CornerTargets:
    """Heatmap, offset and embedding targets of a batch, as mmdet's ``CornerHead.get_targets``.

    Args:
        gt_bboxes: per image, [n_i, 4] boxes ``x1, y1, x2, y2`` in padded-input pixels (n_i may be 0).
        gt_labels: per image, [n_i] int64 class indices in ``[0, num_classes)``.
        feat_shape: ``(H, W)`` of the head outputs.
        img_shape: ``(h, w)`` of the padded network input (mmdet's ``pad_shape``, not ``img_shape``).
        num_classes: ``C``.

    Returns:
        ``CornerTargets`` with float32 tensors on the device of the boxes.
    """
    if len(gt_bboxes) != len(gt_labels):
        raise ValueError(f"{len(gt_bboxes)} box tensors but {len(gt_labels)} label tensors")
    height, width = feat_shape
    batch = len(gt_bboxes)
    device = gt_bboxes[0].device if batch else torch.device("cpu")
    tl_heatmap = torch.zeros(batch, num_classes, height, width, device=device)
    br_heatmap = torch.zeros_like(tl_heatmap)
    tl_offset = torch.zeros(batch, 2, height, width, device=device)
    br_offset = torch.zeros_like(tl_offset)
    corner_embedding: list[list[CornerMatch]] = []

    for b, (boxes, labels) in enumerate(zip(gt_bboxes, gt_labels, strict=True)):
        boxes = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        labels = labels.reshape(-1).tolist()
        if len(labels) != len(boxes):
            raise ValueError(f"image {b}: {len(boxes)} boxes but {len(labels)} labels")
        scaled, cells, radii = _corner_geometry(boxes, feat_shape, img_shape)
        offsets = scaled - cells.to(scaled.dtype)  # exact in float32: the fractional part of each value
        matches: list[CornerMatch] = []
        # One Python step per object (not per pixel): each object has its own radius and class, and
        # offsets of objects sharing a cell must be written in order so that the last one wins.
        for i, (left, top, right, bottom) in enumerate(cells.tolist()):
            label, radius = labels[i], radii[i]
            draw_gaussian(tl_heatmap[b, label], left, top, radius)
            draw_gaussian(br_heatmap[b, label], right, bottom, radius)
            tl_offset[b, :, top, left] = offsets[i, 0:2]
            br_offset[b, :, bottom, right] = offsets[i, 2:4]
            matches.append(((top, left), (bottom, right)))
        corner_embedding.append(matches)

    return CornerTargets(tl_heatmap, br_heatmap, tl_offset, br_offset, corner_embedding)
