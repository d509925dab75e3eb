"""Shared fixtures: where the mmdet golden outputs live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "golden.json").is_file():
        pytest.skip(f"mmdet golden outputs not found at {GOLDEN} (they ship in ../shared beside the repo)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_info(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "golden.json").read_text())
