"""CornerNet decoding: the golden mmdet detections, hand cases with known answers, flip merge, matching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime.decode import (
    CornerProposals,
    Detections,
    _topk_dense,
    corner_proposals,
    local_maximum,
    pair_corners,
    sigmoid,
    topk_corners,
    topk_indices,
    window_max,
)
from runtime.matching import box_iou, match_detections
from runtime.meta import ModelMeta, TestConfig
from runtime.names import HEAD_OUTPUTS, PROPOSAL_OUTPUTS
from runtime.pipeline import decode_outputs
from runtime.postprocess import postprocess, unflip_boxes
from runtime.preprocess import ImageMeta
from tests.data.golden_codec import golden_images

F = np.float32
CFG = TestConfig()


def as_detections(items: list[dict]) -> Detections:
    """mmdet's JSON detections (``bbox`` xyxy, ``score``, ``label``) as :class:`Detections`."""
    return Detections(
        boxes=np.array([d["bbox"] for d in items], np.float32).reshape(-1, 4),
        scores=np.array([d["score"] for d in items], np.float32),
        labels=np.array([d["label"] for d in items], np.int64),
    )


# --- golden: mmdet 3.3.0's own decode + mmcv soft-NMS -------------------------------------------


@pytest.fixture(scope="module")
def golden_records(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "detections.json").read_text())


@pytest.fixture(scope="module")
def golden_heads(golden_dir: Path, golden_records) -> dict[str, dict[str, np.ndarray]]:
    with np.load(golden_dir / "outputs.npz") as z:
        return {
            r["file"]: {name: z[f"{r['file']}/{name}"][0] for name in HEAD_OUTPUTS} for r in golden_records
        }


def decode_heads(heads: dict[str, np.ndarray], meta: ImageMeta, cfg: TestConfig) -> Detections:
    """One image's raw last-stack heads through the production path (what a ``--outputs heads`` model gets)."""
    model = ModelMeta(classes=tuple(f"c{i}" for i in range(heads["tl_heat"].shape[-3])), test_cfg=cfg)
    batched = {k: v if v.ndim == 4 else v[None] for k, v in heads.items()}
    [dets] = decode_outputs(batched, [[meta]], model)
    return dets


@pytest.mark.parametrize("index", range(len(golden_images())))
def test_golden_detections(index, golden_records, golden_heads):
    record = golden_records[index]
    meta = ImageMeta(tuple(record["ori_shape"]), tuple(record["pad_shape"]), tuple(record["border"]))
    out = decode_heads(golden_heads[record["file"]], meta, CFG)
    ref = as_detections(record["detections"])
    result = match_detections(ref, out)
    assert result.ok, f"{record['file']}: {result}"
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32 and out.labels.dtype == np.int64
    # Stronger than the rule, as observed: same boxes bit for bit, same order, scores within a few
    # ulps (our sigmoid/exp round correctly, torch's and glibc's vectorised ones not always).
    assert np.array_equal(out.boxes, ref.boxes) and np.array_equal(out.labels, ref.labels)
    assert np.max(np.abs(out.scores - ref.scores)) < 1e-6


@pytest.fixture(scope="module")
def hg104(golden_dir: Path) -> tuple[dict[str, np.ndarray], ImageMeta, Detections]:
    record = json.loads((golden_dir / "decode_hg104.json").read_text())
    with np.load(golden_dir / "decode_hg104.npz") as z:
        heads = {name: z[name][0].astype(np.float32) for name in HEAD_OUTPUTS}  # stored as fp16
    m = record["meta"]
    meta = ImageMeta(tuple(m["ori_shape"][:2]), tuple(m["pad_shape"][:2]), tuple(m["border"]))
    return heads, meta, as_detections(record["detections"])


def test_full_scale_hg104(hg104):
    heads, meta, ref = hg104
    assert heads["tl_heat"].shape == (80, 128, 192)
    out = decode_heads(heads, meta, CFG)
    result = match_detections(ref, out)
    assert result.ok, str(result)
    assert result.matched == 100


def test_fast_topk_equals_literal_on_golden(hg104, golden_heads):
    maps = [hg104[0]["tl_heat"], hg104[0]["br_heat"]]
    maps += [h[name] for h in golden_heads.values() for name in ("tl_heat", "br_heat")]
    for logits in maps:
        for got, want in zip(topk_corners(logits, 100, 3), _topk_dense(logits, 100, 3), strict=True):
            assert np.array_equal(got, want)


# --- hand cases: one TL/BR pair with a known box ------------------------------------------------

# 8x8 features on a 32x32 canvas (scale 4), image at rows 4..28 and columns 2..26.
FEAT = (8, 8)
META = ImageMeta(ori_shape=(24, 24), pad_shape=(32, 32), border=(4.0, 28.0, 2.0, 26.0))


def make_heads(
    tl: list[tuple[int, int, int, float]],
    br: list[tuple[int, int, int, float]],
    tl_emb: float = 0.25,
    br_emb: float = 0.5,
    tl_off: tuple[float, float] = (0.0, 0.0),
    br_off: tuple[float, float] = (0.0, 0.0),
    classes: int = 2,
) -> dict[str, np.ndarray]:
    """Heads with peaks at ``(class, y, x, logit)`` and constant embeddings/offsets elsewhere."""
    h, w = FEAT
    heads = {
        "tl_heat": np.full((classes, h, w), -20.0, np.float32),
        "br_heat": np.full((classes, h, w), -20.0, np.float32),
        "tl_emb": np.full((1, h, w), tl_emb, np.float32),
        "br_emb": np.full((1, h, w), br_emb, np.float32),
        "tl_off": np.empty((2, h, w), np.float32),
        "br_off": np.empty((2, h, w), np.float32),
    }
    heads["tl_off"][0], heads["tl_off"][1] = tl_off
    heads["br_off"][0], heads["br_off"][1] = br_off
    for c, y, x, v in tl:
        heads["tl_heat"][c, y, x] = v
    for c, y, x, v in br:
        heads["br_heat"][c, y, x] = v
    return heads


def decode_one(heads: dict[str, np.ndarray], k: int = 1, meta: ImageMeta = META) -> Detections:
    props = corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=k)
    return pair_corners(props, meta)


def test_single_pair_exact_box():
    heads = make_heads(tl=[(1, 2, 1, 5.0)], br=[(1, 6, 5, 3.0)], tl_off=(0.25, 0.5), br_off=(0.75, 0.125))
    dets = decode_one(heads)
    assert len(dets) == 1
    # x1 = (1 + 0.25) * 4 - 2, y1 = (2 + 0.5) * 4 - 4, x2 = (5 + 0.75) * 4 - 2, y2 = (6 + 0.125) * 4 - 4
    assert dets.boxes[0].tolist() == [3.0, 6.0, 21.0, 20.5]
    assert dets.labels.tolist() == [1]
    want = (sigmoid(np.array([5.0], F))[0] + sigmoid(np.array([3.0], F))[0]) / F(2)
    assert dets.scores[0] == want
    assert dets.scores[0] == pytest.approx((1 / (1 + math.exp(-5)) + 1 / (1 + math.exp(-3))) / 2, rel=1e-6)


def test_proposal_fields():
    heads = make_heads(tl=[(1, 2, 1, 5.0)], br=[(0, 6, 5, 3.0)], tl_off=(0.25, 0.5), br_off=(0.75, 0.125))
    props = corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=3)
    assert props.feat_shape == FEAT and props.k == 3
    assert props.tl_inds[0] == 1 * 64 + 2 * 8 + 1 and props.br_inds[0] == 0 * 64 + 6 * 8 + 5
    assert props.tl_offs.shape == (3, 2) and props.tl_offs[0].tolist() == [0.25, 0.5]
    assert props.tl_inds.dtype == np.int64 and props.tl_scores.dtype == np.float32
    assert props.tl_embs.tolist() == [0.25] * 3
    assert np.all(np.diff(props.tl_scores) <= 0)


def test_clamp_at_zero_and_no_upper_clip():
    # TL left of and above the image: clamped to 0. BR beyond the image's right/bottom: kept as is.
    heads = make_heads(tl=[(0, 0, 0, 4.0)], br=[(0, 7, 7, 4.0)], tl_off=(0.1, 0.2), br_off=(0.9, 0.9))
    dets = decode_one(heads)
    assert dets.boxes[0, :2].tolist() == [0.0, 0.0]
    assert dets.boxes[0, 2] == F(F(F(7 + F(0.9)) * F(4.0)) - F(2.0))  # 29.6 > image width 24
    assert dets.boxes[0, 3] == F(F(F(7 + F(0.9)) * F(4.0)) - F(4.0))  # 27.6 > image height 24


def test_scale_uses_pad_over_feature_size_in_float32():
    meta = ImageMeta(ori_shape=(100, 100), pad_shape=(31, 33), border=(0.0, 31.0, 0.0, 33.0))
    heads = make_heads(tl=[(0, 1, 1, 4.0)], br=[(0, 5, 6, 4.0)])
    dets = decode_one(heads, meta=meta)
    assert dets.boxes[0].tolist() == [F(33 / 8), F(31 / 8), F(6) * F(33 / 8), F(5) * F(31 / 8)]


@pytest.mark.parametrize(
    ("case", "heads"),
    [
        ("class mismatch", make_heads(tl=[(0, 1, 1, 4.0)], br=[(1, 5, 5, 4.0)])),
        ("br left of tl", make_heads(tl=[(0, 1, 5, 4.0)], br=[(0, 5, 2, 4.0)])),
        ("br above tl", make_heads(tl=[(0, 5, 1, 4.0)], br=[(0, 2, 5, 4.0)])),
        ("zero width", make_heads(tl=[(0, 1, 3, 4.0)], br=[(0, 5, 3, 4.0)])),
        # both clamp to 0 in the image frame: br_x <= tl_x after clamping
        ("equal after clamp", make_heads(tl=[(0, 1, 0, 4.0)], br=[(0, 5, 0, 4.0)], br_off=(0.3, 0.0))),
        ("embedding distance > 0.5", make_heads(tl=[(0, 1, 1, 4.0)], br=[(0, 5, 5, 4.0)], br_emb=0.875)),
    ],
)
def test_invalid_pairs_rejected(case, heads):
    assert len(decode_one(heads)) == 0, case


def test_embedding_distance_exactly_threshold_is_kept():
    heads = make_heads(tl=[(0, 1, 1, 4.0)], br=[(0, 5, 5, 4.0)], tl_emb=0.25, br_emb=0.75)
    assert len(decode_one(heads)) == 1


def test_all_pairs_and_num_dets():
    # 2 TL x 2 BR of one class, all valid: 4 boxes, best first; num_dets caps them.
    heads = make_heads(tl=[(0, 0, 0, 5.0), (0, 2, 2, 3.0)], br=[(0, 6, 6, 4.0), (0, 4, 4, 2.0)])
    props = corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=2)
    dets = pair_corners(props, META)
    s = {v: sigmoid(np.array([v], F))[0] for v in (5.0, 3.0, 4.0, 2.0)}
    assert dets.scores.tolist() == [
        (s[5.0] + s[4.0]) / F(2),
        (s[3.0] + s[4.0]) / F(2),
        (s[5.0] + s[2.0]) / F(2),
        (s[3.0] + s[2.0]) / F(2),
    ]
    assert len(pair_corners(props, META, num_dets=3)) == 3


def test_tie_breaking_lower_flat_index_first():
    # Equal peaks: the lower flat index (class-major, then row, then column) wins.
    heads = make_heads(tl=[(1, 0, 0, 4.0), (0, 5, 5, 4.0), (0, 5, 1, 4.0)], br=[(0, 7, 7, 4.0)])
    props = corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=2)
    assert props.tl_inds.tolist() == [5 * 8 + 1, 5 * 8 + 5]
    assert topk_indices(np.array([1, 3, 3, 2, 3], F), 2).tolist() == [1, 2]
    assert topk_indices(np.array([0, 0, 0, 0], F), 3).tolist() == [0, 1, 2]
    assert topk_indices(np.array([2, 1, 2], F), 3).tolist() == [0, 2, 1]


def test_local_maximum_keeps_ties_and_uses_sigmoid_space():
    heat = np.zeros((1, 4, 5), F)
    heat[0, 1, 1] = heat[0, 1, 2] = 0.7  # a plateau: both survive, as with mmdet's max_pool == heat
    heat[0, 3, 4] = 0.2
    kept = local_maximum(heat)
    assert kept[0, 1, 1] == kept[0, 1, 2] == F(0.7)
    assert kept[0, 3, 4] == F(0.2) and kept[0, 2, 2] == 0.0
    # Logits 20 and 25 are different, but their sigmoids are both 1.0 in float32: both are peaks.
    logits = np.full((1, 4, 5), -5.0, F)
    logits[0, 1, 1], logits[0, 1, 2] = 25.0, 20.0
    scores, inds = topk_corners(logits, k=2)
    assert scores.tolist() == [1.0, 1.0] and inds.tolist() == [6, 7]


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_window_max_equals_padded_max_pool(kernel):
    # max_pool2d(x, kernel, stride 1, padding (kernel - 1) // 2) pads with -inf
    rng = np.random.default_rng(kernel)
    for shape in [(2, 5, 7), (1, 1, 1), (1, 1, 5), (3, 2, 2), (1, 6, 1)]:
        x = rng.integers(0, 5, shape).astype(F)
        r = (kernel - 1) // 2
        padded = np.pad(x, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
        want = np.full_like(x, -np.inf)
        for dy in range(kernel):
            for dx in range(kernel):
                want = np.maximum(want, padded[:, dy : dy + shape[1], dx : dx + shape[2]])
        assert np.array_equal(window_max(x, kernel), want), shape
    with pytest.raises(ValueError, match="odd"):
        window_max(np.zeros((1, 3, 3), F), 2)


@pytest.mark.parametrize(
    "kind", ["noise", "plateaus", "saturated", "underflow", "constant", "flat_near_zero", "few_cells"]
)
def test_fast_topk_equals_literal(kind):
    rng = np.random.default_rng(7)
    shape = (3, 20, 24)
    if kind == "noise":
        logits = rng.normal(-4, 2, shape).astype(F)
    elif kind == "plateaus":
        logits = rng.integers(-6, 3, shape).astype(F)
    elif kind == "saturated":
        logits = rng.normal(15, 5, shape).astype(F)  # many sigmoids are exactly 1.0
    elif kind == "underflow":
        logits = rng.normal(-110, 10, shape).astype(F)  # many sigmoids are exactly 0.0
    elif kind == "constant":
        logits = np.full(shape, 2.0, F)
    elif kind == "flat_near_zero":
        # logits a few ulps apart around 0.3 often share one sigmoid value
        logits = (F(0.3) + rng.integers(0, 6, shape).astype(F) * np.spacing(F(0.3))).astype(F)
    else:
        logits = rng.normal(0, 1, (1, 2, 3)).astype(F)
    for k in (1, 6, 100) if kind != "few_cells" else (1, 6):
        got = topk_corners(logits, k, 3)
        want = _topk_dense(logits, k, 3)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (kind, k)


def test_shape_errors():
    heads = make_heads(tl=[(0, 1, 1, 4.0)], br=[(0, 5, 5, 4.0)])
    heads["br_off"] = heads["br_off"][:1]
    with pytest.raises(ValueError, match="br_off"):
        corner_proposals(*(heads[n] for n in HEAD_OUTPUTS))
    with pytest.raises(ValueError, match="top-k"):
        topk_corners(np.zeros((1, 2, 2), F), k=5)


# --- proposals as the ONNX graph returns them ---------------------------------------------------


def test_from_arrays_round_trip():
    a = make_heads(tl=[(1, 2, 1, 5.0)], br=[(1, 6, 5, 3.0)], tl_off=(0.25, 0.5))
    b = make_heads(tl=[(0, 1, 1, 4.0)], br=[(0, 5, 6, 4.0)])
    pa, pb = (corner_proposals(*(h[n] for n in HEAD_OUTPUTS), k=4) for h in (a, b))
    batched = {name: np.stack([getattr(pa, name), getattr(pb, name)]) for name in PROPOSAL_OUTPUTS}
    batched["tl_inds"] = batched["tl_inds"].astype(np.int32)  # TensorRT hands back int32
    assert PROPOSAL_OUTPUTS == (
        "tl_scores",
        "tl_inds",
        "tl_embs",
        "tl_offs",
        "br_scores",
        "br_inds",
        "br_embs",
        "br_offs",
    )
    props = CornerProposals.from_arrays(FEAT, **batched)
    assert len(props) == 2
    for got, want in zip(props, (pa, pb), strict=True):
        assert got.feat_shape == FEAT and got.tl_inds.dtype == np.int64
        for name in PROPOSAL_OUTPUTS:
            assert np.array_equal(getattr(got, name), getattr(want, name))
    with pytest.raises(ValueError, match="tl_offs"):
        CornerProposals.from_arrays(FEAT, **{**batched, "tl_offs": batched["tl_offs"][:, :, :1]})


# --- postprocess: soft-NMS and the flip merge ---------------------------------------------------


def test_postprocess_single_view_applies_soft_nms_and_cap():
    # Two TL peaks one cell apart with one BR: two heavily overlapping boxes of one class.
    heads = make_heads(tl=[(0, 1, 1, 5.0), (0, 1, 3, 4.0)], br=[(0, 6, 6, 5.0)])
    props = corner_proposals(*(heads[n] for n in HEAD_OUTPUTS), k=2)
    raw = pair_corners(props, META)
    out = postprocess([props], [META], CFG)
    assert len(out) == 2
    assert out.scores[0] == raw.scores[0] and out.scores[1] < raw.scores[1]
    capped = postprocess([props], [META], TestConfig(max_per_img=1))
    assert len(capped) == 1


def test_flip_merge_maps_boxes_back():
    # Image 24 wide at columns 2..26 of a 32-wide canvas (scale 4). A box at x 6..14 in the image
    # sits at feature x 2..4 in the original view; in the view flipped before padding it is at
    # image x 10..18, feature x 3..5. Mapping back (x' = 24 - x) recovers 6..14 exactly.
    meta = ImageMeta(ori_shape=(24, 24), pad_shape=(32, 32), border=(4.0, 28.0, 4.0, 28.0))
    fmeta = ImageMeta(ori_shape=(24, 24), pad_shape=(32, 32), border=(4.0, 28.0, 4.0, 28.0), flip=True)
    orig = make_heads(tl=[(0, 2, 2, 5.0)], br=[(0, 5, 4, 5.0)], tl_off=(0.5, 0.0), br_off=(0.5, 0.0))
    flip = make_heads(tl=[(0, 2, 3, 3.0)], br=[(0, 5, 5, 3.0)], tl_off=(0.5, 0.0), br_off=(0.5, 0.0))
    po, pf = (corner_proposals(*(h[n] for n in HEAD_OUTPUTS), k=1) for h in (orig, flip))
    assert pair_corners(po, meta).boxes[0].tolist() == [6.0, 4.0, 14.0, 16.0]
    assert pair_corners(pf, fmeta).boxes[0].tolist() == [10.0, 4.0, 18.0, 16.0]

    out = postprocess([po, pf], [meta, fmeta], CFG)
    # Both views give the same box: one soft-NMS over both keeps the better, the other scaled by exp(-2).
    assert out.boxes.tolist() == [[6.0, 4.0, 14.0, 16.0]] * 2
    s_orig = pair_corners(po, meta).scores[0]
    s_flip = pair_corners(pf, fmeta).scores[0]
    assert out.scores.tolist() == [s_orig, s_flip * F(math.exp(-2.0))]
    with pytest.raises(ValueError, match="original, flipped"):
        postprocess([pf, po], [fmeta, meta], CFG)


def test_unflip_boxes():
    b = np.array([[1.5, 2.0, 10.0, 4.0]], F)
    assert unflip_boxes(b, 640).tolist() == [[630.0, 2.0, 638.5, 4.0]]


def test_decode_heads_accepts_batch_of_one(hg104):
    heads, meta, _ = hg104
    a = decode_heads(heads, meta, CFG)
    b = decode_heads({k: v[None] for k, v in heads.items()}, meta, CFG)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


# --- the matching rule --------------------------------------------------------------------------


def test_matching_rule():
    ref = Detections(
        boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 40], [5, 5, 6, 6]], F),
        scores=np.array([0.9, 0.8, 0.1], F),
        labels=np.array([1, 2, 1]),
    )
    assert match_detections(ref, ref).ok
    # reordered and with tiny differences: still the same detections
    test = Detections(ref.boxes[::-1] + F(1e-4), ref.scores[::-1] + F(5e-5), ref.labels[::-1])
    r = match_detections(ref, test)
    assert r.ok and r.matched == 3 and r.rate == 1.0
    # a wrong label, a moved box or a score off by more than 1e-4 is not a match
    for bad in (
        Detections(ref.boxes, ref.scores, np.array([1, 2, 2])),
        Detections(
            ref.boxes + np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.01, 0]], F), ref.scores, ref.labels
        ),
        Detections(ref.boxes, ref.scores + np.array([0, 0, 2e-4], F), ref.labels),
    ):
        r = match_detections(ref, bad)
        assert r.matched == 2 and not r.ok
    # counts must agree even when every reference detection is matched
    extra = Detections(
        np.concatenate([ref.boxes, ref.boxes[:1]]),
        np.concatenate([ref.scores, [0.5]]).astype(F),
        np.concatenate([ref.labels, [1]]),
    )
    r = match_detections(ref, extra)
    assert r.matched == 3 and r.total_test == 4 and not r.ok
    assert match_detections(Detections.empty(), Detections.empty()).ok
    assert not match_detections(Detections.empty(), ref).ok
    assert box_iou(ref.boxes, ref.boxes).diagonal().tolist() == [1.0, 1.0, 1.0]
