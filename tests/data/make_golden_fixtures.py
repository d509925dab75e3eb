"""Rebuild ``tests/data/golden/`` (the repository's trimmed, packed copy) from ``../shared/golden``.

A developer tool, not run by the tests or CI: run it when ``../shared/golden`` changes, then commit
``tests/data/golden/``. What is kept, and why the trimmed parts cannot change a test's answer, is in
``tests/data/golden/README.md``; the format is in ``tests/data/golden_codec.py``. The script checks its
own output: every packed file is rebuilt and compared with the source (bit for bit where kept whole;
the decode and the losses computed on trimmed maps equal those on the originals, bit for bit).

    python tests/data/make_golden_fixtures.py [--source ../shared/golden] [--dest tests/data/golden]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.data import golden_codec as gc  # noqa: E402

# Smallest synthetic images (they carry boxes); the JPEG covers the other decoder and a padded canvas.
KEEP_IMAGES = ["synthetic_1_255x383.png", "synthetic_2_420x300.jpg"]
KEEP_INPUTS = ["synthetic_1_255x383.png"]  # network inputs kept as arrays; the others as sha256 only
LOSS_CASES = [2]  # targets_losses cases that keep their head outputs (4 boxes, a shared corner cell)
HEAD_OUTPUTS = ("tl_heat", "br_heat", "tl_emb", "br_emb", "tl_off", "br_off")
PEAK_MARGIN = 1.0  # hg104: cells kept exactly down to the 100th best peak's logit minus this
PLAIN_FILES = ["golden.json", "detections.json", "decode_hg104.json", "coco/annotations.json"]


class Packer:
    """Collects arrays into named blobs (1-D, one dtype each) and compresses each with its best codec."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.sizes: dict[str, int] = {}

    def put(self, group: str, a: np.ndarray) -> dict[str, Any]:
        flat = np.ascontiguousarray(a).reshape(-1)
        parts = self.parts.setdefault(group, [])
        if parts and parts[0].dtype != flat.dtype:
            raise ValueError(f"blob {group}: {flat.dtype} after {parts[0].dtype}")
        start = self.sizes.get(group, 0)
        parts.append(flat)
        self.sizes[group] = start + flat.size
        return {"blob": group, "start": start}

    def finish(self) -> tuple[dict[str, Any], bytes]:
        blobs, out = {}, bytearray()
        for name, parts in self.parts.items():
            a = np.concatenate(parts)
            codecs = ["raw", "shuffle"] + (["dict"] if np.unique(gc.bits(a)).size <= 1 << 16 else [])
            best = None
            for codec in codecs:
                data = gc.compress(gc.encode_blob(a, codec))
                if best is None or len(data) < len(best[1]):
                    best = (codec, data)
            codec, data = best
            back = gc.decode_blob(lzma.decompress(data), a.dtype, a.size, codec)
            assert np.array_equal(gc.bits(back), gc.bits(a)), name
            blobs[name] = {"dtype": a.dtype.str, "count": int(a.size), "codec": codec,
                           "offset": len(out), "size": len(data)}  # fmt: skip
            out += data
            print(f"  blob {name}: {a.size} x {a.dtype}, {codec}, {a.nbytes} -> {len(data)} bytes")
        return blobs, bytes(out)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_tree(x: Any, packer: Packer, group: str) -> Any:
    """A JSON tree for ``x``; each array goes whole into blob ``group.<dtype>``."""
    if isinstance(x, dict):
        assert all(isinstance(k, str) for k in x), "only str keys"
        return {"dict": [[k, to_tree(v, packer, group)] for k, v in x.items()]}
    if isinstance(x, list):
        return {"list": [to_tree(v, packer, group) for v in x]}
    if isinstance(x, tuple):
        return {"tuple": [to_tree(v, packer, group) for v in x]}
    if isinstance(x, float):
        assert np.isfinite(x), "JSON keeps finite floats only"
        return x
    if isinstance(x, (str, bool, int)) or x is None:
        return x
    a = _np(x)
    spec = {"dtype": a.dtype.str, "shape": list(a.shape), "torch": hasattr(x, "detach")}
    spec["data"] = packer.put(f"{group}.{a.dtype.name}", a)
    return {"array": spec}


def kept_array(x: Any, keep: np.ndarray, packer: Packer, seed_name: str) -> dict[str, Any]:
    """An array leaf storing ``x`` exactly where ``keep`` is set, quantile noise from its other cells elsewhere."""
    a = _np(x)
    flat, mask = a.reshape(-1), np.broadcast_to(keep, a.shape).reshape(-1)
    index = np.flatnonzero(mask)
    others = np.sort(flat[~mask])
    q = others[np.round(np.linspace(0, others.size - 1, gc.QUANTILES)).astype(np.int64)]  # data values
    spec = {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "torch": hasattr(x, "detach"),
        "keep": {
            "count": int(index.size),
            "index": packer.put("keep.index", index.astype(np.int32)),
            "values": packer.put(f"keep.values.{a.dtype.name}", flat[index]),
        },
        "noise": {
            "seed": zlib.crc32(seed_name.encode()),
            "quantiles": packer.put(f"noise.{a.dtype.name}", q),
        },
    }
    return {"array": spec}


# --- the trimmed contents ---------------------------------------------------------------------------------


def hg104_keep(heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cells of the HG-104 maps mmdet's decode reads, per map (see README.md).

    mmdet decodes the top 100 of ``local_maximum(sigmoid(heat))`` and reads embeddings and offsets only
    there. Every heat cell above ``cut`` (the 100th best local-maximum logit minus a margin) is kept;
    the noise stays at or below ``cut``, so the local maxima above it, their values, and thus the top
    100 do not change. Embeddings and offsets are kept at every position a kept heat cell has.
    """
    from runtime.decode import window_max

    keep = {}
    for corner in ("tl", "br"):
        heat = heads[f"{corner}_heat"][0].astype(np.float32)  # (C, H, W)
        peaks = np.sort(heat[heat == window_max(heat, 3)])[::-1]
        cut = peaks[99] - PEAK_MARGIN
        mask = heat > cut
        below = heat[~mask].max()
        assert below <= cut < peaks[99] and mask.sum() >= 100
        keep[f"{corner}_heat"] = mask[None]
        pos = mask.any(axis=0)[None, None]  # (1, 1, H, W), broadcast over channels
        keep[f"{corner}_emb"] = keep[f"{corner}_off"] = pos
        print(f"  hg104 {corner}: 100th peak {peaks[99]:.4f}, cut {cut:.4f}, {mask.sum()} heat cells kept")
    return keep


def loss_case_keep(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """Embedding/offset cells the losses read: the corner cells (target heatmap == 1, any class)."""
    targets = case["targets"]
    keep = {}
    for corner, name in (("tl", "topleft_heatmap"), ("br", "bottomright_heatmap")):
        pos = _np(targets[name]).max(axis=1, keepdims=True) == 1  # (1, 1, H, W)
        cells = {tuple(obj[0 if corner == "tl" else 1]) for img in targets["corner_embedding"] for obj in img}
        assert {tuple(p) for p in np.argwhere(pos[0, 0])} == cells, "corner cells and embedding cells differ"
        keep[f"{corner}_embs"] = keep[f"{corner}_offs"] = pos
    return keep


def trimmed_losses_tree(cases: list[dict[str, Any]], packer: Packer) -> Any:
    out = []
    for i, case in enumerate(cases):
        items = []
        for key, value in case.items():
            if key != "head_outputs_fp16":
                items.append([key, to_tree(value, packer, "targets_losses")])
            elif i in LOSS_CASES:
                keep = loss_case_keep(case)
                heads = []
                for name, stacks in value.items():
                    leaves = [
                        to_tree(t, packer, f"targets_losses.case{i}.{name}.{s}")
                        if name not in keep
                        else kept_array(t, keep[name], packer, f"targets_losses/{i}/{name}/{s}")
                        for s, t in enumerate(stacks)
                    ]
                    heads.append([name, {"list": leaves}])
                items.append([key, {"dict": heads}])
        out.append({"dict": items})
    return {"list": out}


def make(source: Path, dest: Path) -> None:
    import torch

    info = json.loads((source / "golden.json").read_text())
    assert all(name in info["images"] for name in KEEP_IMAGES)
    packer = Packer()
    files: dict[str, Any] = {}

    ckpt = torch.load(source / "mmdet_checkpoint.pth", map_location="cpu", weights_only=True)
    files["mmdet_checkpoint.pth"] = {"kind": "torch", "tree": to_tree(ckpt, packer, "checkpoint")}

    with np.load(source / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    kept_outputs = {}
    for name in KEEP_IMAGES:
        for head in ("input", *HEAD_OUTPUTS):
            if head != "input" or name in KEEP_INPUTS:
                kept_outputs[f"{name}/{head}"] = outputs[f"{name}/{head}"]
    files["outputs.npz"] = {"kind": "npz", "tree": {"dict": [
        [k, to_tree(v, packer, f"outputs/{k}")] for k, v in kept_outputs.items()
    ]}}  # fmt: skip
    input_sha256 = {
        name: {"shape": list(outputs[f"{name}/input"].shape), "dtype": outputs[f"{name}/input"].dtype.str,
               "sha256": hashlib.sha256(np.ascontiguousarray(outputs[f"{name}/input"]).tobytes()).hexdigest()}
        for name in KEEP_IMAGES
    }  # fmt: skip

    with np.load(source / "decode_hg104.npz") as z:
        hg104 = {k: z[k] for k in z.files}
    keep = hg104_keep(hg104)
    files["decode_hg104.npz"] = {"kind": "npz", "tree": {"dict": [
        [k, kept_array(v, keep[k], packer, f"decode_hg104/{k}")] for k, v in hg104.items()
    ]}}  # fmt: skip

    cases = torch.load(source / "targets_losses.pt", map_location="cpu", weights_only=True)
    files["targets_losses.pt"] = {"kind": "torch", "tree": trimmed_losses_tree(cases, packer)}

    blobs, data = packer.finish()
    manifest = {
        "format": gc.FORMAT,
        "source": "mmdet 3.3.0 + mmcv 2.2.0 golden outputs (../shared/golden), trimmed: see README.md",
        "pack_sha256": hashlib.sha256(data).hexdigest(),
        "blobs": blobs,
        "files": files,
        "input_sha256": input_sha256,
    }

    # Write: the generated files only (README.md and .gitattributes are kept).
    for name in (gc.PACK_JSON, "pack.json", gc.PACK_BIN, *PLAIN_FILES):
        (dest / name).unlink(missing_ok=True)
    shutil.rmtree(dest / "coco", ignore_errors=True)
    (dest / "coco" / "images").mkdir(parents=True)
    info["images"] = [n for n in info["images"] if n in KEEP_IMAGES]
    info["repo_copy"] = "trimmed copy of ../shared/golden: see README.md"
    (dest / "golden.json").write_text(json.dumps(info, indent=1) + "\n")
    records = json.loads((source / "detections.json").read_text())
    (dest / "detections.json").write_text(json.dumps([r for r in records if r["file"] in KEEP_IMAGES]))
    shutil.copyfile(source / "decode_hg104.json", dest / "decode_hg104.json")
    ann = json.loads((source / "coco" / "annotations.json").read_text())
    ids = {im["id"] for im in ann["images"] if im["file_name"] in KEEP_IMAGES}
    ann["images"] = [im for im in ann["images"] if im["id"] in ids]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in ids]
    (dest / "coco" / "annotations.json").write_text(json.dumps(ann))
    for name in KEEP_IMAGES:
        shutil.copyfile(source / "coco" / "images" / name, dest / "coco" / "images" / name)
    (dest / gc.PACK_BIN).write_bytes(data)
    (dest / gc.PACK_JSON).write_bytes(gc.compress(json.dumps(manifest, indent=1).encode()))
    # Content digests of the rebuilt objects, recorded for the tests (a bare clone checks them too).
    built = dict(gc.build_files(dest))
    for name in files:
        files[name]["content_sha256"] = gc.content_sha256(built[name])
    (dest / gc.PACK_JSON).write_bytes(gc.compress(json.dumps(manifest, indent=1).encode()))

    check(source, dest, ckpt, cases, outputs, hg104, built)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {total} bytes in {sum(1 for p in dest.rglob('*') if p.is_file())} files")


def check(
    source: Path, dest: Path, ckpt: Any, cases: list[Any], outputs: dict[str, np.ndarray],
    hg104: dict[str, np.ndarray], built: dict[str, Any],
) -> None:  # fmt: skip
    """The rebuilt files against the source: whole parts bit for bit, trimmed parts by their effect."""
    import torch

    from runtime.meta import ModelMeta, TestConfig
    from runtime.names import HEAD_OUTPUTS as DECODE_OUTPUTS
    from runtime.pipeline import decode_outputs
    from runtime.preprocess import ImageMeta
    from tests.test_targets_losses import _golden_heads, _golden_targets
    from trainer.losses import corner_losses_single

    assert gc.content_sha256(built["mmdet_checkpoint.pth"]) == gc.content_sha256(ckpt), "checkpoint differs"
    for key, a in built["outputs.npz"].items():
        assert np.array_equal(a.view(np.uint8), outputs[key].view(np.uint8)), key

    record = json.loads((source / "decode_hg104.json").read_text())
    m = record["meta"]
    meta = ImageMeta(tuple(m["ori_shape"][:2]), tuple(m["pad_shape"][:2]), tuple(m["border"]))
    decoded = []
    for maps in (hg104, built["decode_hg104.npz"]):
        heads = {name: maps[name].astype(np.float32) for name in DECODE_OUTPUTS}
        decoded.append(decode_outputs(heads, [[meta]], ModelMeta(classes=("x",), test_cfg=TestConfig()))[0])
    for field_name in ("boxes", "scores", "labels"):
        assert np.array_equal(getattr(decoded[0], field_name), getattr(decoded[1], field_name)), field_name

    for i, (theirs, ours) in enumerate(zip(cases, built["targets_losses.pt"], strict=True)):
        assert gc.content_sha256(theirs["targets"]) == gc.content_sha256(ours["targets"]), f"case {i}"
        assert theirs["losses"] == ours["losses"] and ("head_outputs_fp16" in ours) == (i in LOSS_CASES)
        if i in LOSS_CASES:
            targets = _golden_targets(ours)
            for s in range(len(theirs["losses"]["det_loss"])):
                a = corner_losses_single(_golden_heads(theirs, s), targets)
                b = corner_losses_single(_golden_heads(ours, s), targets)
                assert all(torch.equal(a[k], b[k]) for k in a), f"case {i} stack {s} losses"
    print(
        "  checked: checkpoint and kept arrays bit-identical; hg104 decode and losses unchanged by the trim"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "golden")
    parser.add_argument("--dest", type=Path, default=gc.REPO_GOLDEN)
    args = parser.parse_args(argv)
    if not (args.source / "golden.json").is_file():
        print(f"error: {args.source / 'golden.json'} not found: pass --source", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    make(args.source, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
