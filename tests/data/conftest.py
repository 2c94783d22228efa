"""Helpers for data-plane tests; the extract and dataset fixtures live in tests/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def raw_copy(raw, tmp_path) -> Path:
    """A private copy of the extract that a test may alter."""
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    return copy


def leftovers(parent: Path, name: str) -> list[Path]:
    """The output directory and any temporary sibling of it."""
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
