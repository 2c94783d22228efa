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


EVENTS = "# Event tables:"  # where the demo spec's [[events]] begin


def records_only(spec_path: Path, tmp_path_factory) -> Path:
    """The demo spec without its event tables, for tests of the records table's onboarding
    (event tables have tests of their own, test_events.py): each onboarding then takes a
    third of the time."""
    path = tmp_path_factory.mktemp("spec") / spec_path.name
    path.write_text(spec_path.read_text(encoding="utf-8").split(EVENTS)[0], encoding="utf-8")
    return path
