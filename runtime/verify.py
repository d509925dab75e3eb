"""The one verifier: a model under test against PyTorch fp32 on the same inputs, Polygraphy style.

Used by ``runtime.eval --verify`` and ``export.check`` (and whatever else compares). Feed it
the raw outputs of both (:meth:`Verifier.add_outputs`, one image at a time: leading dim = views) and
the decoded detections (:meth:`Verifier.add_detections`), then ask for a :class:`Verdict`. The verdict
is PASS only when every criterion passes; each criterion is reported with its measured value, its
threshold and its verdict (``PASSED | tl_scores | ...`` lines and a final ``k/n passed``).

Criteria, in the order they are checked:

1. ``finite``: every tested output is finite wherever the reference is (NaN/inf checked first).
2. One per output, by kind (the suffix of its name):

   - ``*_scores`` / ``*_embs`` / ``*_offs`` (top-k proposals): values of the *same corner* (same flat
     index, wherever it sits in each list) within ``atol + rtol * |ref|``. This is the sorted-value
     comparison made exact: ranks survive tie flips, but a corner that appears or vanishes at a
     tie shifts every lower rank, so a plain sort compares different corners (measured: 1e-3 on a
     lightly trained model whose ONNX Runtime export is exact). Measured value: the worst error in
     units of the tolerance (``max |test - ref| / (atol + rtol |ref|)``), threshold 1.
   - ``*_inds``: the fraction of corners on which both agree, not counting *ambiguous* corners (below);
     threshold ``min_index_agreement``.
   - anything else (the raw head maps ``tl_heat`` ..., extra outputs): element-wise, same measure.
3. ``detections``: the contract's matching rule (``runtime.matching``: same label, IoU >= ``match_iou``,
   |score diff| <= ``match_score_tol``, greedy in score order), matched reference detections /
   unambiguous reference detections >= ``min_match``, and (fp32) equal counts per image. Required by
   default, not only behind ``--min-match``.
4. ``ΔAP``: every one of the 12 COCO stats within ``ap_tol`` AP points (when stats are given).

The near-tie rule. A barely trained model has corner scores that differ by ~1e-6; float noise of
1e-7 then flips 3x3 local-maximum and top-k decisions (a plateau keeps one corner more or less, a
corner whose neighbour was 1e-8 higher becomes a peak, the k-th corner changes), and the paired
detections and soft-NMS re-scoring follow, so an exact export loses matches without any error
(measured: 395/400 matched on a tiny model trained 16 steps). We keep the criterion and exclude only
the decisions a tolerance-sized error may legitimately change, judged on the *reference's* own
heatmaps: the reference (PyTorch) always hands over its raw maps, the verifier takes top-k from them
itself (the decoder's numpy top-k), and knows every cell's score ``s`` and its *margin*, ``s`` minus
the largest other score in its local-maximum window. With ``d(s) = atol + rtol * s`` the scores'
tolerance, a corner in one list and not the other is *ambiguous* when

- it is the reference's: its margin is at most ``2 d`` (it nearly was no local maximum) or its score
  is within ``2 d`` of the top-k cut (the larger of the two lists' last scores); or
- it is the test's: its reference margin is at least ``-2 d`` (it nearly was a local maximum there)
  and its reference score is at least the lower of the two cuts minus ``2 d`` (a near-tie above may
  have pushed it out of the reference's list); its test score must match the reference's map.

A corner that is neither is provably in both lists when every test score is within ``d`` of the
reference, so a real error cannot hide behind the rule: a swapped class channel, a moved peak or a
scaled heatmap changes corners that are neither, or their values (the mutation matrix test shows
each failing). Ambiguous corners are left out of the index agreement's denominator. Detections are
decoded from the proposals by the same numpy code on both sides, so when an image's only proposal
differences are ambiguous ones and every shared corner is within tolerance, its unmatched detections
are consequences of near-ties: they are left out of the matched rate's denominator (and its count
may differ). Zero-score entries (an image with fewer local maxima than k) are fillers whose cells
are arbitrary; they are not compared. Everything excluded is reported. When the reference gives proposals only (no maps), the
evidence is the lists themselves: within ``2 d`` of the cut, or a same-class corner in the window
(needs ``feat_shape``) scored within ``2 d``.

Default tolerances (``Tolerances.for_precision``), as ``atol, rtol`` per output kind:

==========  ================  ================  ================  ==============================
precision   scores            embs / offs       raw heads         inds / matched / ΔAP (points)
==========  ================  ================  ================  ==============================
fp32        1e-6, 1e-4        5e-5, 5e-4        5e-5, 2e-4        0.99 / 0.99, IoU .999, 1e-4 / 0.01
fp16, bf16  2e-3, 1e-2        2e-2, 2e-2        5e-2, 2e-2        0.95 / 0.95, IoU .99, 2e-3 / 0.3
int8        1.5e-1, 5e-2      2e-1, 1e-1        5e-1, 1e-1        0.50 / 0.50, IoU .9, 5e-2 / 1.0
==========  ================  ================  ================  ==============================

fp32 is ONNX Runtime (or a TensorRT engine built without TF32) vs PyTorch. Measured on this
project's CPU (golden model and a tiny model trained 16 steps): scores within 4e-7, embeddings
within 1e-6, offsets within 6e-7. The bounds leave 10-50x headroom for deeper networks (HG-104's
error is larger than the tiny model's; a score's error is its logit's times s (1 - s), hence a mostly
relative bound), and a heatmap weight tensor scaled by 1.01 still exceeds them about 50-100x. fp16 (mixed precision, ``export.fp16``): scores within 6e-4,
embeddings 2e-3, offsets 8e-4 measured; counts may differ (soft-NMS's 1e-3 floor), so the fp16
rule does not demand equal counts. int8 is provisional and looser than fp16: percentile-calibrated
ONNX Runtime int8 measured scores within 0.13 (3 of 3342 corners above 0.05), embeddings 0.08,
offsets 0.06 (``export/quantize.py``); TensorRT int8 is not measured yet. Every value can be overridden per output (``--tol NAME=ATOL[,RTOL]``, NAME an output
name or a kind: ``scores``, ``embs``, ``offs``, ``heat``, ``emb``, ``off``, or ``all``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.coco import STAT_NAMES
from runtime.decode import Detections
from runtime.errors import UserError
from runtime.matching import match_detections
from runtime.meta import sha256_file
from runtime.names import HEAD_OUTPUTS, PROPOSAL_OUTPUTS

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: ΔAP tolerance in AP points (0-100 scale), contracts.md.
AP_TOLERANCE = {"fp32": 0.01, "fp16": 0.3, "bf16": 0.3, "int8": 1.0}
_DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "fp32": {
        # Scores are sigmoids: their error scales with s (1 - s) times the logit's, hence mostly relative.
        "scores": (1e-6, 1e-4),
        "embs": (5e-5, 5e-4),
        "offs": (5e-5, 5e-4),
        "heat": (5e-5, 2e-4),
        "emb": (5e-5, 5e-4),
        "off": (5e-5, 5e-4),
        "all": (5e-5, 5e-4),
    },
    "fp16": {
        "scores": (2e-3, 1e-2),
        "embs": (2e-2, 2e-2),
        "offs": (2e-2, 2e-2),
        "heat": (5e-2, 2e-2),
        "emb": (5e-2, 2e-2),
        "off": (5e-2, 2e-2),
        "all": (5e-2, 2e-2),
    },
    "int8": {  # provisional, looser than fp16 everywhere (ORT int8 measured: scores up to 0.13, embs 0.08)
        "scores": (1.5e-1, 5e-2),
        "embs": (2e-1, 1e-1),
        "offs": (2e-1, 1e-1),
        "heat": (5e-1, 1e-1),
        "emb": (5e-1, 1e-1),
        "off": (5e-1, 1e-1),
        "all": (5e-1, 1e-1),
    },
}
_DEFAULTS["bf16"] = _DEFAULTS["fp16"]
# (min index agreement, min matched rate, match IoU, match score tol, equal counts) per precision.
_RULES = {
    "fp32": (0.99, 0.99, 0.999, 1e-4, True),
    "fp16": (0.95, 0.95, 0.99, 2e-3, False),
    "bf16": (0.95, 0.95, 0.99, 2e-3, False),
    "int8": (0.5, 0.5, 0.9, 5e-2, False),
}


@dataclass(frozen=True)
class Tolerances:
    """Pass thresholds of every criterion; :meth:`for_precision` gives the documented defaults.

    Attributes:
        precision: the rule set these came from (``fp32``, ``fp16``, ``bf16``, ``int8``).
        outputs: ``name or kind -> (atol, rtol)``; an output's own name wins over its kind, then ``all``.
        min_index_agreement: fraction of unambiguous top-k corners that must agree (``*_inds``).
        min_match: fraction of unambiguous reference detections that must be matched.
        match_iou, match_score_tol: the matching rule's pair criteria.
        equal_counts: also demand equal detection counts per image (outside near-tie images).
        ap_tol: allowed |ΔAP| in AP points, every COCO stat.
        local_max_kernel, corner_topk: the decoder's local-maximum window and top-k (near-tie rule).
    """

    precision: str
    outputs: Mapping[str, tuple[float, float]]
    min_index_agreement: float
    min_match: float
    match_iou: float
    match_score_tol: float
    equal_counts: bool
    ap_tol: float
    local_max_kernel: int = 3
    corner_topk: int = 100

    @classmethod
    def for_precision(
        cls,
        precision: str,
        overrides: dict[str, tuple[float | None, float | None]] | None = None,
        ap_tol: float | None = None,
        min_match: float | None = None,
        min_index_agreement: float | None = None,
    ) -> Tolerances:
        """The defaults of ``precision``, with per-output ``(atol, rtol)`` overrides (``None`` keeps one)."""
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        outputs = dict(_DEFAULTS[precision])
        for name, (atol, rtol) in (overrides or {}).items():
            base = outputs.get(name, outputs.get(_kind(name), outputs["all"]))
            outputs[name] = (base[0] if atol is None else float(atol), base[1] if rtol is None else float(rtol))
        agree, match, iou, score_tol, counts = _RULES[precision]
        for label, value in (("--ap-tol", ap_tol), ("--min-match", min_match), ("--min-agree", min_index_agreement)):
            if value is not None and (value < 0 or (label != "--ap-tol" and value > 1)):
                raise UserError(f"{label} {value}: must be >= 0 (and at most 1 for a fraction)")
        return cls(
            precision=precision,
            outputs=outputs,
            min_index_agreement=agree if min_index_agreement is None else float(min_index_agreement),
            min_match=match if min_match is None else float(min_match),
            match_iou=iou,
            match_score_tol=score_tol,
            equal_counts=counts,
            ap_tol=AP_TOLERANCE[precision] if ap_tol is None else float(ap_tol),
        )

    def for_output(self, name: str) -> tuple[float, float]:
        """``(atol, rtol)`` of output ``name``: its own entry, else its kind's, else ``all``."""
        if name in self.outputs:
            return self.outputs[name]
        return self.outputs.get(_kind(name), self.outputs["all"])


def parse_tol(items: list[str] | None) -> dict[str, tuple[float | None, float | None]]:
    """``["tl_scores=1e-4,1e-3", "offs=0.01"]`` (``--tol``, repeatable) -> overrides for :class:`Tolerances`."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for item in items or []:
        name, _, values = item.partition("=")
        parts = values.split(",")
        try:
            atol = float(parts[0]) if parts[0] else None
            rtol = float(parts[1]) if len(parts) > 1 and parts[1] else None
        except ValueError:
            atol = rtol = -1.0
        if not name or not values or len(parts) > 2 or any(v is not None and not v >= 0 for v in (atol, rtol)):
            raise UserError(f"--tol {item!r}: expected NAME=ATOL[,RTOL] with non-negative numbers, e.g. tl_scores=1e-4,1e-3")
        out[name] = (atol, rtol)
    return out


def _kind(name: str) -> str:
    return name.rsplit("_", 1)[-1]


@dataclass
class Criterion:
    """One line of the verdict (JSON-serialisable)."""

    name: str
    measured: float | None
    threshold: float | None
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASSED' if self.passed else 'FAILED'} | {self.name:<10} | {self.detail}"


@dataclass
class Verdict:
    """PASS only when every criterion passes."""

    passed: bool
    criteria: list[Criterion]

    def table(self) -> str:
        lines = [c.line() for c in self.criteria]
        lines.append(f"{sum(c.passed for c in self.criteria)}/{len(self.criteria)} passed")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "criteria": [asdict(c) for c in self.criteria]}

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.criteria if not c.passed]


@dataclass
class _ValueStats:
    """Running error of one float output against its tolerance."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: float = 0.0  # max |d| / (atol + rtol |ref|)
    beyond: int = 0
    count: int = 0

    def update(self, ref: np.ndarray, test: np.ndarray, atol: float, rtol: float) -> None:
        ref64, test64 = np.asarray(ref, np.float64).ravel(), np.asarray(test, np.float64).ravel()
        keep = np.isfinite(ref64) & np.isfinite(test64)  # non-finite values are the 'finite' criterion's
        ref64, test64 = ref64[keep], test64[keep]
        if not ref64.size:
            return
        diff = np.abs(test64 - ref64)
        allowed = atol + rtol * np.abs(ref64)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(ref64), 1e-12)).max()))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(allowed > 0, diff / allowed, np.where(diff > 0, np.inf, 0.0))
        self.worst = max(self.worst, float(ratio.max()))
        self.beyond += int((diff > allowed).sum())
        self.count += int(ref64.size)


@dataclass
class _IndexStats:
    """Running agreement of one ``*_inds`` output under the near-tie rule."""

    agreed: int = 0
    differ: int = 0  # unambiguous corners in one list only
    ambiguous: int = 0  # corners in one list only, explained by a near-tie

    @property
    def agreement(self) -> float:
        n = self.agreed + self.differ
        return self.agreed / n if n else 1.0


@dataclass
class _Problems:
    """Shape or name mismatches: an output that cannot be compared fails its criterion."""

    messages: dict[str, str] = field(default_factory=dict)


class Verifier:
    """Accumulates outputs and detections of a model under test and its fp32 reference."""

    def __init__(self, tolerances: Tolerances) -> None:
        self.tol = tolerances
        self._values: dict[str, _ValueStats] = {}
        self._inds: dict[str, _IndexStats] = {}
        self._problems = _Problems()
        self._non_finite: dict[str, int] = {}
        self._outputs_seen = 0
        self._pending_ties: bool | None = None  # near-tie flag of the latest add_outputs, for its detections
        # detections
        self.images = 0
        self.matched = 0
        self.ref_detections = 0
        self.test_detections = 0
        self.ambiguous_detections = 0
        self.tie_images = 0
        self.unequal_counts = 0

    # ---------------------------------------------------------------------------------------------
    # outputs

    def add_outputs(
        self,
        ref: dict[str, np.ndarray],
        test: dict[str, np.ndarray],
        feat_shape: tuple[int, int] | None = None,
    ) -> None:
        """Compare the raw outputs of one image (or one batch) on identical input.

        Args:
            ref, test: ``name -> array`` with the same names; leading dim = views (or batch).
                Proposals: ``*_scores``/``*_inds``/``*_embs`` ``(N, K)``, ``*_offs`` ``(N, K, 2)``;
                heads: ``(N, C, H, W)`` maps.
            feat_shape: ``(H, W)`` of the heatmaps the ``*_inds`` refer to (enables the local-maximum
                part of the near-tie rule); inferred for head outputs.
        """
        self._outputs_seen += 1
        heat: dict[str, np.ndarray] = {}
        has_heads = all(n in ref for n in HEAD_OUTPUTS)
        if has_heads and any(n.endswith("_inds") for n in test) and not any(n in test for n in HEAD_OUTPUTS):
            # PyTorch gave its raw maps for a proposals model: top-k from them (the decoder's numpy
            # top-k, which reproduces PyTorch's), and the heatmaps for the exact near-tie rule.
            k = next((np.asarray(t).shape[-1] for n, t in test.items() if n.endswith("_scores")), 100)
            ref, heat = _proposals_from_heads(ref, k, self.tol.local_max_kernel)
        for name in sorted(set(ref) ^ set(test)):
            side = "test" if name in ref else "reference"
            self._problems.messages[name] = f"missing from the {side} outputs"
        names = [n for n in ref if n in test]
        arrays = {}
        for name in names:
            r, t = np.asarray(ref[name]), np.asarray(test[name])
            if r.shape != t.shape:
                self._problems.messages[name] = f"shape {t.shape} vs reference {r.shape}"
                continue
            arrays[name] = (r, t)
            if np.issubdtype(r.dtype, np.floating) or np.issubdtype(t.dtype, np.floating):
                bad = int((np.isfinite(r.astype(np.float64)) & ~np.isfinite(t.astype(np.float64))).sum())
                self._non_finite[name] = self._non_finite.get(name, 0) + bad

        clean = True  # no unambiguous proposal difference, every shared value within tolerance
        ties = False
        prefixes = sorted({n[: -len("inds")] for n in arrays if n.endswith("_inds")})
        done: set[str] = set()
        for prefix in prefixes:
            group = {kind: arrays.get(prefix + kind) for kind in ("scores", "inds", "embs", "offs")}
            if group["scores"] is None:
                continue
            c, t = self._add_corners(prefix, group, feat_shape, heat.get(prefix))
            clean &= c
            ties |= t
            done.update(prefix + kind for kind in ("scores", "inds", "embs", "offs"))
        for name, (r, t) in arrays.items():
            if name in done:
                continue
            if not np.issubdtype(r.dtype, np.floating):
                st = self._inds.setdefault(name, _IndexStats())
                eq = int((r == t).sum())
                st.agreed += eq
                st.differ += int(r.size) - eq
                clean &= eq == r.size
                continue
            stats = self._values.setdefault(name, _ValueStats())
            before = stats.beyond
            stats.update(r, t, *self.tol.for_output(name))
            clean &= stats.beyond == before
        if has_heads and all(n in arrays for n in HEAD_OUTPUTS):
            ties |= self._head_ties(arrays)
        self._pending_ties = bool(ties and clean and not self._problems.messages)

    def _add_corners(
        self,
        prefix: str,
        group: dict[str, tuple[np.ndarray, np.ndarray] | None],
        feat_shape: tuple[int, int] | None,
        heat: np.ndarray | None,
    ) -> tuple[bool, bool]:
        """Top-k corners of one type: values of shared corners, agreement under the near-tie rule.

        Args:
            group: ``kind -> (ref, test)`` for ``scores``, ``inds``, ``embs``, ``offs``.
            feat_shape: ``(H, W)`` the indices refer to, if known.
            heat: the reference's sigmoid heatmaps ``(N, C, H, W)``, if known (exact near-tie rule).

        Returns ``(clean, ties)``: no unambiguous difference and every value in tolerance; some
        ambiguous difference.
        """
        rs, ts = (a.reshape(-1, a.shape[-1]) for a in group["scores"])  # type: ignore[union-attr]
        ri, ti = (a.reshape(-1, a.shape[-1]).astype(np.int64) for a in group["inds"])  # type: ignore[union-attr]
        atol, rtol = self.tol.for_output(prefix + "scores")
        inds = self._inds.setdefault(prefix + "inds", _IndexStats())
        clean, ties = True, False
        for v in range(rs.shape[0]):
            # Zero scores are fillers (fewer local maxima than k): any non-peak cell may stand there.
            r_pos = {int(i): j for j, i in enumerate(ri[v]) if rs[v, j] != 0}
            t_pos = {int(i): j for j, i in enumerate(ti[v]) if ts[v, j] != 0}
            shared = [i for i in r_pos if i in t_pos]
            rj = np.array([r_pos[i] for i in shared], dtype=np.int64)
            tj = np.array([t_pos[i] for i in shared], dtype=np.int64)
            for kind in ("scores", "embs", "offs"):
                pair = group[kind]
                if pair is None:
                    continue
                r, t = (a.reshape(rs.shape[0], rs.shape[1], -1)[v] for a in pair)
                stats = self._values.setdefault(prefix + kind, _ValueStats())
                before = stats.beyond
                stats.update(r[rj], t[tj], *self.tol.for_output(prefix + kind))
                clean &= stats.beyond == before
            inds.agreed += len(shared)
            cut = max(float(rs[v, -1]), float(ts[v, -1]))
            if heat is not None and len(shared) < max(len(r_pos), len(t_pos)):  # margins only where needed
                maps = heat[v]
                flat, rival = maps.reshape(-1), _neighbour_max(maps, self.tol.local_max_kernel).reshape(-1)
            both = (np.concatenate([ri[v], ti[v]]), np.concatenate([rs[v], ts[v]]).astype(np.float64))
            extra_ref: list[float] = []
            extra_test: list[float] = []
            for pos, idx, scores in ((r_pos, ri[v], rs[v]), (t_pos, ti[v], ts[v])):
                other = t_pos if pos is r_pos else r_pos
                for j, i in enumerate(idx):
                    if int(i) in other or int(i) not in pos or pos[int(i)] != j:
                        continue
                    if heat is not None:
                        if not 0 <= i < flat.size:
                            ambiguous = False
                        else:
                            # Its reference score and local-max margin: within 2d of the cut and of
                            # being a local maximum, a tolerance-sized error may add or drop it.
                            s = float(flat[i])
                            band = 2 * (atol + rtol * abs(s))
                            margin = s - float(rival[i])
                            if pos is r_pos:  # in the reference only: nearly not kept, or at the cut
                                ambiguous = margin <= band or s <= cut + band
                            else:  # in the test only: nearly kept by the reference, at or above a cut
                                low = min(float(rs[v, -1]), float(ts[v, -1]))
                                ambiguous = margin >= -band and s >= low - band
                                extra_ref.append(s)  # its score, against the reference's map
                                extra_test.append(float(scores[j]))
                    else:
                        s = float(scores[j])
                        band = 2 * (atol + rtol * abs(s))
                        ambiguous = s <= cut + band or _near_tie_neighbour(
                            int(i), s, band, both, feat_shape, self.tol.local_max_kernel
                        )
                    if ambiguous:
                        inds.ambiguous += 1
                        ties = True
                    else:
                        inds.differ += 1
                        clean = False
            if extra_ref:
                stats = self._values[prefix + "scores"]
                before = stats.beyond
                stats.update(np.array(extra_ref), np.array(extra_test), atol, rtol)
                clean &= stats.beyond == before
        return clean, ties

    def _head_ties(self, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> bool:
        """Raw head maps on both sides: whether their top-k corners differ by near-ties only."""
        heads_r, heads_t = ({n: arrays[n][s] for n in HEAD_OUTPUTS} for s in (0, 1))
        if heads_r["tl_heat"].ndim != 4:
            return False
        shadow = Verifier(self.tol)
        props_t, _ = _proposals_from_heads(heads_t, self.tol.corner_topk, self.tol.local_max_kernel)
        shadow.add_outputs(heads_r, props_t)
        return bool(shadow._pending_ties)

    # ---------------------------------------------------------------------------------------------
    # detections

    def add_detections(self, ref: Detections, test: Detections) -> None:
        """Match one image's detections (call after that image's :meth:`add_outputs`, if any)."""
        tol = self.tol
        m = match_detections(ref, test, tol.match_iou, tol.match_score_tol, tol.min_match)
        ties, self._pending_ties = bool(self._pending_ties), None
        self.images += 1
        self.ref_detections += len(ref)
        self.test_detections += len(test)
        self.matched += m.matched
        if ties and (m.matched < len(ref) or len(ref) != len(test)):
            # Only near-tie differences upstream: what did not match is their consequence.
            self.tie_images += 1
            self.ambiguous_detections += len(ref) - m.matched
        elif len(ref) != len(test):
            self.unequal_counts += 1

    @property
    def match_rate(self) -> float:
        n = self.ref_detections - self.ambiguous_detections
        return self.matched / n if n > 0 else 1.0

    # ---------------------------------------------------------------------------------------------
    # verdict

    def verdict(
        self, test_stats: dict[str, float] | None = None, ref_stats: dict[str, float] | None = None
    ) -> Verdict:
        """Every criterion measured so far; PASS only when all pass."""
        crit: list[Criterion] = []
        bad = {n: k for n, k in self._non_finite.items() if k}
        crit.append(
            Criterion(
                "finite",
                float(sum(bad.values())),
                0.0,
                not bad,
                "every output finite" if not bad else "NaN/inf where the reference is finite: "
                + ", ".join(f"{n} ({k})" for n, k in bad.items()),
            )
        )
        names = sorted(set(self._values) | set(self._inds) | set(self._problems.messages), key=_output_order)
        for name in names:
            if name in self._problems.messages:
                crit.append(Criterion(name, None, None, False, self._problems.messages[name]))
            elif name in self._inds:
                st = self._inds[name]
                need = self.tol.min_index_agreement
                amb = f", {st.ambiguous} near-tie corners excluded" if st.ambiguous else ""
                crit.append(
                    Criterion(
                        name,
                        st.agreement,
                        need,
                        st.agreement >= need,
                        f"{100 * st.agreement:.2f}% of corners agree ({st.agreed} shared, {st.differ} differ{amb}) "
                        f"| need {100 * need:.0f}%",
                    )
                )
            else:
                vs = self._values[name]
                atol, rtol = self.tol.for_output(name)
                ok = vs.beyond == 0
                what = "" if vs.count else " | nothing compared (no shared corners)"
                crit.append(
                    Criterion(
                        name,
                        vs.worst,
                        1.0,
                        ok,
                        f"max abs {vs.max_abs:.2e} | max rel {vs.max_rel:.2e} | atol {atol:.0e} rtol {rtol:.0e} "
                        f"| {vs.beyond}/{vs.count} beyond{what}",
                    )
                )
        if self.images:
            rate, need = self.match_rate, self.tol.min_match
            counts_ok = self.unequal_counts == 0 or not self.tol.equal_counts
            ok = rate >= need and counts_ok
            amb = (
                f", {self.ambiguous_detections} near-tie detections on {self.tie_images} images excluded"
                if self.tie_images
                else ""
            )
            counts = f"counts differ on {self.unequal_counts}/{self.images} images" + (
                "" if self.tol.equal_counts else " (not required)"
            )
            crit.append(
                Criterion(
                    "detections",
                    rate,
                    need,
                    ok,
                    f"{self.matched}/{self.ref_detections - self.ambiguous_detections} matched ({100 * rate:.2f}%{amb}) "
                    f"| IoU >= {self.tol.match_iou} |score diff| <= {self.tol.match_score_tol:g} | need "
                    f"{100 * need:.0f}% | {counts}",
                )
            )
        if test_stats is not None and ref_stats is not None:
            dap = delta_ap(test_stats, ref_stats)
            worst = max(dap, key=lambda k: abs(dap[k]) if not math.isnan(dap[k]) else math.inf)
            value = abs(dap[worst])
            ok = not math.isnan(value) and value <= self.tol.ap_tol
            crit.append(
                Criterion(
                    "ΔAP",
                    value,
                    self.tol.ap_tol,
                    ok,
                    f"worst Δ{worst} {dap[worst]:+.3f} AP points | need within ±{self.tol.ap_tol}",
                )
            )
        if len(crit) == 1 and not self._outputs_seen:
            crit.append(Criterion("compared", 0.0, 1.0, False, "nothing was compared"))
        return Verdict(all(c.passed for c in crit), crit)


def _output_order(name: str) -> tuple[int, str]:
    order = {n: i for i, n in enumerate((*HEAD_OUTPUTS,))}
    return (order.get(name, 99), name)


def _near_tie_neighbour(
    idx: int,
    score: float,
    band: float,
    corners: tuple[np.ndarray, np.ndarray],
    feat_shape: tuple[int, int] | None,
    kernel: int,
) -> bool:
    """Is there another corner of the same class inside ``idx``'s local-maximum window, scored within ``band``?"""
    if feat_shape is None:
        return False
    h, w = (int(v) for v in feat_shape)
    inds, scores = corners
    c, y, x = idx // (h * w), (idx % (h * w)) // w, idx % w
    oc, oy, ox = inds // (h * w), (inds % (h * w)) // w, inds % w
    r = kernel // 2
    near = (oc == c) & (np.abs(oy - y) <= r) & (np.abs(ox - x) <= r) & (inds != idx)
    return bool(np.any(near & (np.abs(scores - score) <= band)))


def _neighbour_max(maps: np.ndarray, kernel: int) -> np.ndarray:
    """Largest value of the other cells of each ``kernel x kernel`` window of ``(C, H, W)`` maps (-inf outside)."""
    r = kernel // 2
    c, h, w = maps.shape
    padded = np.full((c, h + 2 * r, w + 2 * r), -np.inf, dtype=np.float64)
    padded[:, r : r + h, r : r + w] = maps
    out = np.full((c, h, w), -np.inf, dtype=np.float64)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                np.maximum(out, padded[:, r + dy : r + dy + h, r + dx : r + dx + w], out=out)
    return out


def _proposals_from_heads(
    heads: Mapping[str, np.ndarray], k: int, kernel: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw maps ``(N, C, H, W)`` -> proposal arrays ``(N, K)`` / ``(N, K, 2)`` and sigmoid heatmaps per prefix."""
    from runtime.decode import corner_proposals, sigmoid

    n = np.asarray(heads["tl_heat"]).shape[0]
    per_view = [corner_proposals(*(np.asarray(heads[h])[v] for h in HEAD_OUTPUTS), k=k, kernel=kernel) for v in range(n)]
    props = {name: np.stack([getattr(p, name) for p in per_view]) for name in PROPOSAL_OUTPUTS}
    heat = {f"{c}_": sigmoid(np.asarray(heads[f"{c}_heat"], dtype=np.float32)) for c in ("tl", "br")}
    return props, heat


def delta_ap(test: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """Per-stat difference in AP points (x100). Stats undefined in both (-1) give 0."""
    out = {}
    for name in STAT_NAMES:
        a, b = test[name], ref[name]
        out[name] = 0.0 if (a < 0 and b < 0) else 100.0 * (a - b)
    return out


def format_ap_table(
    test: dict[str, float], ref: dict[str, float], test_name: str, ref_name: str = "pytorch fp32"
) -> str:
    """The 12 COCO stats side by side with their ΔAP in points."""
    dap = delta_ap(test, ref)
    lines = [f"{'metric':<6} {test_name:>12} {ref_name:>12} {'ΔAP (pts)':>10}"]
    for name in STAT_NAMES:
        lines.append(f"{name:<6} {test[name]:>12.4f} {ref[name]:>12.4f} {dap[name]:>+10.3f}")
    return "\n".join(lines)


def resolve_reference(arg: str | None, info: dict[str, Any], flag: str = "--verify") -> Path:
    """The reference checkpoint: ``arg``, or (``None``/``"auto"``) the source recorded in the model's metadata.

    The recorded one is used only when it exists with the recorded sha256.

    Raises:
        UserError: the given file is missing, or nothing usable is recorded.
    """
    if arg is not None and arg != "auto":
        path = Path(arg)
        if not path.is_file():
            raise UserError(f"{flag} {path}: checkpoint not found; check the path")
        return path
    text, sha = info.get("source_checkpoint"), info.get("source_sha256")
    if not text:
        raise UserError(f"{flag} without CKPT: the model records no source checkpoint; pass {flag} CHECKPOINT.pth")
    path = Path(text)
    if not path.is_file():
        raise UserError(
            f"{flag}: the source checkpoint {path} recorded in the model is not there; pass {flag} CHECKPOINT.pth"
        )
    if sha and sha256_file(path) != sha:
        raise UserError(
            f"{flag}: {path} is not the checkpoint this model was built from (sha256 differs); pass {flag} CHECKPOINT.pth"
        )
    return path
