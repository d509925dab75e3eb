"""The identity stamp of a built CornerPool library: ``LIBRARY.json`` next to ``LIBRARY`` (e.g.
``libcornerpool_trt.so.json``), written by the CMake build after each successful link.

It names the plugin (name, version, namespace, as declared in ``cornerPoolPlugin.h``) and the sources it was built
from (``sources_sha256``), so an engine's sidecar can tell, without TensorRT and without compiling anything, whether
a library is the one it was built with: the same sources rebuilt by another compiler give the same identity, while
the library's own bytes would differ. Plain JSON, read with ``json`` only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import UserError

#: Keys every stamp has (the CMake build writes more: CUDA version, architectures, TensorRT headers).
IDENTITY_KEYS = ("name", "version", "namespace", "sources_sha256")


@dataclass(frozen=True)
class PluginIdentity:
    """What a plugin library is: TensorRT's creator key (name, version, namespace) and its sources' hash."""

    name: str
    version: str
    namespace: str
    sources_sha256: str


def stamp_path(library: str | Path) -> Path:
    """``libcornerpool_trt.so`` -> ``libcornerpool_trt.so.json``."""
    library = Path(library)
    return library.with_name(library.name + ".json")


def sources_digest(sources: Sequence[Path]) -> str:
    """sha256 of ``"<file name>\\n<sha256 of its bytes>\\n"`` over ``sources`` in order (as the CMake build does)."""
    manifest = "".join(f"{path.name}\n{hashlib.sha256(path.read_bytes()).hexdigest()}\n" for path in sources)
    return hashlib.sha256(manifest.encode()).hexdigest()


def read_stamp(library: str | Path) -> dict[str, Any] | None:
    """The stamp of ``library`` as a dict, or ``None`` when there is none.

    Raises:
        UserError: the stamp exists but is not a JSON object with the identity keys (one line, names the file).
    """
    path = stamp_path(library)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UserError(f"{path}: cannot read the plugin's stamp ({error.strerror})") from None
    try:
        stamp = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: the plugin's stamp is not valid JSON ({error.msg} at line {error.lineno}); "
            "rebuild the plugin with python -m trt_plugins.build"
        ) from None
    missing = [
        key for key in IDENTITY_KEYS if not isinstance(stamp, dict) or not isinstance(stamp.get(key), str)
    ]
    if missing:
        raise UserError(
            f"{path}: the plugin's stamp lacks {', '.join(missing)}; rebuild the plugin with python -m trt_plugins.build"
        )
    return stamp


def read_identity(library: str | Path) -> PluginIdentity | None:
    """The identity recorded next to ``library``, or ``None`` when it has no stamp (``UserError`` if malformed)."""
    stamp = read_stamp(library)
    if stamp is None:
        return None
    return PluginIdentity(*(str(stamp[key]) for key in IDENTITY_KEYS))
