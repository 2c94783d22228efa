"""A restricted dataset keeps the minimum count, holds no direct identifier, carries stable
keyed pseudonyms, and ships dummy data that reproduces no restricted row."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from pycanon import anonymity

from sandbox.data import dummy
from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.data.onboard import onboard
from sandbox.data.pseudonym import create_key
from tests.data.conftest import leftovers, records_only


@pytest.fixture(scope="module")
def spec_path(spec_path, tmp_path_factory) -> Path:
    """The demo spec without its event tables (tested in test_events.py)."""
    return records_only(spec_path, tmp_path_factory)

QUASI = ["sex", "age_band", "residence", "ethnicity", "admission_month"]


def records(dataset) -> pl.DataFrame:
    return pl.read_parquet(dataset / "restricted" / f"{RECORDS}.parquet")


def test_every_quasi_identifier_combination_covers_five_patients(dataset):
    frame = records(dataset).to_pandas()
    patients = frame.groupby(QUASI, dropna=False)["pseudonym"].nunique()
    assert patients.min() >= 5
    # every single published value of the sensitive attribute as well
    assert frame.groupby("diagnosis_code")["pseudonym"].nunique().min() >= 5


def test_report_k_and_l_agree_with_pycanon(dataset):
    report = json.loads((dataset / "report.json").read_text())
    frame = records(dataset).to_pandas()
    assert report["after"]["k_records"] == anonymity.k_anonymity(frame, QUASI)
    assert report["after"]["l_diversity"] == anonymity.l_diversity(frame, QUASI,
                                                                   ["diagnosis_code"])
    assert report["after"]["k_patients"] >= 5
    assert report["before"]["k_patients"] == 1
    assert report["after"]["unique_records"] == 0 < report["before"]["unique_records"]
    assert report["rule"]["quasi_identifiers"] == QUASI


def test_report_before_figures_agree_with_pycanon_on_raw_values(raw, key_file, spec_path,
                                                               tmp_path):
    # Before generalisation the classes are the raw values; pycanon sees the same k.
    result = onboard(raw, spec_path, key_file, tmp_path / "ds")
    visits = (pl.read_parquet(raw / "visits.parquet")
              .join(pl.read_parquet(raw / "patients.parquet"), on="patient_id")
              .with_columns(residence=pl.concat_str("province", "city", "district",
                                                    separator="/")))
    frame = visits.with_columns(
        age=(pl.col("admission_date").dt.year() - pl.col("birth_date").dt.year())
    ).to_pandas()
    k = anonymity.k_anonymity(frame, ["sex", "residence", "ethnicity", "admission_date"])
    assert result.report["before"]["k_records"] == k == 1


def test_rare_diagnosis_is_generalised_like_the_guides_cervical_cancer_example(
        raw_copy, key_file, spec_path, tmp_path):
    # Give exactly four women cervical cancer (C53.9) as the primary diagnosis of a visit.
    patients = pl.read_parquet(raw_copy / "patients.parquet")
    diagnoses = pl.read_parquet(raw_copy / "diagnoses.parquet")
    women = patients.filter(pl.col("sex") == "女")["patient_id"].head(4)
    chosen = (diagnoses.filter(pl.col("is_primary") & pl.col("patient_id").is_in(women.implode()))
              .group_by("patient_id").agg(pl.col("visit_id").first())["visit_id"])
    diagnoses = diagnoses.with_columns(
        icd10_code=pl.when(pl.col("icd10_code").is_in(["C53.9", "C56"])).then(pl.lit("C50.9"))
        .when(pl.col("visit_id").is_in(chosen.implode()) & pl.col("is_primary"))
        .then(pl.lit("C53.9")).otherwise("icd10_code"))
    diagnoses.write_parquet(raw_copy / "diagnoses.parquet")

    result = onboard(raw_copy, spec_path, key_file, tmp_path / "ds")
    out = records(tmp_path / "ds")
    assert "C53.9" not in out["diagnosis_code"].to_list()
    assert "C53.9" in result.report["generalisation"]["diagnosis_code"]["examples"]
    generalised = result.report["generalisation"]["diagnosis_code"]["examples"]["C53.9"]
    assert generalised in {"C53", "C51-C58", "Chapter II", "*"}
    labels = out.filter(pl.col("diagnosis_code") == generalised)
    assert labels["pseudonym"].n_unique() >= 5


def test_pseudonyms_are_keyed_hmacs_stable_for_one_key_and_different_for_another(
        raw, key_file, spec_path, dataset, tmp_path):
    key = bytes.fromhex(key_file.read_text().strip())
    patients = pl.read_parquet(raw / "patients.parquet")
    expected = {hmac.new(key, n.encode(), hashlib.sha256).hexdigest()
                for n in patients["id_number"].to_list()}
    published = set(records(dataset)["pseudonym"].unique().to_list())
    assert published <= expected
    assert len(published) > 0.95 * patients.height

    again = onboard(raw, spec_path, key_file, tmp_path / "again")
    assert set(records(again.out)["pseudonym"].unique().to_list()) == published

    other_key = create_key(tmp_path / "other.key")
    other = onboard(raw, spec_path, other_key, tmp_path / "other")
    assert not set(records(other.out)["pseudonym"].unique().to_list()) & published


def test_no_direct_identifier_or_key_reaches_the_output(raw, key_file, dataset):
    patients = pl.read_parquet(raw / "patients.parquet")
    key_hex = key_file.read_text().strip()
    out = records(dataset)
    assert not set(out.columns) & {"name", "id_number", "phone", "address", "patient_id",
                                   "visit_id", "inpatient_no", "birth_date"}
    assert out["pseudonym"].str.contains(r"^[0-9a-f]{64}$").all()
    text = out.drop("pseudonym").select(
        pl.concat_str(pl.all().cast(pl.String), separator="|")).to_series()
    assert not text.str.contains(r"(^|\D)1[3-9]\d{9}(\D|$)").any()
    assert not text.str.contains(r"\d{17}[\dX]").any()
    names = set(patients["name"].to_list())
    assert not names & {v for c in out.columns if out[c].dtype == pl.String
                        for v in out[c].unique().to_list()}
    for path in dataset.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert key_hex.encode() not in content and bytes.fromhex(key_hex) not in content


def test_dummy_data_has_the_schema_and_reproduces_no_restricted_row(dataset):
    metadata = json.loads((dataset / "metadata.json").read_text())
    for table in (RECORDS, CONSENT):
        real = pl.read_parquet(dataset / "restricted" / f"{table}.parquet")
        fake = pl.read_parquet(dataset / "dummy" / f"{table}.parquet")
        assert fake.schema == real.schema == dummy.schema(metadata, table)
        assert fake.height > 0
        assert fake.join(real, on=real.columns, how="semi", nulls_equal=True).height == 0
        assert not set(fake["pseudonym"]) & set(real["pseudonym"])
    fake = pl.read_parquet(dataset / "dummy" / f"{RECORDS}.parquet")
    fields = {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]}
    for name, field in fields.items():
        if field.get("categories"):
            assert set(fake[name].unique()) <= set(field["categories"]), name
        if field.get("bounds"):
            low, high = field["bounds"]
            assert fake[name].min() >= low and fake[name].max() <= high, name


def test_dummy_data_does_not_depend_on_rows():
    # Two metadata documents that differ only in facts about rows they never mention give
    # identical dummy data: the generator reads metadata only.
    metadata = {
        "years": [2019, 2025],
        "tables": {
            RECORDS: {"fields": [
                {"name": "pseudonym", "type": "string", "role": "patient_key"},
                {"name": "sex", "type": "string", "role": "quasi_identifier",
                 "categories": ["女", "男"]},
                {"name": "cost", "type": "float", "role": "attribute", "bounds": [0, 10]},
            ]},
            CONSENT: {"fields": [
                {"name": "pseudonym", "type": "string", "role": "patient_key"},
                {"name": "medical_research", "type": "boolean", "role": "consent"},
                {"name": "withdrawn_at", "type": "date", "role": "consent"},
            ]},
        },
    }
    a = dummy.make(metadata, 50, seed=3)
    b = dummy.make({**metadata, "sample_size": {"patients": 1}}, 50, seed=3)
    assert a[RECORDS].equals(b[RECORDS]) and a[CONSENT].equals(b[CONSENT])


def test_catalog_metadata_describes_the_restricted_tables(dataset):
    metadata = json.loads((dataset / "metadata.json").read_text())
    out = records(dataset)
    assert metadata["grade"] == "restricted"
    assert metadata["sample_size"] == {"patients": out["pseudonym"].n_unique(),
                                       "records": out.height}
    assert metadata["years"] == [2019, 2025]
    assert metadata["title"]["zh"] and metadata["title"]["en"]
    assert [f["name"] for f in metadata["tables"][RECORDS]["fields"]] == out.columns
    assert metadata["contribution_bound"] == 20
    for field in metadata["tables"][RECORDS]["fields"]:
        assert field["description"]["zh"] and field["description"]["en"]
        if field["role"] in ("quasi_identifier", "sensitive") or (
                field["type"] == "string" and field["role"] == "attribute"):
            counts = out.group_by(field["name"]).agg(pl.col("pseudonym").n_unique())
            listed = counts.filter(pl.col(field["name"]).is_in(field["categories"]))
            assert listed["pseudonym"].min() >= 5, field["name"]
    for name, digest in metadata["files"].items():
        assert hashlib.sha256((dataset / name).read_bytes()).hexdigest() == digest


def test_consent_table_follows_the_records_and_keeps_withdrawals(raw, key_file, dataset):
    consent = pl.read_parquet(dataset / "restricted" / f"{CONSENT}.parquet")
    out = records(dataset)
    assert set(consent["pseudonym"]) == set(out["pseudonym"])
    assert consent["pseudonym"].n_unique() == consent.height
    raw_consents = pl.read_parquet(raw / "consents.parquet")
    withdrawn_raw = raw_consents["withdrawn_at"].drop_nulls().len()
    assert 0 < consent["withdrawn_at"].drop_nulls().len() <= withdrawn_raw
    # a patient's seven answers survive pseudonymisation unchanged
    key = bytes.fromhex(key_file.read_text().strip())
    ids = pl.read_parquet(raw / "patients.parquet").select("patient_id", "id_number")
    joined = raw_consents.join(ids, on="patient_id").with_columns(
        pseudonym=pl.col("id_number").map_elements(
            lambda n: hmac.new(key, n.encode(), hashlib.sha256).hexdigest(),
            return_dtype=pl.String))
    both = consent.join(joined, on="pseudonym", suffix="_raw")
    assert both.height == consent.height
    assert (both["ai_training"] == both["ai_training_raw"]).all()


def test_report_command_prints_markdown_and_json(cli, dataset):
    md = cli("data", "report", dataset)
    assert md.code == 0 and "k (patients in smallest class)" in md.stdout
    js = cli("data", "report", "--json", dataset)
    assert json.loads(js.stdout)["after"]["k_patients"] >= 5
    assert (dataset / "report.md").read_text().startswith("# Re-identification risk report")


def test_catalog_command_prints_both_languages(cli, dataset):
    zh = cli("data", "catalog", dataset)
    en = cli("data", "catalog", "--lang", "en", dataset)
    assert zh.code == en.code == 0
    assert "岭南区域门急诊及住院就诊数据集" in zh.stdout and "样本量" in zh.stdout
    assert "Lingnan regional" in en.stdout and "sample size" in en.stdout


def test_force_replaces_an_existing_dataset_only_when_complete(cli, raw, key_file, spec_path,
                                                               dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    refused = cli("data", "onboard", "--raw", raw, "--spec", spec_path, "--key-file",
                  key_file, "--out", out)
    assert refused.code != 0 and "already exists" in refused.stderr
    broken = cli("data", "onboard", "--raw", tmp_path / "missing", "--spec", spec_path,
                 "--key-file", key_file, "--out", out, "--force")
    assert broken.code != 0
    assert (out / "metadata.json").read_bytes() == (dataset / "metadata.json").read_bytes()
    done = cli("data", "onboard", "--raw", raw, "--spec", spec_path, "--key-file", key_file,
               "--out", out, "--force")
    assert done.code == 0, done.stderr
    assert leftovers(tmp_path, "ds") == [out]
    assert re.search(r"k = \d+", done.stdout)
