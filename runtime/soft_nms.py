"""Gaussian soft-NMS, reproducing mmcv 2.x's CPU ``soft_nms`` and ``batched_nms`` exactly.

The facts of mmcv's algorithm (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``, ``mmcv/ops/nms.py``) that decide
the exact output, and that this module keeps:

- Selection: at step ``i`` the box with the highest current score among positions ``i..n-1`` is
  swapped into position ``i``; among equal scores the lowest *position* wins (strict ``<`` scan).
- Every remaining box is re-weighted by ``exp(-iou^2 / sigma)`` (``iou_threshold`` is unused for the
  gaussian method), in float32, IoU with offset 0 from float32 areas.
- A box whose score drops below ``min_score`` is removed by moving the *last* remaining box into
  its position. Positions are therefore permuted, and that permutation decides later ties.
- The result is the selection order, with the scores as they were when each box was selected.
- ``batched_nms`` makes it class-aware by shifting every box by ``label * (max_coord + 1)`` in float32;
  the shifted boxes (whose widths lose low bits) are what soft-NMS sees.

Two implementations with the same results, bit for bit: :func:`soft_nms_reference`, readable numpy
whose inner update is vectorised over the remaining boxes, and :func:`soft_nms`, the compiled kernel
of :mod:`runtime.soft_nms_fast` that everything else calls (20-30x faster on a trained model's
1000 candidates, ``python -m benchmarks.bench_decode``). The tests hold both to a literal
re-statement of mmcv's loop.
"""

from __future__ import annotations

import numpy as np

from runtime.soft_nms_fast import soft_nms_kernel

# mmcv's batched_nms runs one NMS per class instead of one over all boxes from this many boxes on.
MMCV_SPLIT_THR = 10000


def _gaussian_weight(iou: np.ndarray, sigma: np.float32) -> np.ndarray:
    """``exp(-(iou * iou) / sigma)`` in float32 as mmcv's C++ computes it.

    The argument is formed with float32 roundings; the exponential is taken in float64 and rounded
    once, which matches glibc's ``expf`` (error < 0.502 ulp) on all but vanishingly rare inputs.
    """
    arg = -(iou * iou) / sigma  # float32 throughout
    return np.exp(arg.astype(np.float64)).astype(np.float32)


def _first_max(seg: np.ndarray) -> int:
    """Position of the maximum as mmcv's ``if (max_score < sc[pos])`` scan finds it.

    The first of equal maxima wins, as with ``np.argmax``. NaN scores (only from a zero-area union)
    differ: ``np.argmax`` picks the first NaN, mmcv never moves off a finite score onto a NaN and
    never leaves a NaN it starts on.
    """
    best = int(np.argmax(seg))
    if not np.isnan(seg[best]):
        return best
    if np.isnan(seg[0]):
        return 0
    return int(np.argmax(np.where(np.isnan(seg), -np.inf, seg)))


def _remove_low(order: np.ndarray, sc: np.ndarray, start: int, n: int, low: np.ndarray) -> int:
    """Drop low-score boxes from positions ``[start, n)`` the way mmcv does, in place.

    mmcv scans positions upwards; a low box at ``pos`` is replaced by the box at the last position
    (which is then examined at ``pos`` in turn) and the range shrinks by one. Because no box is
    re-weighted twice in one step, the same result follows from filling the holes in ascending
    order with the surviving boxes taken from the end, in descending order.

    Args:
        order: ``(N,)`` box index at each position (permuted in place).
        sc: ``(N,)`` current score at each position (permuted in place).
        start, n: the positions examined in this step.
        low: ``(n - start,)`` bool, True where the box at that position falls below ``min_score``.

    Returns:
        The new number of remaining positions.
    """
    holes = np.flatnonzero(low) + start
    tail = n - 1
    for d in holes.tolist():
        if d > tail:  # already dropped while taking boxes from the end
            return tail + 1
        while tail > d and low[tail - start]:
            tail -= 1
        if tail == d:  # the hole is the last remaining position: just drop it
            return d
        order[d] = order[tail]
        sc[d] = sc[tail]
        tail -= 1
    return tail + 1


def soft_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS as mmcv's CPU ``soft_nms(..., method='gaussian', offset=0)``, compiled.

    The same contract and results as :func:`soft_nms_reference`.

    Args:
        boxes: ``(N, 4)`` xyxy; computed in float32 like mmcv.
        scores: ``(N,)`` scores.
        sigma: gaussian sigma; the weight is ``exp(-iou^2 / sigma)``.
        min_score: boxes whose score falls below this are discarded.

    Returns:
        ``(keep, new_scores)``: ``(M,)`` int64 indices into ``boxes`` in selection order and
        ``(M,)`` float32 scores after re-weighting (non-increasing, as mmcv returns them).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sc = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)
    n = boxes.shape[0]
    if sc.shape[0] != n:
        raise ValueError(f"boxes {boxes.shape} and scores {sc.shape} disagree on the number of boxes")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, j]) for j in range(4))
    return soft_nms_kernel(x1, y1, x2, y2, sc, np.float32(sigma), np.float32(min_score))


def soft_nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS as mmcv's CPU ``soft_nms(..., method='gaussian', offset=0)``, in numpy.

    Args:
        boxes: ``(N, 4)`` xyxy; computed in float32 like mmcv.
        scores: ``(N,)`` scores.
        sigma: gaussian sigma; the weight is ``exp(-iou^2 / sigma)``.
        min_score: boxes whose score falls below this are discarded.

    Returns:
        ``(keep, new_scores)``: ``(M,)`` int64 indices into ``boxes`` in selection order and
        ``(M,)`` float32 scores after re-weighting (non-increasing, as mmcv returns them).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sc = np.array(scores, dtype=np.float32).reshape(-1)
    n = boxes.shape[0]
    if sc.shape[0] != n:
        raise ValueError(f"boxes {boxes.shape} and scores {sc.shape} disagree on the number of boxes")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)

    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, j]) for j in range(4))
    areas = (x2 - x1) * (y2 - y1)
    sigma32 = np.float32(sigma)
    min32 = np.float32(min_score)
    # Positions hold box indices; geometry stays indexed by box, scores are kept per position.
    order = np.arange(n, dtype=np.int64)
    out_scores = np.empty(n, dtype=np.float32)
    zero = np.float32(0.0)

    i = 0
    while i < n:
        j = i + _first_max(sc[i:n])
        order[i], order[j] = order[j], order[i]
        sc[i], sc[j] = sc[j], sc[i]
        b = order[i]
        out_scores[i] = sc[i]
        i += 1
        if i >= n:
            break

        rest = order[i:n]
        w = np.maximum(zero, np.minimum(x2[b], x2[rest]) - np.maximum(x1[b], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[b], y2[rest]) - np.maximum(y1[b], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / ((areas[b] + areas[rest]) - inter)
        sc[i:n] *= _gaussian_weight(iou, sigma32)
        low = sc[i:n] < min32
        if low.any():
            n = _remove_low(order, sc, i, n, low)

    return order[:n].copy(), out_scores[:n].copy()


def class_offset_boxes(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Shift boxes by ``label * (max_coord + 1)`` in float32, as mmcv's ``batched_nms`` does.

    Args:
        boxes: ``(N, 4)`` float32 xyxy.
        labels: ``(N,)`` integer class labels.

    Returns:
        ``(N, 4)`` float32 boxes of different classes that can never overlap.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape[0] == 0:
        return boxes.copy()
    step = boxes.max() + np.float32(1.0)
    offsets = np.asarray(labels).astype(np.float32) * step
    return boxes + offsets[:, None]


def batched_soft_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-aware gaussian soft-NMS, as mmcv's ``batched_nms(..., nms_cfg=soft_nms gaussian)``.

    Args:
        boxes: ``(N, 4)`` float32 xyxy.
        scores: ``(N,)`` float32.
        labels: ``(N,)`` int class labels; boxes of different labels never suppress each other.
        sigma, min_score: as in :func:`soft_nms`.

    Returns:
        ``(keep, new_scores)``: int64 indices into the inputs in output order (selection order,
        non-increasing score) and their float32 scores after soft-NMS.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    shifted = class_offset_boxes(boxes, labels)
    if boxes.shape[0] < MMCV_SPLIT_THR:
        return soft_nms(shifted, scores, sigma=sigma, min_score=min_score)

    # mmcv's path for very many boxes: one soft-NMS per class, then all survivors sorted by score.
    # (mmcv sorts with torch.sort, whose order among equal scores is unspecified; ours is stable.)
    keep_all, score_all = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep, new_scores = soft_nms(shifted[idx], scores[idx], sigma=sigma, min_score=min_score)
        keep_all.append(idx[keep])
        score_all.append(new_scores)
    keep = np.concatenate(keep_all)
    new_scores = np.concatenate(score_all)
    # mmcv gathers survivors in index order before sorting.
    by_index = np.argsort(keep, kind="stable")
    keep, new_scores = keep[by_index], new_scores[by_index]
    by_score = np.argsort(-new_scores, kind="stable")
    return keep[by_score], new_scores[by_score]
