"""The repository's copy of mmdet's golden outputs: a pack, unpacked into ``../shared/golden``'s layout.

``tests/data/golden/`` holds the small files as they are (JSON, images) and the arrays in ``pack.bin``
(one xz stream per blob) described by ``pack.json.xz`` (xz-compressed JSON). :func:`unpack` rebuilds
``mmdet_checkpoint.pth`` and ``targets_losses.pt`` (with ``torch.save``), ``outputs.npz`` and
``decode_hg104.npz`` (with ``np.savez``) next to copies of the small files, so tests read the same file
names as in ``../shared/golden``.
``tests/data/make_golden_fixtures.py`` writes the pack; ``tests/data/golden/README.md`` says what was kept.

``pack.json.xz`` (format 1):

- ``blobs``: ``name -> {dtype, count, codec, offset, size}``: ``count`` elements of ``dtype`` stored in
  ``pack.bin[offset:offset + size]`` as one xz stream. Codecs: ``raw`` (the bytes), ``shuffle`` (byte
  planes: every element's byte 0, then every byte 1, ...; float mantissas and exponents then compress
  apart), ``dict`` (the sorted distinct values, then ``uint8``/``uint16`` indices into them, shuffled).
- ``files``: ``name -> {kind: torch | npz, tree, content_sha256}``. A tree is JSON: str, int, float, bool
  and null as themselves; ``{"dict": [[key, node], ...]}``, ``{"list": [...]}``, ``{"tuple": [...]}``;
  arrays ``{"array": {dtype, shape, torch, data | keep + noise}}``. ``data`` is a slice
  ``{blob, start}`` of ``prod(shape)`` elements. A *kept* array stores only some cells exactly
  (``keep``: flat ``index`` and ``values`` slices) and fills the others with deterministic noise drawn
  from stored quantiles of the original's other cells (``noise``: ``seed`` and a ``quantiles`` slice),
  used where a test provably reads only the kept cells (README.md says which and why).
- ``input_sha256``: image -> sha256 of mmdet's network input (C-order float32 bytes) for the images whose
  input array is not kept; the unpacked folder gets them as ``input_sha256.json``.
- ``pack_sha256``: the sha256 of ``pack.bin``, checked before anything is read from it.

Nothing here unpickles: the pack is JSON and raw numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_GOLDEN = Path(__file__).resolve().parent / "golden"
PACK_JSON = "pack.json.xz"  # xz-compressed JSON: ~15 KB instead of ~100 KB (a name per tensor)
PACK_BIN = "pack.bin"
INPUT_SHA256 = "input_sha256.json"
FORMAT = 1
QUANTILES = 257  # noise quantile table size
_XZ_PRESET = 9 | lzma.PRESET_EXTREME
_M64 = (1 << 64) - 1


class GoldenPackError(RuntimeError):
    """The repository's golden pack is damaged or inconsistent (the message names the file and the fix)."""


# --- byte codecs ------------------------------------------------------------------------------------


def _shuffle(a: np.ndarray) -> bytes:
    """Byte planes of a 1-D array: all bytes 0, then all bytes 1, ... (blosc's shuffle)."""
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()


def bits(a: np.ndarray) -> np.ndarray:
    """The same memory as unsigned integers of the same width (1-D)."""
    return np.ascontiguousarray(a).reshape(-1).view(f"<u{a.dtype.itemsize}")


def _unshuffle(data: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    planes = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(count)


def encode_blob(a: np.ndarray, codec: str) -> bytes:
    """``a`` (1-D) as the uncompressed payload of ``codec`` (see the module docstring)."""
    if codec == "raw":
        return np.ascontiguousarray(a).tobytes()
    if codec == "shuffle":
        return _shuffle(a)
    if codec == "dict":
        # Distinct bit patterns, not values: -0.0 and 0.0 (and NaN payloads) stay apart.
        lut, idx = np.unique(bits(a), return_inverse=True)
        if lut.size > 1 << 16:
            raise ValueError(f"dict codec: {lut.size} distinct values, at most 65536")
        index_dtype = np.uint8 if lut.size <= 256 else np.uint16
        return struct.pack("<I", lut.size) + lut.tobytes() + _shuffle(idx.astype(index_dtype))
    raise ValueError(f"unknown codec {codec!r}")


def decode_blob(payload: bytes, dtype: np.dtype, count: int, codec: str) -> np.ndarray:
    """Inverse of :func:`encode_blob`: a fresh 1-D array of ``count`` elements of ``dtype``."""
    if codec == "raw":
        return np.frombuffer(payload, dtype, count).copy()
    if codec == "shuffle":
        return _unshuffle(payload, dtype, count)
    if codec == "dict":
        (n,) = struct.unpack_from("<I", payload)
        lut = np.frombuffer(payload, f"<u{dtype.itemsize}", n, offset=4)
        index_dtype = np.dtype(np.uint8 if n <= 256 else np.uint16)
        idx = _unshuffle(payload[4 + n * dtype.itemsize :], index_dtype, count)
        return lut[idx].view(dtype)
    raise ValueError(f"unknown codec {codec!r}")


def compress(payload: bytes) -> bytes:
    return lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=_XZ_PRESET)


# --- deterministic noise ----------------------------------------------------------------------------


def uniform(count: int, seed: int) -> np.ndarray:
    """``count`` float64 in [0, 1): splitmix64 of ``seed + i``, the top 53 bits. Same on every platform."""
    with np.errstate(over="ignore"):
        z = (np.arange(count, dtype=np.uint64) + np.uint64(seed & _M64)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def noise(count: int, seed: int, quantiles: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``count`` values drawn from the distribution whose ``quantiles`` (ascending, at 0..1) are given.

    Linear interpolation between neighbouring quantiles, rounded to ``dtype``: every value lies within
    ``[quantiles[0], quantiles[-1]]`` (both are ``dtype`` values, so rounding cannot leave the range).
    """
    q = quantiles.astype(np.float64)
    pos = uniform(count, seed) * (q.size - 1)
    i = np.minimum(pos.astype(np.int64), q.size - 2)
    v = q[i] + (pos - i) * (q[i + 1] - q[i])
    return np.clip(v, q[0], q[-1]).astype(dtype)


# --- content digest ---------------------------------------------------------------------------------


def content_sha256(obj: Any) -> str:
    """sha256 of a loaded object's content (types, keys in order, dtypes, shapes and array bytes).

    Independent of how the file was written (zip layout, pickle protocol): equal for a checkpoint and
    its rebuild exactly when they hold the same structure and bit-identical tensors.
    """
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            h.update(b"{%d" % len(x))
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            h.update(b"[%d" % len(x) if isinstance(x, list) else b"(%d" % len(x))
            for v in x:
                walk(v)
        elif isinstance(x, (str, bool, int, float)) or x is None:
            h.update(f"{type(x).__name__}:{x!r};".encode())
        else:  # a tensor or an ndarray
            a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            kind = "tensor" if hasattr(x, "detach") else "ndarray"
            h.update(f"{kind}:{a.dtype.str}:{a.shape};".encode())
            h.update(np.ascontiguousarray(a).tobytes())

    walk(obj)
    return h.hexdigest()


# --- reading ------------------------------------------------------------------------------------------


@dataclass
class _Blobs:
    """Decompressed blobs of ``pack.bin``, decoded on first use."""

    manifest: dict[str, Any]
    data: bytes
    source: Path
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        if name not in self.cache:
            spec = self.manifest["blobs"][name]
            raw = self.data[spec["offset"] : spec["offset"] + spec["size"]]
            try:
                payload = lzma.decompress(raw, format=lzma.FORMAT_XZ)
            except lzma.LZMAError as e:
                raise GoldenPackError(f"{self.source}: blob {name!r} is damaged ({e}); {_FIX}") from e
            self.cache[name] = decode_blob(payload, np.dtype(spec["dtype"]), spec["count"], spec["codec"])
        return self.cache[name]

    def slice(self, ref: dict[str, Any], count: int) -> np.ndarray:
        a = self.get(ref["blob"])
        if ref["start"] + count > a.size:
            raise GoldenPackError(f"{self.source}: slice past the end of blob {ref['blob']!r}; {_FIX}")
        return a[ref["start"] : ref["start"] + count]


_FIX = "restore tests/data/golden from git, or rebuild it: python tests/data/make_golden_fixtures.py"


def build_array(spec: dict[str, Any], blobs: _Blobs) -> np.ndarray:
    """The array an ``{"array": spec}`` leaf describes (a fresh, writable, C-order numpy array)."""
    dtype = np.dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    if "data" in spec:
        flat = blobs.slice(spec["data"], size).astype(dtype, copy=True)
    else:
        nz = spec["noise"]
        flat = noise(size, nz["seed"], blobs.slice(nz["quantiles"], QUANTILES), dtype)
        keep = spec["keep"]
        index = blobs.slice(keep["index"], keep["count"]).astype(np.int64)
        flat[index] = blobs.slice(keep["values"], keep["count"])
    return flat.reshape(shape)


def build_tree(node: Any, blobs: _Blobs) -> Any:
    """The Python object a JSON tree describes; arrays become torch tensors where ``torch`` is set."""
    if not isinstance(node, dict):
        return node
    ((tag, body),) = node.items()
    if tag == "dict":
        return {k: build_tree(v, blobs) for k, v in body}
    if tag == "list":
        return [build_tree(v, blobs) for v in body]
    if tag == "tuple":
        return tuple(build_tree(v, blobs) for v in body)
    if tag == "array":
        a = build_array(body, blobs)
        if body.get("torch"):
            import torch

            return torch.from_numpy(a)
        return a
    raise GoldenPackError(f"unknown node {tag!r} in {PACK_JSON}; {_FIX}")


def read_pack(src: Path = REPO_GOLDEN) -> tuple[dict[str, Any], _Blobs]:
    """The manifest and the checked contents of ``pack.bin``."""
    try:
        manifest = json.loads(lzma.decompress((src / PACK_JSON).read_bytes()))
        data = (src / PACK_BIN).read_bytes()
    except (OSError, ValueError, lzma.LZMAError) as e:
        raise GoldenPackError(f"{src}: cannot read the golden pack ({e}); {_FIX}") from e
    if manifest.get("format") != FORMAT:
        raise GoldenPackError(f"{src / PACK_JSON}: format {manifest.get('format')!r}, expected {FORMAT}")
    if hashlib.sha256(data).hexdigest() != manifest["pack_sha256"]:
        raise GoldenPackError(f"{src / PACK_BIN}: sha256 differs from {PACK_JSON}'s; {_FIX}")
    return manifest, _Blobs(manifest, data, src / PACK_BIN)


def build_files(src: Path = REPO_GOLDEN) -> Iterator[tuple[str, Any]]:
    """``(file name, object)`` for every packed file: a dict/list for torch files, a dict of arrays for npz."""
    manifest, blobs = read_pack(src)
    for name, spec in manifest["files"].items():
        yield name, build_tree(spec["tree"], blobs)


def unpack(dest: Path, src: Path = REPO_GOLDEN) -> None:
    """Write ``../shared/golden``'s layout into the existing empty folder ``dest``."""
    import torch

    manifest, blobs = read_pack(src)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and rel.name not in (PACK_JSON, PACK_BIN, ".gitattributes"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    for name, spec in manifest["files"].items():
        obj = build_tree(spec["tree"], blobs)
        if spec["kind"] == "torch":
            torch.save(obj, dest / name)
        elif spec["kind"] == "npz":
            buf = io.BytesIO()
            np.savez(buf, **obj)
            (dest / name).write_bytes(buf.getvalue())
        else:
            raise GoldenPackError(f"{src / PACK_JSON}: unknown file kind {spec['kind']!r}; {_FIX}")
    (dest / INPUT_SHA256).write_text(json.dumps(manifest["input_sha256"], indent=1) + "\n")
    for path in dest.rglob("*"):
        if path.is_file():
            path.chmod(0o444)  # read-only like ../shared/golden: a test writing there fails loudly


def pack_key(src: Path = REPO_GOLDEN) -> str:
    """A hash of every file of the repository copy: names the unpacked folder."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def unpacked(root: Path, src: Path = REPO_GOLDEN) -> Path:
    """``root/golden-<key>``, unpacked once: concurrent callers (pytest-xdist workers) race safely.

    Each unpacks into its own temporary folder and renames it into place; the rename is atomic, so the
    folder, once it exists, is complete, and the loser of a race drops its copy.
    """
    dest = root / f"golden-{pack_key(src)}"
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".golden-", dir=root))
    try:
        unpack(tmp, src)
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise
    finally:
        if tmp.exists():  # the loser's copy (read-only files in writable folders delete fine)
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def golden_folder() -> Path:
    """For tools outside the tests (benchmarks): ``../shared/golden`` beside the repository when there,
    else the repository's copy unpacked once under the temporary folder."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "golden"
    if (shared / "golden.json").is_file():
        return shared
    return unpacked(Path(tempfile.gettempdir()) / "cornernet-golden")


def golden_images(src: Path = REPO_GOLDEN) -> list[str]:
    """The image names of the repository copy (``golden.json``), for parametrising tests at collection."""
    return list(json.loads((src / "golden.json").read_text())["images"])
