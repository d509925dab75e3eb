"""Ahead-of-use compilation of the host post-processing kernels with numba.

Every kernel is compiled for one explicit signature when its module is imported, so no call ever
compiles, and the machine code is cached on disk (numba's ``cache=True``): the first import on a
machine pays the compile (a few seconds), later imports load it. Where no cache location is
writable (read-only install, no writable home and no ``NUMBA_CACHE_DIR``) the kernels are compiled
in memory at every import instead of failing.

Kernels run on one thread (no ``parallel=True``), never with ``fastmath``: float32 operations keep
the order written, which the exactness of decoding and soft-NMS relies on. ``error_model="numpy"``
gives IEEE results for division by zero (``0/0`` is NaN, as in mmcv's C++) instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

F = TypeVar("F", bound=Callable)

_OPTIONS = {"nogil": True, "error_model": "numpy", "fastmath": False, "parallel": False}


def kernel(signature: str) -> Callable[[F], F]:
    """Decorator: compile ``fn`` for ``signature`` now, cached on disk where a cache dir is writable."""

    def wrap(fn: F) -> F:
        try:
            return numba.njit(signature, cache=True, **_OPTIONS)(fn)
        except RuntimeError as e:  # "cannot cache function ...: no locator available"
            if "cannot cache" not in str(e):
                raise
            return numba.njit(signature, cache=False, **_OPTIONS)(fn)

    return wrap


def inline(fn: F) -> F:
    """Decorator for a helper compiled into each kernel that calls it (no signature, no cache of its own)."""
    return numba.njit(inline="always", **_OPTIONS)(fn)
