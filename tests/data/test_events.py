"""Event tables — every diagnosis, lab result and prescription — onboarded beside the
records table: one row per raw event, under the same keyed pseudonym, with the same
identifier checks, their own minimum count, catalog entries and dummy tables."""

from __future__ import annotations

import hashlib
import hmac
import json

import polars as pl
import pytest

from sandbox.data import dummy
from sandbox.data.onboard import onboard

EVENTS = {"visits": "admitted_on", "diagnoses": "diagnosed_on", "labs": "sampled_on",
          "prescriptions": "prescribed_on"}


def _table(dataset, name: str) -> pl.DataFrame:
    return pl.read_parquet(dataset / "restricted" / f"{name}.parquet")


def _pseudonyms(raw, key_file) -> pl.DataFrame:
    key = bytes.fromhex(key_file.read_text().strip())
    patients = pl.read_parquet(raw / "patients.parquet", columns=["patient_id", "id_number"])
    return patients.select("patient_id", pl.col("id_number").map_elements(
        lambda n: hmac.new(key, n.encode(), hashlib.sha256).hexdigest(),
        return_dtype=pl.String).alias("pseudonym"))


@pytest.mark.parametrize("name", list(EVENTS))
def test_every_raw_event_is_published_under_its_patients_pseudonym(raw, key_file, dataset,
                                                                   name):
    published = _table(dataset, name)
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    suppressed = report["events"][name]["suppression"]["records"]
    source = pl.read_parquet(raw / f"{name}.parquet")
    assert published.height == source.height - suppressed
    per_patient = (source.join(_pseudonyms(raw, key_file), on="patient_id")
                   .group_by("pseudonym").len().sort("pseudonym"))
    if suppressed == 0:  # the same events per patient, linked by the same pseudonym
        assert published.group_by("pseudonym").len().sort("pseudonym").equals(per_patient)
    records = pl.read_parquet(dataset / "restricted" / "records.parquet")
    shared = set(published["pseudonym"]) & set(records["pseudonym"])
    assert len(shared) > 0.9 * records["pseudonym"].n_unique()


def test_lab_values_are_the_raw_values_in_the_raw_order(raw, dataset):
    labs = _table(dataset, "labs")
    source = pl.read_parquet(raw / "labs.parquet")
    assert labs["value"].to_list() == source["value"].to_list()
    assert labs["test_code"].to_list() == source["test_code"].to_list()
    # each date is its day, or the month, quarter or year holding it (whichever level covers
    # k patients: with the session's 1,500 patients no day does)
    at = pl.col("sampled_at").dt
    shown = source.select(pl.lit(labs["sampled_on"]).alias("label"),
                          at.strftime("%Y-%m-%d").alias("day"),
                          at.strftime("%Y-%m").alias("month"),
                          pl.format("{}-Q{}", at.year(), at.quarter()).alias("quarter"),
                          at.year().cast(pl.String).alias("year"))
    assert shown.filter(~pl.any_horizontal(pl.col("label") == pl.col(c) for c in
                                           ("day", "month", "quarter", "year"))).is_empty()


@pytest.mark.parametrize("name", list(EVENTS))
def test_each_event_table_meets_the_minimum_count_and_holds_no_identifier(dataset, name):
    table = _table(dataset, name)
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    rule = report["events"][name]["rule"]
    classes = table.group_by(rule["quasi_identifiers"]).agg(pl.col("pseudonym").n_unique())
    assert classes["pseudonym"].min() >= 5
    assert report["events"][name]["after"]["k_patients"] >= 5
    forbidden = {"patient_id", "visit_id", "id_number", "name", "phone", "address",
                 "birth_date"}
    assert not forbidden & set(table.columns)
    assert f"## Event table `{name}`" in (dataset / "report.md").read_text(encoding="utf-8")


def test_the_catalog_describes_each_event_table_and_dummy_data_has_its_schema(dataset):
    meta = json.loads((dataset / "metadata.json").read_text(encoding="utf-8"))
    assert list(meta["tables"]) == ["records", "consent", *EVENTS]
    labs = {f["name"]: f for f in meta["tables"]["labs"]["fields"]}
    assert labs["pseudonym"]["role"] == "patient_key"
    assert labs["value"]["bounds"] == [0, 1100]
    assert "GLU" in labs["test_code"]["categories"]
    assert meta["tables"]["labs"]["contribution_bound"] == 300
    assert meta["tables"]["diagnoses"]["sample_size"]["records"] == _table(
        dataset, "diagnoses").height
    for name in EVENTS:
        assert f"restricted/{name}.parquet" in meta["files"]
        frame = pl.read_parquet(dataset / "dummy" / f"{name}.parquet")
        assert dict(frame.schema) == dummy.schema(meta, name)
        assert dict(frame.schema) == dict(_table(dataset, name).schema)


def test_event_tables_are_the_same_whatever_the_number_of_buckets(raw, key_file, spec_path,
                                                                 tmp_path):
    onboard(raw, spec_path, key_file, tmp_path / "one", bucket_rows=10**9)
    onboard(raw, spec_path, key_file, tmp_path / "many", bucket_rows=5000)  # ~10 buckets
    for name in EVENTS:
        assert _table(tmp_path / "one", name).equals(_table(tmp_path / "many", name))
    reports = [json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8"))
               for d in ("one", "many")]
    assert reports[0]["events"] == reports[1]["events"]
