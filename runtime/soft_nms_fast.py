"""Compiled gaussian soft-NMS: the results of :func:`runtime.soft_nms.soft_nms_reference`, bit for bit.

:func:`soft_nms_kernel` is mmcv's loop (the facts that decide its output are listed in
:mod:`runtime.soft_nms`), reorganised so that most of a step vectorises, without changing a result:

- A step first weights every remaining box, in loops the compiler vectorises: IoU, weight, new
  score, and a count of scores below ``min_score``. mmcv weights each box once per step too, only
  interleaved with its removals; a box moved from the last position into a hole is weighted
  before or after the move alike. A box that does not overlap the selected one has weight
  ``exp(-0) = 1`` exactly; when such boxes are the majority (about 4 in 5 on a trained model's
  candidates) the exponential is taken of the others only, gathered into a dense array.
- Only when that count is not zero (in about one step in five on a trained model's candidates)
  are the boxes removed in mmcv's order: upwards through the positions, each low box replaced by
  the last box, which is examined at that position in turn.
- The next box is then found with mmcv's own scan: the first position of the highest score, a NaN
  at the first position staying first, a NaN elsewhere never taken.

The weight is ``float32(exp(float64(-(iou * iou) / sigma)))`` with the IoU and the argument in
float32, as the numpy reference computes it. The C library's ``exp`` costs more than the rest of a
step together, so :func:`_exp_or_nan` evaluates it with a polynomial that vectorises and returns
NaN wherever its float32 rounding could differ from the library's; those few then go to the library
(one argument in about a million, and every argument outside ``[-80, 0]``).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from runtime.jit import inline, kernel

_INV_LN2 = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2^20 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# Adding and subtracting 1.5 * 2^52 rounds a double of magnitude < 2^51 to an integer.
_ROUND = 6755399441055744.0
_C = [1.0 / math.factorial(j) for j in range(13)]
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12 = _C
# exp(r) for |r| <= ln2 / 2 by Taylor's degree-12 polynomial: truncation < 2^-51; the roundings of
# Estrin's evaluation with fused multiply-adds (at most 6 on any path) < 2^-50 times
# sum |c_i r^i| / p(r) <= e^ln2 = 2, so < 2^-49; with r's own error the double is within 2^-48.5 of
# exp(a) relatively, and the C library's exp within one double ulp (2^-52). If both ends of
# d * (1 -+ 2^-47) round to the same float32, the library's value, which lies between them, rounds
# there too.
_BELOW = 1.0 - 2.0**-47
_ABOVE = 1.0 + 2.0**-47


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
    """``a * b + c`` rounded once (the CPU's fused multiply-add where it has one)."""
    sig = types.float64(types.float64, types.float64, types.float64)
    return sig, lambda context, builder, signature, args: builder.fma(*args)


@intrinsic
def _pow2(typingctx, k):  # pragma: no cover - compiled
    """``2.0 ** k`` for an int64 ``k`` in ``[-1022, 1023]``: the double whose exponent field is ``k + 1023``."""

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(args[0], ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())

    return types.float64(types.int64), codegen


@inline
def _exp_or_nan(arg):  # pragma: no cover - compiled
    """``float32(exp(float64(arg)))`` for a float32 ``arg``, or NaN where the library must decide."""
    a = np.float64(arg)
    ok = (a >= -80.0) & (a <= 0.0)  # exp(a) is a normal float32 (False for NaN too)
    a = a if ok else 0.0
    kd = _fma(a, _INV_LN2, _ROUND) - _ROUND  # a = k ln2 + r with k = kd in [-116, 0]
    r = _fma(kd, -_LN2_HI, a)
    r = _fma(kd, -_LN2_LO, r)
    # Estrin's scheme: a short dependency chain, so the vectorised loop is not latency-bound.
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    s0 = _fma(_fma(_C3, r, _C2), r2, _fma(_C1, r, _C0))
    s1 = _fma(_fma(_C7, r, _C6), r2, _fma(_C5, r, _C4))
    s2 = _fma(_fma(_C11, r, _C10), r2, _fma(_C9, r, _C8))
    p = _fma(_fma(_C12, r4, s2), r8, _fma(s1, r4, s0))
    d = p * _pow2(np.int64(kd))  # exact: a power of two
    f = np.float32(d)
    ok = ok & (np.float32(d * _BELOW) == f) & (np.float32(d * _ABOVE) == f)
    return f if ok else np.float32(np.nan)


@inline
def _exp_float32(args, out):  # pragma: no cover - compiled
    """``out = float32(exp(float64(args)))`` elementwise: the polynomial, then the library where it must."""
    inexact = 0
    for j in range(args.shape[0]):
        e = _exp_or_nan(args[j])
        out[j] = e
        inexact += e != e
    if inexact:
        for j in range(args.shape[0]):
            if out[j] != out[j]:
                out[j] = np.float32(math.exp(np.float64(args[j])))


@kernel("void(float32[::1], float32[::1])")
def exp_float32(args, out):  # pragma: no cover - compiled
    """``out = float32(exp(float64(args)))`` elementwise, as the soft-NMS kernel computes its weights."""
    _exp_float32(args, out)


@kernel(
    "Tuple((int64[::1], float32[::1]))"
    "(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32, float32)"
)
def soft_nms_kernel(x1, y1, x2, y2, scores, sigma, min_score):  # pragma: no cover - compiled
    """mmcv's soft-NMS on ``(N,)`` float32 columns (N >= 1); returns ``(keep (M,), new_scores (M,))``."""
    n = scores.shape[0]
    # Columns by position, swapped and overwritten as mmcv does.
    px1, py1, px2, py2 = x1.copy(), y1.copy(), x2.copy(), y2.copy()
    area = (px2 - px1) * (py2 - py1)
    sc = scores.copy()
    idx = np.arange(n)
    out = np.empty(n, np.float32)
    arg = np.empty(n, np.float32)
    wt = np.empty(n, np.float32)
    hit_pos = np.empty(n, np.int64)
    hit_arg = np.empty(n, np.float32)
    hit_wt = np.empty(n, np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)

    best = 0
    for p in range(1, n):
        if sc[best] < sc[p]:
            best = p
    i = 0
    while i < n:
        px1[i], px1[best] = px1[best], px1[i]
        py1[i], py1[best] = py1[best], py1[i]
        px2[i], px2[best] = px2[best], px2[i]
        py2[i], py2[best] = py2[best], py2[i]
        area[i], area[best] = area[best], area[i]
        sc[i], sc[best] = sc[best], sc[i]
        idx[i], idx[best] = idx[best], idx[i]
        out[i] = sc[i]
        bx1, by1, bx2, by2, barea = px1[i], py1[i], px2[i], py2[i], area[i]
        i += 1
        if i >= n:
            break

        # Loops over slices from index 0 (an index that might be negative is wrapped around, which
        # turns loads into gathers); the branch-free ones vectorise.
        m = n - i
        rx1, ry1, rx2, ry2, rarea = px1[i:n], py1[i:n], px2[i:n], py2[i:n], area[i:n]
        rsc, rarg, rwt = sc[i:n], arg[i:n], wt[i:n]
        hits = 0
        for q in range(m):
            w = max(zero, min(bx2, rx2[q]) - max(bx1, rx1[q]))
            h = max(zero, min(by2, ry2[q]) - max(by1, ry1[q]))
            inter = w * h
            iou = inter / ((barea + rarea[q]) - inter)
            a = -(iou * iou) / sigma
            rarg[q] = a
            hits += a != zero
        if 4 * hits < 3 * m:
            # Most boxes do not overlap b: their argument is +-0 and their weight exp(0) = 1 exactly.
            # Take the exponential of the others only, gathered densely so that it still vectorises.
            k = 0
            for q in range(m):
                hit_pos[k] = q
                k += rarg[q] != zero
            hpos, harg, hwt = hit_pos[:k], hit_arg[:k], hit_wt[:k]
            for j in range(k):
                harg[j] = rarg[hpos[j]]
            _exp_float32(harg, hwt)
            for q in range(m):
                rwt[q] = one
            for j in range(k):
                rwt[hpos[j]] = hwt[j]
        else:
            _exp_float32(rarg, rwt)
        low = 0
        for q in range(m):
            s = rsc[q] * rwt[q]
            rsc[q] = s
            low += s < min_score

        # mmcv's removal, in its order: a low box's position takes the last box, examined in turn.
        # Weighting every box first changes nothing: each is weighted once, wherever it ends up.
        if low:
            p = i
            while p < n:
                if sc[p] < min_score:
                    last = n - 1
                    px1[p], py1[p], px2[p], py2[p] = px1[last], py1[last], px2[last], py2[last]
                    area[p], sc[p], idx[p] = area[last], sc[last], idx[last]
                    n -= 1
                else:
                    p += 1

        # mmcv's scan for the next box: the first of the highest scores (a NaN first stays first).
        best = i
        top = sc[i] if i < n else zero
        for p in range(i + 1, n):
            v = sc[p]
            if top < v:
                top = v
                best = p
    return idx[:n].copy(), out[:n].copy()
