"""From corner proposals to an image's final detections: pairing, flip merge, class-aware soft-NMS.

Without flip this is mmdet's ``_predict_by_feat_single(..., with_nms=True)``. With flip TTA it is
mmdet 2.x's ``CornerNet.aug_test`` merge (the one behind the published flip numbers) on mmdet 3.x's
geometry (the image is flipped *before* padding): both views decoded without NMS (up to ``num_dets``
each), the flipped view's boxes mapped back with ``x1' = w - x2, x2' = w - x1`` (``w`` the original
width), both sets concatenated in view order, one class-aware soft-NMS, the first ``max_per_img``.
Heatmaps are never averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.decode import CornerProposals, Detections, pair_corners
from runtime.meta import TestConfig
from runtime.preprocess import ImageMeta
from runtime.soft_nms import batched_soft_nms


def unflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Map ``(n, 4)`` xyxy boxes from a horizontally flipped image back: ``x1' = w - x2, x2' = w - x1``.

    float32 like mmdet's ``bbox_flip``; ``width`` is the original (unpadded) image width.
    """
    w = np.float32(width)
    out = boxes.astype(np.float32, copy=True)
    out[:, 0] = w - boxes[:, 2]
    out[:, 2] = w - boxes[:, 0]
    return out


def nms_and_cap(dets: Detections, test_cfg: TestConfig) -> Detections:
    """mmdet's ``CornerHead._bboxes_nms``: class-aware gaussian soft-NMS, then the first ``max_per_img``.

    Returns:
        Detections in soft-NMS selection order (non-increasing score) with the re-weighted scores.
    """
    if len(dets) == 0:
        return dets
    keep, new_scores = batched_soft_nms(
        dets.boxes,
        dets.scores,
        dets.labels,
        sigma=test_cfg.soft_nms_sigma,
        min_score=test_cfg.soft_nms_min_score,
    )
    if test_cfg.max_per_img > 0:
        keep, new_scores = keep[: test_cfg.max_per_img], new_scores[: test_cfg.max_per_img]
    return Detections(boxes=dets.boxes[keep], scores=new_scores, labels=dets.labels[keep])


def postprocess(
    props_list: Sequence[CornerProposals],
    metas: Sequence[ImageMeta],
    test_cfg: TestConfig,
) -> Detections:
    """Final detections of ONE image from its views' proposals.

    Args:
        props_list: one :class:`CornerProposals` per view: ``[original]``, or ``[original, flipped]``
            for flip TTA.
        metas: the matching :class:`ImageMeta` per view (``flip`` tells which view is flipped).
        test_cfg: mmdet's test settings.

    Returns:
        At most ``test_cfg.max_per_img`` detections in original image pixels, best first.
    """
    if len(props_list) != len(metas) or not props_list:
        raise ValueError(f"need one meta per view, got {len(props_list)} proposals and {len(metas)} metas")
    if len(metas) == 2 and (metas[0].flip or not metas[1].flip):
        raise ValueError("flip TTA expects views in mmdet's order: [original, flipped]")
    parts = []
    for props, meta in zip(props_list, metas, strict=True):
        dets = pair_corners(
            props, meta, distance_threshold=test_cfg.distance_threshold, num_dets=test_cfg.num_dets
        )
        if meta.flip:
            dets = Detections(unflip_boxes(dets.boxes, meta.ori_shape[1]), dets.scores, dets.labels)
        parts.append(dets)
    merged = Detections(
        boxes=np.concatenate([d.boxes for d in parts]),
        scores=np.concatenate([d.scores for d in parts]),
        labels=np.concatenate([d.labels for d in parts]),
    )
    return nms_and_cap(merged, test_cfg)
