"""Write a file so that readers see the old file or the whole new one, never half of it.

Checkpoints, ONNX files, engines, sidecars, logs and pictures all go through :func:`atomic_write`:
temp file in the same folder, flush + fsync, rename over the target. A crash, a kill or a full disk
leaves the previous file untouched and no temp file behind; an ``OSError`` becomes one ``UserError``
line naming the file and the fix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from runtime.errors import UserError


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], fix: str = "choose another path"
) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``.

    Args:
        path: the file to create or replace (its folder is created).
        write: writes the content to the binary file object it is given.
        fix: what the user should do if the disk refuses, for the error message.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e}); {fix}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file owner-only; these are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror or e}); {fix}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | memoryview, fix: str = "choose another path"
) -> None:
    atomic_write(path, lambda f: f.write(data), fix)


def write_text_atomic(path: str | os.PathLike[str], text: str, fix: str = "choose another path") -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fix)
