"""Compiled inner loops of :mod:`runtime.decode`: corner peaks and the k x k pairing.

Each kernel computes what the numpy reference in :mod:`runtime.decode` computes, with the same
float32 operations in the same order, and only leaves out work that cannot change the result:

- :func:`kth_peak` finds the k-th best logit local maximum in one pass with a size-k min-heap; a row
  with no cell above the heap's minimum is skipped after a vectorised count, and the window maxima
  of the other rows are computed a row at a time, vectorised.
- :func:`cells_above` lists the cells above a logit cut, in flat-index order, with their window
  maxima (computed only there).
- :func:`pair_top` scores the pairs that pass mmdet's validity tests and orders them best first,
  the lower flat pair index first among equal scores (a stable sort of the pairs in index order).
"""

from __future__ import annotations

import numpy as np

from runtime.jit import inline, kernel


@inline
def _window_max(x, c, y, xx, r):  # pragma: no cover - compiled
    """Max of ``x[c]`` over the ``(2r+1)^2`` window at ``(y, xx)``, clipped to the map (-inf padding)."""
    _, h, w = x.shape
    m = x[c, y, xx]
    for yy in range(max(0, y - r), min(h, y + r + 1)):
        for xj in range(max(0, xx - r), min(w, xx + r + 1)):
            v = x[c, yy, xj]
            if v > m:
                m = v
    return m


@inline
def _sift_down(heap, k):  # pragma: no cover - compiled
    """Restore the min-heap property of ``heap[:k]`` after its root was replaced."""
    j = 0
    v = heap[0]
    while True:
        child = 2 * j + 1
        if child >= k:
            break
        if child + 1 < k and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] < v:
            heap[j] = heap[child]
            j = child
        else:
            break
    heap[j] = v


@inline
def _count_above(row, cut):  # pragma: no cover - compiled
    """How many cells of a ``(W,)`` row are strictly above ``cut`` (a loop the compiler vectorises)."""
    m = 0
    for j in range(row.shape[0]):
        m += row[j] > cut
    return m


@inline
def _row_window_max(x, c, y, r, out, tmp):  # pragma: no cover - compiled
    """``out[j]`` = max of ``x[c]`` over the window at ``(y, j)`` for a whole row, clipped to the map.

    Separable, as :func:`runtime.decode.window_max`: the max over the window's rows, then over
    ``2r + 1`` columns. Loops start at index 0 over slices, so the compiler vectorises them.
    """
    _, h, w = x.shape
    top, bottom = max(0, y - r), min(h, y + r + 1)
    first = x[c, top]
    for j in range(w):
        tmp[j] = first[j]
    for yy in range(top + 1, bottom):
        row = x[c, yy]
        for j in range(w):
            tmp[j] = max(tmp[j], row[j])
    for j in range(w):
        out[j] = tmp[j]
    for d in range(1, r + 1):
        left, right = out[: w - d], tmp[d:]  # out[j] and its neighbour d to the right
        for j in range(w - d):
            left[j] = max(left[j], right[j])
        right, left = out[d:], tmp[: w - d]  # out[j + d] and its neighbour d to the left
        for j in range(w - d):
            right[j] = max(right[j], left[j])


@kernel("float32(float32[:, :, ::1], int64, int64)")
def kth_peak(x, k, r):  # pragma: no cover - compiled
    """The k-th largest value among the local maxima of ``(C, H, W)`` logits, or NaN if fewer than k.

    A local maximum is a cell equal to the max of its ``(2r+1)^2`` window (ties all count), the
    cells that survive ``x == max_pool(x)``. Values must be finite. Once k peaks are held, a row
    with no cell above the smallest of them is skipped after one vectorised count.
    """
    n_c, h, w = x.shape
    heap = np.empty(k, np.float32)
    wmax = np.empty(w, np.float32)
    tmp = np.empty(w, np.float32)
    size = 0
    for c in range(n_c):
        for y in range(h):
            row = x[c, y]
            if size == k and _count_above(row, heap[0]) == 0:
                continue
            _row_window_max(x, c, y, r, wmax, tmp)
            for xx in range(w):
                v = row[xx]
                if size == k and not v > heap[0]:
                    continue  # cannot change the k-th largest
                if wmax[xx] > v:
                    continue  # not a local maximum
                if size < k:  # push, sifting up
                    j = size
                    size += 1
                    while j > 0:
                        parent = (j - 1) // 2
                        if heap[parent] > v:
                            heap[j] = heap[parent]
                            j = parent
                        else:
                            break
                    heap[j] = v
                else:
                    heap[0] = v
                    _sift_down(heap, k)
    if size < k:
        return np.float32(np.nan)
    return heap[0]


@kernel("Tuple((int64[::1], float32[::1], float32[::1]))(float32[:, :, ::1], float32, int64)")
def cells_above(x, cut, r):  # pragma: no cover - compiled
    """Cells of ``(C, H, W)`` logits strictly above ``cut``: ``(flat index, value, window max)``, ascending."""
    n_c, h, w = x.shape
    counts = np.empty(n_c * h, np.int64)
    for c in range(n_c):
        for y in range(h):
            counts[c * h + y] = _count_above(x[c, y], cut)
    m = counts.sum()
    inds = np.empty(m, np.int64)
    vals = np.empty(m, np.float32)
    maxs = np.empty(m, np.float32)
    m = 0
    for c in range(n_c):
        for y in range(h):
            if counts[c * h + y] == 0:
                continue
            for xx in range(w):
                v = x[c, y, xx]
                if v > cut:
                    inds[m] = (c * h + y) * w + xx
                    vals[m] = v
                    maxs[m] = _window_max(x, c, y, xx, r)
                    m += 1
    return inds, vals, maxs


@kernel(
    "Tuple((int64[::1], float32[::1]))"
    "(float32[::1], int64[::1], float32[::1], float32[::1], float32[::1],"
    " float32[::1], int64[::1], float32[::1], float32[::1], float32[::1], float32, float32, int64)"
)
def pair_top(
    tl_s, tl_c, tl_x, tl_y, tl_e, br_s, br_c, br_x, br_y, br_e, dist_thr, valid_score, num_dets
):  # pragma: no cover - compiled
    """The best ``num_dets`` valid TL/BR pairs: ``(flat pair index i * kb + j, score)``, best first.

    A pair is valid when the classes agree, ``br_x > tl_x``, ``br_y > tl_y``,
    ``|tl_e - br_e| <= dist_thr`` (each test failing as in mmdet, NaN comparisons included) and its
    score ``(tl_s + br_s) / 2`` is above ``valid_score``.
    """
    kt = tl_s.shape[0]
    kb = br_s.shape[0]
    inds = np.empty(kt * kb, np.int64)
    scores = np.empty(kt * kb, np.float32)
    two = np.float32(2.0)
    m = 0
    for i in range(kt):
        for j in range(kb):
            if tl_c[i] != br_c[j] or br_x[j] <= tl_x[i] or br_y[j] <= tl_y[i]:
                continue
            if abs(tl_e[i] - br_e[j]) > dist_thr:
                continue
            s = (tl_s[i] + br_s[j]) / two
            if s > valid_score:
                inds[m] = i * kb + j
                scores[m] = s
                m += 1
    # Stable: equal scores keep index order. Negation is exact, so this sorts by score descending.
    order = np.argsort(-scores[:m], kind="mergesort")[:num_dets]
    return inds[order], scores[order]
