"""The project's one rule for "the same detections" (contracts.md, "Decoding conventions").

Same label, IoU >= 0.999, |score difference| <= 1e-4, matched greedily in the reference's score
order; the sets agree when at least 99% of the reference is matched and the counts are equal. Used by
the golden tests, ``--verify`` and the export checks. Exactly tied scores may be ordered differently
by different top-k implementations, so nothing may demand more than this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.decode import Detections


@dataclass(frozen=True)
class MatchResult:
    """Outcome of :func:`match_detections`.

    Attributes:
        matched: reference detections that found a partner.
        total_ref: reference detections.
        total_test: detections under test.
        rate: ``matched / total_ref`` (1.0 when both are empty).
        ok: ``rate >= min_rate`` and ``total_ref == total_test``.
    """

    matched: int
    total_ref: int
    total_test: int
    rate: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return f"{verdict}: matched {self.matched}/{self.total_ref} ({100 * self.rate:.2f}%), test count {self.total_test}"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(n, 4)`` with every box in ``b`` ``(m, 4)``, xyxy, float64 ``(n, m)``.

    Two identical zero-area boxes count as IoU 1 (the same detection); other empty unions as 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    same = np.all(a[:, None, :] == b[None, :, :], axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.where(same, 1.0, iou)


def match_detections(
    ref: Detections,
    test: Detections,
    iou_thr: float = 0.999,
    score_tol: float = 1e-4,
    min_rate: float = 0.99,
) -> MatchResult:
    """Match ``test`` against ``ref`` with the project's rule.

    Reference detections are visited in descending score order (ties in their given order); each
    takes the unmatched test detection of the same label with ``|score diff| <= score_tol`` and the
    highest IoU, if that IoU is ``>= iou_thr``.

    Args:
        ref: the reference (e.g. mmdet's golden detections).
        test: the detections under test.
        iou_thr, score_tol: the pair criteria.
        min_rate: fraction of ``ref`` that must be matched.

    Returns:
        A :class:`MatchResult`.
    """
    n_ref, n_test = len(ref), len(test)
    if n_ref == 0:
        return MatchResult(0, 0, n_test, 1.0, n_test == 0)
    ok_pair = (np.asarray(ref.labels)[:, None] == np.asarray(test.labels)[None, :]) & (
        np.abs(np.asarray(ref.scores, np.float64)[:, None] - np.asarray(test.scores, np.float64)[None, :])
        <= score_tol
    )
    iou = np.where(ok_pair, box_iou(ref.boxes, test.boxes), -1.0)
    taken = np.zeros(n_test, dtype=bool)
    matched = 0
    for r in np.argsort(-np.asarray(ref.scores, np.float64), kind="stable"):
        row = np.where(taken, -1.0, iou[r])
        if n_test == 0:
            break
        t = int(np.argmax(row))
        if row[t] >= iou_thr:
            taken[t] = True
            matched += 1
    rate = matched / n_ref
    return MatchResult(matched, n_ref, n_test, rate, rate >= min_rate and n_ref == n_test)
