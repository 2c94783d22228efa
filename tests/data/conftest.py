"""A small raw extract and its onboarded dataset, made once per test session through the
real CLI; tests that change data copy them first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

SPEC = ROOT / "sandbox" / "data" / "specs" / "emr-visits.toml"
PATIENTS = 1500


@pytest.fixture(scope="session")
def spec_path() -> Path:
    return SPEC


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extract") / "raw"
    result = run_cli("data", "generate", "--patients", PATIENTS, "--seed", 11, "--out", out)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "pseudonym.key"
    assert run_cli("data", "keygen", path).code == 0
    return path


@pytest.fixture(scope="session")
def dataset(raw, key_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "emr-visits"
    result = run_cli("data", "onboard", "--raw", raw, "--spec", SPEC, "--key-file", key_file,
                     "--out", out)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture
def raw_copy(raw, tmp_path) -> Path:
    """A private copy of the extract that a test may alter."""
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    return copy


def leftovers(parent: Path, name: str) -> list[Path]:
    """The output directory and any temporary sibling of it."""
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
