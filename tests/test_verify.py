"""runtime.verify on hand-made outputs: each criterion passes on equal inputs and fails on the error it
exists to catch; near-ties are excluded only where a tolerance-sized error may decide them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.decode import Detections, corner_proposals
from runtime.errors import UserError
from runtime.meta import sha256_file
from runtime.names import HEAD_OUTPUTS, PROPOSAL_OUTPUTS
from runtime.verify import Tolerances, Verifier, parse_tol, resolve_reference

K = 12


def _heads(seed: int = 0, classes: int = 2, h: int = 10, w: int = 12) -> dict[str, np.ndarray]:
    """Raw maps of one view ``(1, C, H, W)``: well separated heat logits, random embeddings and offsets."""
    rng = np.random.default_rng(seed)
    return {
        "tl_heat": rng.normal(-3, 2, (1, classes, h, w)).astype(np.float32),
        "br_heat": rng.normal(-3, 2, (1, classes, h, w)).astype(np.float32),
        "tl_emb": rng.normal(0, 1, (1, 1, h, w)).astype(np.float32),
        "br_emb": rng.normal(0, 1, (1, 1, h, w)).astype(np.float32),
        "tl_off": rng.uniform(0, 1, (1, 2, h, w)).astype(np.float32),
        "br_off": rng.uniform(0, 1, (1, 2, h, w)).astype(np.float32),
    }


def _proposals(heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What an exported proposals model returns for these maps: ``(1, K)`` / ``(1, K, 2)``."""
    p = corner_proposals(*(heads[n][0] for n in HEAD_OUTPUTS), k=K)
    return {n: getattr(p, n)[None] for n in PROPOSAL_OUTPUTS}


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels))


def _criteria(verifier: Verifier, **stats: dict[str, float]) -> dict[str, bool]:
    return {c.name: c.passed for c in verifier.verdict(**stats).criteria}


DETS = _dets([[0, 0, 10, 10], [5, 5, 30, 40], [50, 50, 60, 70]], [0.9, 0.5, 0.2], [0, 1, 0])


def test_equal_outputs_pass_every_criterion_and_report_them() -> None:
    heads = _heads()
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(heads, _proposals(heads))  # reference maps vs a proposals model
    v.add_detections(DETS, DETS)
    stats = {name: 0.5 for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")}
    verdict = v.verdict(stats, stats)
    assert verdict.passed
    names = [c.name for c in verdict.criteria]
    assert names[0] == "finite" and names[-2:] == ["detections", "ΔAP"]
    assert set(PROPOSAL_OUTPUTS) <= set(names)
    table = verdict.table()
    assert "PASSED | tl_scores  | max abs 0.00e+00" in table and table.endswith(f"{len(names)}/{len(names)} passed")
    assert json.loads(json.dumps(verdict.to_dict()))["criteria"][0]["name"] == "finite"


def test_each_broken_output_fails_its_own_criterion() -> None:
    heads = _heads()
    good = _proposals(heads)
    cases = {
        "finite": lambda p: p["br_embs"].__setitem__((0, 3), np.nan),
        "tl_scores": lambda p: p["tl_scores"].__imul__(np.float32(1.001)),
        "tl_embs": lambda p: p["tl_embs"].__iadd__(np.float32(1e-3)),
        "br_offs": lambda p: p["br_offs"].__iadd__(np.float32(0.5)),
    }
    for criterion, breaks in cases.items():
        bad = {n: a.copy() for n, a in good.items()}
        breaks(bad)
        v = Verifier(Tolerances.for_precision("fp32"))
        v.add_outputs(heads, bad)
        result = _criteria(v)
        assert not result[criterion], criterion
        assert sum(not ok for ok in result.values()) == 1, (criterion, result)


def test_swapped_class_channels_fail_index_agreement_although_sorted_scores_are_equal() -> None:
    heads = _heads()
    swapped = {n: a.copy() for n, a in heads.items()}
    swapped["tl_heat"] = swapped["tl_heat"][:, ::-1].copy()
    test = _proposals(swapped)
    assert np.array_equal(np.sort(test["tl_scores"]), np.sort(_proposals(heads)["tl_scores"]))
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(heads, test)
    v.add_detections(DETS, _dets([[0, 0, 10, 10], [5, 5, 30, 40], [50, 50, 60, 70]], [0.9, 0.5, 0.2], [1, 1, 0]))
    result = _criteria(v)
    assert not result["tl_inds"] and not result["detections"]


def _near_tie(heads: dict[str, np.ndarray], gap: float) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    """A top-left peak (logit 1.5, a top-k corner) with a rival ``gap`` logits below it on its right."""
    tied = {n: a.copy() for n, a in heads.items()}
    heat = tied["tl_heat"][0]
    c, y, x = 0, 4, 5
    heat[c, y - 1 : y + 2, x - 1 : x + 3] = -10.0
    heat[c, y, x] = 1.5
    heat[c, y, x + 1] = 1.5 - gap
    return tied, (c, y, x + 1)


def test_a_near_tie_flip_is_excluded_and_its_detections_too() -> None:
    ref, rival = _near_tie(_heads(), 1e-5)
    flipped = {n: a.copy() for n, a in ref.items()}
    flipped["tl_heat"][(0, *rival)] = 1.5 + 1e-5  # float noise: the rival wins the local maximum
    test = _proposals(flipped)
    assert not np.array_equal(test["tl_inds"], _proposals(ref)["tl_inds"])
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(ref, test)
    moved = _dets([[0, 0, 10, 10], [9, 5, 30, 40], [50, 50, 60, 70]], [0.9, 0.5, 0.2], [0, 1, 0])
    v.add_detections(DETS, moved)
    verdict = v.verdict()
    assert verdict.passed, verdict.table()
    assert "2 near-tie corners excluded" in verdict.table() and "1 near-tie detections on 1 images" in verdict.table()

    # The same detection difference after outputs that agree exactly has no near-tie to blame.
    strict = Verifier(Tolerances.for_precision("fp32"))
    strict.add_outputs(ref, _proposals(ref))
    strict.add_detections(DETS, moved)
    assert not _criteria(strict)["detections"]


def test_a_peak_moved_by_a_real_error_is_not_a_near_tie() -> None:
    ref, rival = _near_tie(_heads(), 0.5)  # a clear peak: 0.5 logits above its neighbour
    moved = {n: a.copy() for n, a in ref.items()}
    moved["tl_heat"][(0, *rival)] = 2.0
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(ref, _proposals(moved))
    assert not _criteria(v)["tl_inds"]


def test_fp16_rules_are_looser_and_overridable() -> None:
    fp32, fp16, int8 = (Tolerances.for_precision(p) for p in ("fp32", "fp16", "int8"))
    assert fp32.for_output("tl_scores") < fp16.for_output("tl_scores") < int8.for_output("tl_scores")
    assert fp32.ap_tol == 0.01 and fp16.ap_tol == 0.3 and fp32.min_match == 0.99 and fp32.equal_counts
    assert fp16.match_score_tol > fp32.match_score_tol and not fp16.equal_counts
    t = Tolerances.for_precision("fp32", parse_tol(["tl_scores=1e-3", "offs=,0.5", "all=1,1"]), ap_tol=0.5)
    assert t.for_output("tl_scores") == (1e-3, fp32.for_output("scores")[1])
    assert t.for_output("br_offs") == (fp32.for_output("offs")[0], 0.5)
    assert t.for_output("something_else") == (1.0, 1.0) and t.ap_tol == 0.5
    heads = _heads()
    test = _proposals(heads)
    test["tl_scores"] = test["tl_scores"] + np.float32(5e-4)
    for tol, ok in ((fp32, False), (fp16, True)):
        v = Verifier(tol)
        v.add_outputs(heads, test)
        assert _criteria(v)["tl_scores"] is ok
    for bad in (["tl_scores"], ["tl_scores=x"], ["=1"], ["a=1,2,3"], ["a=-1"]):
        with pytest.raises(UserError, match="--tol"):
            parse_tol(bad)
    with pytest.raises(UserError, match="precision"):
        Tolerances.for_precision("fp8")


def test_delta_ap_and_counts() -> None:
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    ref = dict.fromkeys(names, 0.5)
    test = {**ref, "AP75": 0.5002}  # 0.02 AP points
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_detections(DETS, DETS)
    assert not _criteria(v, test_stats=test, ref_stats=ref)["ΔAP"]
    assert _criteria(Verifier(Tolerances.for_precision("fp16")), test_stats=test, ref_stats=ref)["ΔAP"]
    v.add_detections(DETS, DETS.take(slice(0, 2)))  # one detection fewer: counts differ
    for precision, ok in (("fp32", False), ("fp16", True)):
        w = Verifier(Tolerances.for_precision(precision, min_match=0.5))
        w.add_detections(DETS, DETS.take(slice(0, 2)))
        assert _criteria(w)["detections"] is ok, precision


def test_mismatched_names_and_shapes_fail() -> None:
    heads = _heads()
    test = _proposals(heads)
    del test["br_offs"]
    test["tl_embs"] = test["tl_embs"][:, :5]
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(heads, test)
    result = _criteria(v)
    assert not result["br_offs"] and not result["tl_embs"] and not v.verdict().passed
    assert not Verifier(Tolerances.for_precision("fp32")).verdict().passed  # nothing compared is no pass


def test_resolve_reference(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"weights")
    info = {"source_checkpoint": str(ckpt), "source_sha256": sha256_file(ckpt)}
    assert resolve_reference(None, info) == ckpt == resolve_reference("auto", info)
    assert resolve_reference(str(ckpt), {}) == ckpt
    with pytest.raises(UserError, match=r"--against .*not found"):
        resolve_reference(str(tmp_path / "missing.pth"), info, "--against")
    with pytest.raises(UserError, match="records no source checkpoint"):
        resolve_reference(None, {})
    with pytest.raises(UserError, match="sha256 differs"):
        resolve_reference(None, {**info, "source_sha256": "0" * 64})
    with pytest.raises(UserError, match="is not there"):
        resolve_reference(None, {"source_checkpoint": str(tmp_path / "gone.pth")})


def test_raw_head_outputs_are_compared_element_wise_with_the_same_near_tie_rule() -> None:
    ref, rival = _near_tie(_heads(), 1e-5)
    flipped = {n: a.copy() for n, a in ref.items()}
    flipped["tl_heat"][(0, *rival)] = 1.5 + 1e-5
    moved = _dets([[0, 0, 10, 10], [9, 5, 30, 40], [50, 50, 60, 70]], [0.9, 0.5, 0.2], [0, 1, 0])
    v = Verifier(Tolerances.for_precision("fp32"))
    v.add_outputs(ref, flipped)  # a heads model: six maps on both sides
    v.add_detections(DETS, moved)
    verdict = v.verdict()
    assert verdict.passed, verdict.table()
    assert [c.name for c in verdict.criteria][1:7] == list(HEAD_OUTPUTS)

    scaled = {n: a.copy() for n, a in ref.items()}
    scaled["br_heat"] *= np.float32(1.01)
    w = Verifier(Tolerances.for_precision("fp32"))
    w.add_outputs(ref, scaled)
    w.add_detections(DETS, moved)
    result = _criteria(w)
    assert not result["br_heat"] and not result["detections"]  # no near-tie to blame the moved box on
