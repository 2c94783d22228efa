"""The guide's three grades: public datasets hold group statistics only; identifiable ones
may keep named identifiers such as an address, never ID numbers, phones or names."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from sandbox.data.onboard import onboard
from sandbox.errors import PolicyRefusal, SpecError
from tests.data.conftest import records_only
from tests.data.test_onboard_refusals import spec_with


@pytest.fixture(scope="module")
def spec_path(spec_path, tmp_path_factory) -> Path:
    """The demo spec without its event tables (tested in test_events.py)."""
    return records_only(spec_path, tmp_path_factory)


ADDRESS_FIELD = """
[[fields]]
name = "{name}"
source = "{source}"
role = "attribute"
type = "string"
description = {{ zh = "标识符", en = "identifier" }}
"""


def test_public_grade_publishes_only_counts_of_at_least_five_patients(
        raw, key_file, spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path, replace=('grade = "restricted"', 'grade = "public"'))
    result = onboard(raw, spec, key_file, tmp_path / "public")
    out = tmp_path / "public"
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "public", "report.json",
                                                     "report.md", "spec.toml"]
    table = pl.read_parquet(out / "public" / "aggregates.parquet")
    assert "pseudonym" not in table.columns and "total_cost" not in table.columns
    assert table["patients"].min() >= 5
    assert table["records"].sum() <= result.report["after"]["records"]
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["grade"] == "public" and "patient_key" not in metadata
    assert [f["name"] for f in metadata["tables"]["aggregates"]["fields"]] == table.columns


def test_identifiable_grade_may_keep_an_address(raw, key_file, spec_path, tmp_path):
    spec = spec_with(
        spec_path, tmp_path,
        extra=ADDRESS_FIELD.format(name="home_address", source="address"),
        replace=('grade = "restricted"',
                 'grade = "identifiable"\n'),
    )
    text = spec.read_text().replace('name_columns = ["name", "guardian_name"]',
                                    'name_columns = ["name", "guardian_name"]\nkeep = ["address"]')
    spec.write_text(text)
    onboard(raw, spec, key_file, tmp_path / "ds")
    records = pl.read_parquet(tmp_path / "ds" / "restricted" / "records.parquet")
    assert records["home_address"].str.contains("号").all()


def test_keeping_an_id_number_is_still_refused(raw, key_file, spec_path, tmp_path):
    spec = spec_with(
        spec_path, tmp_path,
        extra=ADDRESS_FIELD.format(name="national_id", source="id_number"),
        replace=('grade = "restricted"', 'grade = "identifiable"'),
    )
    spec.write_text(spec.read_text().replace(
        'name_columns = ["name", "guardian_name"]',
        'name_columns = ["name", "guardian_name"]\nkeep = ["id_number"]'))
    with pytest.raises(PolicyRefusal, match="'national_id' holds ID numbers"):
        onboard(raw, spec, key_file, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_keep_is_refused_outside_the_identifiable_grade(raw, key_file, spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path)
    spec.write_text(spec.read_text().replace(
        'name_columns = ["name", "guardian_name"]',
        'name_columns = ["name", "guardian_name"]\nkeep = ["address"]'))
    with pytest.raises(SpecError, match="only allowed in an identifiable dataset"):
        onboard(raw, spec, key_file, tmp_path / "ds")
