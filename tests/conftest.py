"""Shared fixtures: mmdet 3.3.0's golden outputs, from the repository's copy (``tests/data/golden``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.data.golden_codec import unpacked


@pytest.fixture(scope="session")
def golden_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder laid out like ``../shared/golden`` (same file names), with the trimmed set.

    Unpacked from ``tests/data/golden`` once per run: pytest-xdist workers share the run's root
    (``basetemp/..``) and the first to finish renames its copy into place (see ``golden_codec.unpacked``).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return unpacked(root)


@pytest.fixture(scope="session")
def golden_info(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "golden.json").read_text())
