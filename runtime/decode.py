"""CornerNet decoding on the host, reproducing mmdet 3.3.0's ``CornerHead.decode_heatmap`` (embedding variant).

Decoding is split in two steps so the ONNX graph can compute the first one in-graph:

1. :func:`corner_proposals`: sigmoid, 3x3 local-maximum keep, top-k corners per corner type, and the
   embeddings and offsets gathered at them. Its outputs are the ONNX model's outputs
   (:data:`PROPOSAL_OUTPUTS`), so every backend continues from the same :class:`CornerProposals`.
2. :func:`pair_corners`: the k x k TL/BR pairing, mapping to image pixels and the validity tests,
   giving up to ``num_dets`` raw boxes before soft-NMS.

Arithmetic is float32 in mmdet's order (offsets added, scaled by pad/feat, border subtracted,
clamped at 0) so boxes come out bit-for-bit where the inputs agree. Top-k takes the lower flat index
first among equal scores (ONNX TopK's rule; ``torch.topk`` promises no order), which is why results
are compared with the matching rule of contracts.md rather than element by element.

The scans over the heatmaps and the k x k pairing run compiled (:mod:`runtime.decode_fast`); the
readable numpy references they are tested against are :func:`_topk_dense` (the literal top-k of the
suppressed sigmoid map) and :func:`pair_corners_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.decode_fast import cells_above, kth_peak, pair_top
from runtime.names import PROPOSAL_OUTPUTS
from runtime.preprocess import ImageMeta

# Raw pairs at or below this score are invalid (mmdet marks them -1 and keeps scores > -0.1).
_VALID_SCORE = np.float32(-0.1)


@dataclass(frozen=True)
class Detections:
    """Detections of one image in original image pixels.

    Attributes:
        boxes: ``(n, 4)`` float32 ``x1, y1, x2, y2``.
        scores: ``(n,)`` float32.
        labels: ``(n,)`` int64, 0-based model labels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros(0, dtype=np.float32),
            labels=np.zeros(0, dtype=np.int64),
        )

    def take(self, idx: np.ndarray | slice) -> Detections:
        """The detections at ``idx`` (an index array or a slice), in that order."""
        return Detections(boxes=self.boxes[idx], scores=self.scores[idx], labels=self.labels[idx])


@dataclass(frozen=True)
class CornerProposals:
    """Top-k corners of one image, what :func:`pair_corners` needs (k = ``test_cfg.corner_topk``).

    For each corner type (``tl_`` top-left, ``br_`` bottom-right):
        scores: ``(k,)`` float32 sigmoid heat after local-max suppression, non-increasing.
        inds: ``(k,)`` int64 flat index ``c * H * W + y * W + x`` into the ``(C, H, W)`` heatmap.
        embs: ``(k,)`` float32 associative embedding at the corner.
        offs: ``(k, 2)`` float32 sub-pixel offset at the corner, ``[:, 0]`` x and ``[:, 1]`` y.
    feat_shape: ``(H, W)`` of the heatmaps the indices refer to.
    """

    feat_shape: tuple[int, int]
    tl_scores: np.ndarray
    tl_inds: np.ndarray
    tl_embs: np.ndarray
    tl_offs: np.ndarray
    br_scores: np.ndarray
    br_inds: np.ndarray
    br_embs: np.ndarray
    br_offs: np.ndarray

    @property
    def k(self) -> int:
        return int(self.tl_scores.shape[0])

    @classmethod
    def from_arrays(
        cls,
        feat_shape: tuple[int, int],
        tl_scores: np.ndarray,
        tl_inds: np.ndarray,
        tl_embs: np.ndarray,
        tl_offs: np.ndarray,
        br_scores: np.ndarray,
        br_inds: np.ndarray,
        br_embs: np.ndarray,
        br_offs: np.ndarray,
    ) -> list[CornerProposals]:
        """Split batched proposal arrays (the ONNX / TensorRT outputs) into one object per image.

        Args:
            feat_shape: ``(H, W)`` of the heatmaps, the same for the whole batch.
            tl_scores, tl_inds, tl_embs: ``(N, K)`` (or ``(K,)`` for one image).
            tl_offs: ``(N, K, 2)`` (or ``(K, 2)``).
            br_*: likewise.

        Returns:
            ``N`` proposals, cast to float32 / int64 (TensorRT may hand back int32 indices).
        """

        def batched(a: np.ndarray, per_item_ndim: int, dtype: type) -> np.ndarray:
            a = np.asarray(a)
            if a.ndim == per_item_ndim:
                a = a[None]
            return a.astype(dtype, copy=False)

        arrays = [
            batched(tl_scores, 1, np.float32),
            batched(tl_inds, 1, np.int64),
            batched(tl_embs, 1, np.float32),
            batched(tl_offs, 2, np.float32),
            batched(br_scores, 1, np.float32),
            batched(br_inds, 1, np.int64),
            batched(br_embs, 1, np.float32),
            batched(br_offs, 2, np.float32),
        ]
        n, k = arrays[0].shape[:2]
        for name, a in zip(PROPOSAL_OUTPUTS, arrays, strict=True):
            want = (n, k, 2) if name.endswith("offs") else (n, k)
            if a.shape != want:
                raise ValueError(f"proposal output {name} has shape {a.shape}, expected {want}")
        fh, fw = (int(v) for v in feat_shape)
        return [cls((fh, fw), *(a[i] for a in arrays)) for i in range(n)]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float32, PyTorch's formula, with a correctly rounded exponential.

    The exponential is taken in float64 and rounded once; the addition and reciprocal are float32
    like torch's kernel. torch's vectorised ``exp`` is itself approximate, so about 1 value in 10
    differs from torch by one ulp; the decoded detections do not (see the golden tests).
    """
    # exp(-x) beyond float32's range becomes inf and the sigmoid 0, as in torch.
    with np.errstate(over="ignore"):
        e = np.exp(np.negative(x, dtype=np.float64)).astype(np.float32)
    e += np.float32(1.0)
    return np.reciprocal(e, out=e)


def window_max(x: np.ndarray, kernel: int = 3) -> np.ndarray:
    """``max_pool2d(x, kernel, stride=1, padding=(kernel - 1) // 2)`` of ``(C, H, W)`` maps, in numpy.

    The pooling pads with -inf, so border cells see only their in-image neighbours. The max filter
    is separable (rows, then columns): the same maxima with ``2 (kernel - 1)`` passes.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"local maximum kernel must be odd and positive, got {kernel}")
    r = (kernel - 1) // 2
    rows = x.copy()
    for d in range(1, r + 1):
        np.maximum(rows[:, :, d:], x[:, :, :-d], out=rows[:, :, d:])
        np.maximum(rows[:, :, :-d], x[:, :, d:], out=rows[:, :, :-d])
    out = rows.copy()
    for d in range(1, r + 1):
        np.maximum(out[:, d:, :], rows[:, :-d, :], out=out[:, d:, :])
        np.maximum(out[:, :-d, :], rows[:, d:, :], out=out[:, :-d, :])
    return out


def local_maximum(heat: np.ndarray, kernel: int = 3) -> np.ndarray:
    """mmdet's ``get_local_maximum``: ``heat * (max_pool2d(heat, kernel, 1, pad) == heat)``.

    Args:
        heat: ``(C, H, W)`` float32 (sigmoid scores).
        kernel: odd window size.

    Returns:
        ``(C, H, W)`` float32, zero except at local maxima (ties all survive, as in mmdet).
    """
    return np.where(window_max(heat, kernel) == heat, heat, np.float32(0.0))


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of a 1-D array, largest first.

    Among equal values the lower index comes first (ONNX TopK's rule), deterministically, including
    ties that straddle the k-th place.

    Args:
        values: ``(n,)`` array without NaNs.
        k: ``1 <= k <= n``.

    Returns:
        ``(k,)`` int64 indices.
    """
    n = values.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"top-k needs 0 < k <= {n}, got k={k}")
    if k < n:
        # Select on the negated values with a small kth: numpy's introselect is pathologically slow
        # for a kth near the end of an array full of equal values (a suppressed heatmap's zeros).
        neg = np.negative(values)
        kth = -neg[np.argpartition(neg, k - 1)[k - 1]]
        above = np.flatnonzero(values > kth)
        ties = np.flatnonzero(values == kth)[: k - above.size]
        cand = np.sort(np.concatenate([above, ties]))
    else:
        cand = np.arange(n)
    # Stable sort of candidates in index order: equal values keep the lower index first.
    order = np.argsort(-values[cand], kind="stable")
    return cand[order].astype(np.int64, copy=False)


def _topk_dense(logits: np.ndarray, k: int, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``local_maximum(sigmoid(logits))``, literally: the reference for :func:`topk_corners`."""
    flat = local_maximum(sigmoid(logits), kernel).reshape(-1)
    inds = topk_indices(flat, k)
    return flat[inds], inds


def _sigmoid_cut(t: np.float32) -> np.float32 | None:
    """A logit ``tau < t`` with ``sigmoid(x) < sigmoid(t)`` for every ``x <= tau``, or None.

    ``sigmoid`` is non-decreasing, so it is enough that ``sigmoid(tau) < sigmoid(t)``; ``tau`` steps
    down from ``t`` by doubling amounts (near 0 a few ulps of ``t`` can round to the same sigmoid).
    None when the sigmoid is flat all the way down (``t`` so low that it underflows to 0).
    """
    st = sigmoid(np.array([t], dtype=np.float32))[0]
    step = float(max(np.spacing(np.abs(t)), np.finfo(np.float32).tiny))
    lowest = float(np.finfo(np.float32).min)
    while float(t) - step > lowest:
        tau = np.float32(float(t) - step)
        if sigmoid(np.array([tau], dtype=np.float32))[0] < st:
            return tau
        step *= 2.0
    return None


def topk_corners(logits: np.ndarray, k: int = 100, kernel: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of mmdet's ``get_local_maximum(sigmoid(logits))`` over the flattened ``(C, H, W)`` map.

    Exactly the top-k of the literal computation (:func:`_topk_dense`; ties: lower flat index first),
    without taking the sigmoid of every cell. Because the sigmoid is non-decreasing, the window
    maximum of the sigmoid is the sigmoid of the logits' window maximum, and every logit local
    maximum survives the suppression. The k-th best logit peak ``t`` thus bounds the answer from
    below: no cell whose logit is at most a cut ``tau`` with ``sigmoid(tau) < sigmoid(t)`` can enter
    the top k. Only the cells above the cut (a few hundred in practice) get the sigmoid and the exact
    keep test ``sigmoid(x) == sigmoid(window max)``. Where the sigmoid saturates, the literal path
    runs. The two scans over the map are compiled (:mod:`runtime.decode_fast`).

    Args:
        logits: ``(C, H, W)`` float32 heatmap logits, finite.
        k: corners to keep.
        kernel: local-maximum window.

    Returns:
        ``(scores (k,) float32, inds (k,) int64)``, best first.
    """
    x = np.ascontiguousarray(logits, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"corner heatmap logits must be (C, H, W), got shape {x.shape}")
    if not 0 < k <= x.size:
        raise ValueError(f"corner top-k needs 0 < k <= {x.size} (C*H*W), got k={k}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"local maximum kernel must be odd and positive, got {kernel}")
    r = (kernel - 1) // 2
    t = np.float32(kth_peak(x, k, r))
    if np.isnan(t):  # fewer than k peaks
        return _topk_dense(x, k, kernel)
    tau = _sigmoid_cut(t)
    if tau is None:
        return _topk_dense(x, k, kernel)
    cand, vals, maxs = cells_above(x, tau, r)  # ascending, so index order breaks ties as on the full map
    s = sigmoid(vals)
    vals = np.where(s == sigmoid(maxs), s, np.float32(0.0))
    sel = topk_indices(vals, k)
    return vals[sel], cand[sel]


def _corners(
    heat: np.ndarray, emb: np.ndarray, off: np.ndarray, k: int, kernel: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k corners of one corner type: ``(scores (k,), inds (k,), embs (k,), offs (k, 2))``."""
    _, h, w = heat.shape
    scores, inds = topk_corners(heat, k, kernel)
    spatial = inds % (h * w)
    ys, xs = spatial // w, spatial % w
    embs = emb[0, ys, xs].astype(np.float32, copy=False)
    offs = off[:, ys, xs].T.astype(np.float32)  # [k, 2]: x offset, y offset
    return scores, inds, embs, offs


def corner_proposals(
    tl_heat: np.ndarray,
    br_heat: np.ndarray,
    tl_emb: np.ndarray,
    br_emb: np.ndarray,
    tl_off: np.ndarray,
    br_off: np.ndarray,
    k: int = 100,
    kernel: int = 3,
) -> CornerProposals:
    """Step 1 of decoding: top-k corners of one image from the raw head outputs (last stack).

    Args:
        tl_heat, br_heat: ``(C, H, W)`` heatmap logits (before sigmoid).
        tl_emb, br_emb: ``(1, H, W)`` embeddings.
        tl_off, br_off: ``(2, H, W)`` offsets, channel 0 x and channel 1 y.
        k: corners kept per corner type (``test_cfg.corner_topk``).
        kernel: local-maximum window (``test_cfg.local_maximum_kernel``).

    Returns:
        The image's :class:`CornerProposals`.
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in (tl_heat, br_heat, tl_emb, br_emb, tl_off, br_off)]
    tl_heat, br_heat, tl_emb, br_emb, tl_off, br_off = arrays
    c, h, w = tl_heat.shape
    for name, a, ch in (
        ("br_heat", br_heat, c),
        ("tl_emb", tl_emb, 1),
        ("br_emb", br_emb, 1),
        ("tl_off", tl_off, 2),
        ("br_off", br_off, 2),
    ):
        if a.shape != (ch, h, w):
            raise ValueError(
                f"{name} has shape {a.shape}, expected {(ch, h, w)} to go with tl_heat {(c, h, w)}"
            )
    tl = _corners(tl_heat, tl_emb, tl_off, k, kernel)
    br = _corners(br_heat, br_emb, br_off, k, kernel)
    return CornerProposals((h, w), *tl, *br)


def _corner_coords(
    inds: np.ndarray, offs: np.ndarray, feat_shape: tuple[int, int], meta: ImageMeta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class and image-pixel ``x, y`` of k corners, in mmdet's float32 order of operations.

    ``x = max(((x_feat + off_x) * (pad_w / W)) - border_left, 0)`` and likewise for ``y`` with
    ``pad_h / H`` and ``border_top``. There is no upper clip (mmdet has none).

    Returns:
        ``(classes (k,) int64, xs (k,) float32, ys (k,) float32)``.
    """
    h, w = feat_shape
    pad_h, pad_w = meta.pad_shape
    spatial = inds % (h * w)
    classes = inds // (h * w)
    # Integer grid positions become float32 before the offsets are added, as in torch.
    xs = (spatial % w).astype(np.float32) + offs[:, 0]
    ys = (spatial // w).astype(np.float32) + offs[:, 1]
    # torch multiplies a float32 tensor by the Python ratio rounded to float32.
    xs = xs * np.float32(pad_w / w)
    ys = ys * np.float32(pad_h / h)
    xs = xs - np.float32(meta.border[2])
    ys = ys - np.float32(meta.border[0])
    zero = np.float32(0.0)
    xs = np.where(xs > zero, xs, zero)
    ys = np.where(ys > zero, ys, zero)
    return classes, xs, ys


def _contiguous(dtype: type):
    """``a -> np.ascontiguousarray(a, dtype)``: the exact array types the compiled kernels take."""
    return lambda a: np.ascontiguousarray(a, dtype=dtype)


def pair_corners(
    props: CornerProposals,
    meta: ImageMeta,
    distance_threshold: float = 0.5,
    num_dets: int = 1000,
) -> Detections:
    """Step 2 of decoding: pair every TL corner with every BR corner, before NMS.

    A pair ``(i, j)`` (TL ``i``, BR ``j``; flat pair index ``i * k + j``) scores the mean of the two
    corner scores, or -1 when the classes differ, ``br_x <= tl_x``, ``br_y <= tl_y`` (after the
    mapping to image pixels) or ``|tl_emb - br_emb| > distance_threshold``. The best ``num_dets``
    pairs are taken and those scoring above -0.1 (the valid ones) returned.

    Args:
        props: one image's proposals.
        meta: that image's geometry (``pad_shape`` and ``border`` are used; boxes are not flipped).
        distance_threshold: embedding distance above which corners do not belong together.
        num_dets: pairs kept before the validity filter (mmdet's ``num_dets``); capped at the pair count.

    Returns:
        Up to ``num_dets`` detections in the view's own pixels, best first, not yet NMS-ed.
    """
    kt, kb = props.tl_scores.shape[0], props.br_scores.shape[0]
    if kt == 0 or kb == 0:
        return Detections.empty()
    if num_dets < 1:
        raise ValueError(f"num_dets must be at least 1, got {num_dets}")
    tl_cls, tl_xs, tl_ys = _corner_coords(props.tl_inds, props.tl_offs, props.feat_shape, meta)
    br_cls, br_xs, br_ys = _corner_coords(props.br_inds, props.br_offs, props.feat_shape, meta)
    f32, i64 = _contiguous(np.float32), _contiguous(np.int64)
    top, scores = pair_top(
        f32(props.tl_scores), i64(tl_cls), f32(tl_xs), f32(tl_ys), f32(props.tl_embs),
        f32(props.br_scores), i64(br_cls), f32(br_xs), f32(br_ys), f32(props.br_embs),
        np.float32(distance_threshold), _VALID_SCORE, num_dets,
    )  # fmt: skip
    ti, bj = top // kb, top % kb
    boxes = np.stack([tl_xs[ti], tl_ys[ti], br_xs[bj], br_ys[bj]], axis=1)
    return Detections(boxes=boxes, scores=scores, labels=tl_cls[ti])


def pair_corners_reference(
    props: CornerProposals,
    meta: ImageMeta,
    distance_threshold: float = 0.5,
    num_dets: int = 1000,
) -> Detections:
    """:func:`pair_corners` in numpy, the ``[k, k]`` grids literally: the reference for the tests."""
    kt, kb = props.tl_scores.shape[0], props.br_scores.shape[0]
    if kt == 0 or kb == 0:
        return Detections.empty()
    tl_cls, tl_xs, tl_ys = _corner_coords(props.tl_inds, props.tl_offs, props.feat_shape, meta)
    br_cls, br_xs, br_ys = _corner_coords(props.br_inds, props.br_offs, props.feat_shape, meta)

    # [k, k] grids: TL varies along rows, BR along columns (mmdet's layout).
    scores = (props.tl_scores[:, None] + props.br_scores[None, :]) / np.float32(2.0)
    dists = np.abs(props.tl_embs[:, None] - props.br_embs[None, :])
    invalid = (
        (tl_cls[:, None] != br_cls[None, :])
        | (br_xs[None, :] <= tl_xs[:, None])
        | (br_ys[None, :] <= tl_ys[:, None])
        | (dists > np.float32(distance_threshold))
    )
    scores = np.where(invalid, np.float32(-1.0), scores).reshape(-1)

    top = topk_indices(scores, min(num_dets, kt * kb))
    top = top[scores[top] > _VALID_SCORE]
    ti, bj = top // kb, top % kb
    boxes = np.stack([tl_xs[ti], tl_ys[ti], br_xs[bj], br_ys[bj]], axis=1).astype(np.float32, copy=False)
    return Detections(boxes=boxes, scores=scores[top], labels=tl_cls[ti].astype(np.int64))
