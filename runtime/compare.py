"""Backend-vs-reference comparison, Polygraphy style: per-output errors, matched detections, ΔAP.

Results are plain dataclasses that turn into JSON (``--report``) and into a text table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.coco import STAT_NAMES
from runtime.decode import Detections
from runtime.matching import match_detections

# Tolerances in AP points (0-100 scale of published tables), per contracts.md.
AP_TOLERANCE = {"fp32": 0.01, "fp16": 0.3, "bf16": 0.3}


@dataclass
class OutputError:
    """Running error statistics of one named output."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    count: int = 0
    agree: int = 0  # integer outputs: equal elements
    non_finite: int = 0  # NaN/inf in the tested output where the reference is finite
    integer: bool = False

    def update(self, ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> None:
        if ref.shape != test.shape:
            raise ValueError(f"output {self.name}: shape {test.shape} vs reference {ref.shape}")
        if not np.issubdtype(ref.dtype, np.floating):
            self.integer = True
            self.agree += int((ref == test).sum())
            self.count += ref.size
            return
        ref64, test64 = ref.astype(np.float64), test.astype(np.float64)
        if mask is not None:  # compare only where both picked the same corner
            ref64, test64 = ref64[mask], test64[mask]
        finite = np.isfinite(ref64)
        self.non_finite += int((finite & ~np.isfinite(test64)).sum())
        diff = np.abs(ref64 - test64)[finite]
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            rel = diff / np.maximum(np.abs(ref64[finite]), 1e-6)
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.sum_abs += float(diff.sum())
        self.count += int(diff.size)

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.count if self.count else 0.0

    def summary(self) -> dict[str, float | int | str | bool]:
        d = asdict(self)
        d["mean_abs"] = self.mean_abs
        if self.integer:
            d["agreement"] = self.agree / max(self.count, 1)
        return d


@dataclass
class Comparison:
    """Accumulates everything ``--verify`` reports."""

    outputs: dict[str, OutputError] = field(default_factory=dict)
    matched: int = 0
    ref_detections: int = 0
    test_detections: int = 0
    images_with_equal_counts: int = 0
    images: int = 0

    def add_outputs(self, ref: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        for name in ref:
            if name not in test:
                continue
            err = self.outputs.setdefault(name, OutputError(name))
            mask = None
            prefix = name[:3]
            # Proposal outputs: embeddings/offsets are comparable only where both chose the same corner.
            if name.endswith(("_embs", "_offs")) and f"{prefix}inds" in ref and f"{prefix}inds" in test:
                same = ref[f"{prefix}inds"] == test[f"{prefix}inds"]
                mask = same if name.endswith("_embs") else np.repeat(same[..., None], 2, axis=-1)
            err.update(ref[name], test[name], mask)

    def add_detections(self, ref: Detections, test: Detections) -> None:
        m = match_detections(ref, test)
        self.matched += m.matched
        self.ref_detections += len(ref)
        self.test_detections += len(test)
        self.images_with_equal_counts += int(len(ref) == len(test))
        self.images += 1

    @property
    def match_rate(self) -> float:
        return self.matched / self.ref_detections if self.ref_detections else 1.0


def delta_ap(test: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """Per-metric difference in AP points (x100). Metrics undefined in both (-1) give 0."""
    out = {}
    for name in STAT_NAMES:
        a, b = test[name], ref[name]
        out[name] = 0.0 if (a < 0 and b < 0) else 100.0 * (a - b)
    return out


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]


def judge(comparison: Comparison, dap: dict[str, float], ap_tol: float, min_match: float) -> Verdict:
    """Pass when every |ΔAP| <= ap_tol, outputs are finite, and matched detections >= min_match."""
    reasons = []
    worst = max(dap, key=lambda k: abs(dap[k]))
    if abs(dap[worst]) > ap_tol or math.isnan(dap[worst]):
        reasons.append(f"Δ{worst} = {dap[worst]:+.3f} AP points exceeds ±{ap_tol}")
    bad = [e.name for e in comparison.outputs.values() if e.non_finite]
    if bad:
        reasons.append(f"NaN/inf where the reference is finite in {', '.join(bad)}")
    if comparison.match_rate < min_match:
        reasons.append(
            f"only {100 * comparison.match_rate:.2f}% of reference detections matched (need {100 * min_match:.0f}%)"
        )
    return Verdict(not reasons, reasons)


def format_output_table(comparison: Comparison) -> str:
    lines = [f"{'output':<10} {'max abs':>10} {'max rel':>10} {'mean abs':>10}  agreement"]
    for e in comparison.outputs.values():
        if e.integer:
            lines.append(
                f"{e.name:<10} {'-':>10} {'-':>10} {'-':>10}  {100 * e.agree / max(e.count, 1):.2f}% equal"
            )
        else:
            flag = f"  {e.non_finite} non-finite" if e.non_finite else ""
            lines.append(f"{e.name:<10} {e.max_abs:>10.2e} {e.max_rel:>10.2e} {e.mean_abs:>10.2e}{flag}")
    lines.append(
        f"detections: {comparison.matched}/{comparison.ref_detections} reference detections matched "
        f"({100 * comparison.match_rate:.2f}%), counts equal on {comparison.images_with_equal_counts}/{comparison.images} images"
    )
    return "\n".join(lines)


def format_ap_table(
    test: dict[str, float], ref: dict[str, float], dap: dict[str, float], test_name: str, ref_name: str
) -> str:
    lines = [f"{'metric':<6} {test_name:>12} {ref_name:>12} {'ΔAP (pts)':>10}"]
    for name in STAT_NAMES:
        lines.append(f"{name:<6} {test[name]:>12.4f} {ref[name]:>12.4f} {dap[name]:>+10.3f}")
    return "\n".join(lines)
