"""The repository's copy of the golden outputs (``tests/data/golden``): complete, lossless where kept whole,
and (when ``../shared/golden`` is beside the repository) equal to its source."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.meta import ModelMeta, TestConfig
from runtime.names import HEAD_OUTPUTS
from runtime.pipeline import decode_outputs
from runtime.preprocess import ImageMeta
from tests.data import golden_codec as gc

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "golden"
needs_source = pytest.mark.skipif(
    not (SOURCE / "golden.json").is_file(), reason=f"compares with the source, {SOURCE}, which is not here"
)


def _manifest() -> dict:
    return json.loads(lzma.decompress((gc.REPO_GOLDEN / gc.PACK_JSON).read_bytes()))


def _load(path: Path) -> object:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return torch.load(path, map_location="cpu", weights_only=True)


def test_repository_copy_stays_under_10_mb() -> None:
    total = sum(p.stat().st_size for p in gc.REPO_GOLDEN.rglob("*") if p.is_file())
    assert total < 10_000_000, f"tests/data/golden holds {total} bytes"


def test_layout_is_the_sources(golden_dir: Path, golden_info: dict) -> None:
    """The files golden.json names, its images on disk, and JSON records for exactly those images."""
    for name in golden_info["files"].values():
        assert (golden_dir / name).exists(), name
    assert (golden_dir / "decode_hg104.npz").is_file() and (golden_dir / "decode_hg104.json").is_file()
    images = golden_info["images"]
    assert sorted(p.name for p in (golden_dir / "coco" / "images").iterdir()) == sorted(images)
    ann = json.loads((golden_dir / "coco" / "annotations.json").read_text())
    assert [im["file_name"] for im in ann["images"]] == images
    assert {a["image_id"] for a in ann["annotations"]} <= {im["id"] for im in ann["images"]}
    assert [r["file"] for r in json.loads((golden_dir / "detections.json").read_text())] == images
    assert sorted(json.loads((golden_dir / gc.INPUT_SHA256).read_text())) == sorted(images)


@pytest.mark.parametrize(
    "name", ["mmdet_checkpoint.pth", "outputs.npz", "decode_hg104.npz", "targets_losses.pt"]
)
def test_rebuilt_files_hold_the_recorded_content(golden_dir: Path, name: str) -> None:
    """Each rebuilt file loads (safely) to the content the pack recorded, bit for bit."""
    assert gc.content_sha256(_load(golden_dir / name)) == _manifest()["files"][name]["content_sha256"]


def test_rebuilt_checkpoint_has_mmdets_meta(golden_dir: Path) -> None:
    ckpt = _load(golden_dir / "mmdet_checkpoint.pth")
    assert set(ckpt) == {"meta", "state_dict"}
    assert ckpt["meta"]["mmdet_version"] == "3.3.0"
    assert ckpt["meta"]["dataset_meta"]["classes"] == ("shape0", "shape1", "shape2")  # a tuple, as saved
    assert ckpt["meta"]["cfg"].startswith("model = dict(")
    assert len(ckpt["state_dict"]) == 552


@needs_source
def test_checkpoint_is_bit_identical_to_the_source(golden_dir: Path) -> None:
    ours, theirs = _load(golden_dir / "mmdet_checkpoint.pth"), _load(SOURCE / "mmdet_checkpoint.pth")
    assert ours["meta"] == theirs["meta"]
    assert list(ours["state_dict"]) == list(theirs["state_dict"])
    for key, t in theirs["state_dict"].items():
        mine = ours["state_dict"][key]
        assert mine.dtype == t.dtype and mine.shape == t.shape, key
        assert np.array_equal(
            mine.numpy().reshape(-1).view(np.uint8), t.numpy().reshape(-1).view(np.uint8)
        ), key
    assert gc.content_sha256(ours) == gc.content_sha256(theirs)


@needs_source
def test_kept_arrays_equal_the_source(golden_dir: Path) -> None:
    ours, theirs = _load(golden_dir / "outputs.npz"), _load(SOURCE / "outputs.npz")
    for key, a in ours.items():
        assert np.array_equal(a.reshape(-1).view(np.uint8), theirs[key].reshape(-1).view(np.uint8)), key
    cases, source_cases = _load(golden_dir / "targets_losses.pt"), _load(SOURCE / "targets_losses.pt")
    for case, theirs_case in zip(cases, source_cases, strict=True):
        assert gc.content_sha256(case["targets"]) == gc.content_sha256(theirs_case["targets"])
        assert case["losses"] == theirs_case["losses"]
        if "head_outputs_fp16" in case:  # heatmaps whole (the focal loss reads every cell)
            for name in ("tl_heats", "br_heats"):
                pairs = zip(
                    case["head_outputs_fp16"][name], theirs_case["head_outputs_fp16"][name], strict=True
                )
                assert all(torch.equal(mine, t) for mine, t in pairs), name


@needs_source
def test_trimmed_hg104_decodes_like_the_source(golden_dir: Path) -> None:
    """Noise below the cut leaves mmdet's decode unchanged: ours gives identical detections on both."""
    record = json.loads((golden_dir / "decode_hg104.json").read_text())
    m = record["meta"]
    meta = ImageMeta(tuple(m["ori_shape"][:2]), tuple(m["pad_shape"][:2]), tuple(m["border"]))
    out = []
    for folder in (golden_dir, SOURCE):
        maps = _load(folder / "decode_hg104.npz")
        heads = {n: maps[n].astype(np.float32) for n in HEAD_OUTPUTS}
        out.append(decode_outputs(heads, [[meta]], ModelMeta(classes=("x",), test_cfg=TestConfig()))[0])
    assert len(out[0]) == 100
    for field in ("boxes", "scores", "labels"):
        assert np.array_equal(getattr(out[0], field), getattr(out[1], field)), field


def test_noise_is_splitmix64() -> None:
    """The fill values depend on nothing but integer arithmetic (checked against plain Python ints)."""
    mask = (1 << 64) - 1

    def splitmix(x: int) -> int:
        z = (x * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    seed = 0xDEADBEEF
    got = gc.uniform(5, seed)
    assert got.tolist() == [(splitmix(seed + i) >> 11) * 2.0**-53 for i in range(5)]
    q = np.array([-3.0, -1.0, 0.5], np.float16)
    drawn = gc.noise(10_000, 7, q, np.dtype(np.float16))
    assert drawn.dtype == np.float16 and drawn.min() >= q[0] and drawn.max() <= q[-1]
    assert np.array_equal(drawn, gc.noise(10_000, 7, q, np.dtype(np.float16)))


@pytest.mark.parametrize("codec", ["raw", "shuffle", "dict"])
def test_codecs_round_trip_bits(codec: str) -> None:
    a = np.array([0.0, -0.0, np.nan, np.inf, 1e-45, 3.5, 3.5, -2.25], np.float32)
    back = gc.decode_blob(gc.encode_blob(a, codec), a.dtype, a.size, codec)
    assert np.array_equal(back.view(np.uint32), a.view(np.uint32))


def _copy_pack(tmp_path: Path) -> Path:
    src = tmp_path / "golden"
    shutil.copytree(gc.REPO_GOLDEN, src)
    return src


def test_damaged_pack_is_refused_naming_the_file(tmp_path: Path) -> None:
    src = _copy_pack(tmp_path)
    data = bytearray((src / gc.PACK_BIN).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (src / gc.PACK_BIN).write_bytes(bytes(data))
    with pytest.raises(gc.GoldenPackError, match=r"pack\.bin: sha256 differs.*make_golden_fixtures"):
        gc.unpack(tmp_path / "out", src)
    (src / gc.PACK_JSON).write_bytes((src / gc.PACK_JSON).read_bytes()[:-20])
    with pytest.raises(gc.GoldenPackError, match="cannot read the golden pack"):
        gc.unpack(tmp_path / "out", src)


def test_damaged_blob_is_refused_naming_the_blob(tmp_path: Path) -> None:
    """A blob damaged consistently with pack_sha256 (edited by hand) still fails: xz's CRC64 catches it."""
    src = _copy_pack(tmp_path)
    manifest = _manifest()
    spec = manifest["blobs"]["keep.index"]
    data = bytearray((src / gc.PACK_BIN).read_bytes())
    data[spec["offset"] + spec["size"] // 2] ^= 0x01
    manifest["pack_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (src / gc.PACK_BIN).write_bytes(bytes(data))
    (src / gc.PACK_JSON).write_bytes(gc.compress(json.dumps(manifest).encode()))
    with pytest.raises(gc.GoldenPackError, match=r"blob 'keep\.index' is damaged"):
        list(gc.build_files(src))


def test_concurrent_unpacking_yields_one_complete_folder(tmp_path: Path) -> None:
    """Two workers at once (as pytest-xdist's do): one folder, complete, no temporary copies left."""
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(gc.unpacked(tmp_path))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]
    assert (results[0] / "mmdet_checkpoint.pth").is_file() and (results[0] / gc.INPUT_SHA256).is_file()
    assert gc.unpacked(tmp_path) == results[0]  # found, not unpacked again
