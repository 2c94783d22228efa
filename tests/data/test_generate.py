"""The synthetic raw extract looks like a real HIS/EMR export and is reproducible."""

from __future__ import annotations

import json

import polars as pl
import pytest

from sandbox.data import idcard
from sandbox.data.generate import SCHEMAS, generate
from sandbox.data.reference import icd10
from sandbox.data.reference.population import CONSENT_SHARES


def read(raw, table: str) -> pl.DataFrame:
    return pl.read_parquet(raw / f"{table}.parquet")


def test_every_table_has_its_documented_schema(raw):
    for table, schema in SCHEMAS.items():
        assert dict(read(raw, table).schema) == schema, table
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["patients"] == 1500
    assert manifest["rows"]["visits"] == read(raw, "visits").height


def test_same_seed_same_extract_other_seed_other_extract(tmp_path):
    a = generate(300, 5, tmp_path / "a")
    b = generate(300, 5, tmp_path / "b")
    c = generate(300, 6, tmp_path / "c")
    assert a.rows == b.rows
    for table in SCHEMAS:
        assert read(a.out, table).equals(read(b.out, table)), table
    assert not read(a.out, "patients").equals(read(c.out, "patients"))


def test_id_numbers_are_valid_and_match_birth_date_and_sex(raw):
    patients = read(raw, "patients")
    assert patients["id_number"].n_unique() == patients.height
    assert all(idcard.is_valid(n) for n in patients["id_number"].to_list())
    checked = patients.select(
        birth=pl.col("id_number").str.slice(6, 8) == pl.col("birth_date").dt.strftime("%Y%m%d"),
        sex=(pl.col("id_number").str.slice(16, 1).cast(pl.Int32) % 2 == 1)
        == (pl.col("sex") == "男"),
        phone=pl.col("phone").str.contains(r"^1[3-9]\d{9}$"),
    )
    assert checked.select(pl.all().all()).row(0) == (True, True, True)


def test_minors_have_guardians_and_adults_do_not(raw):
    patients = read(raw, "patients").with_columns(
        age=(pl.date(2025, 12, 31) - pl.col("birth_date")).dt.total_days() / 365.25)
    minors = patients.filter(pl.col("age") < 14)
    adults = patients.filter(pl.col("age") >= 14.01)
    assert minors.height > 50
    assert minors["guardian_name"].null_count() == 0
    assert minors["guardian_id_number"].map_elements(idcard.is_valid,
                                                     return_dtype=pl.Boolean).all()
    assert adults["guardian_name"].null_count() == adults.height


def test_visits_dates_and_volume_are_plausible(raw):
    visits = read(raw, "visits").join(read(raw, "patients"), on="patient_id")
    assert visits.height / 1500 >= 10  # the demo needs ≥ 1M visits for 100k patients
    assert (visits["admission_date"] >= visits["birth_date"]).all()
    assert (visits["discharge_date"] >= visits["admission_date"]).all()
    inpatient = visits.filter(pl.col("visit_type") == "住院")
    assert inpatient["inpatient_no"].null_count() == 0
    assert visits.filter(pl.col("visit_type") != "住院")["inpatient_no"].null_count() == \
        visits.height - inpatient.height
    assert set(visits["visit_type"].unique()) == {"门诊", "急诊", "住院"}


def test_diagnoses_respect_sex_and_age_and_include_sensitive_ones(raw):
    diagnoses = read(raw, "diagnoses").join(read(raw, "visits"), on="visit_id").join(
        read(raw, "patients"), on="patient_id").with_columns(
        age=(pl.col("admission_date") - pl.col("birth_date")).dt.total_days() // 365)
    by_code = {d.code: d for d in icd10.DIAGNOSES}
    for (code,), rows in diagnoses.group_by("icd10_code"):
        d = by_code[code]
        if d.sex:
            assert set(rows["sex"].unique()) == {d.sex}, code
        if not d.chronic:  # chronic conditions are drawn at the reference date
            assert rows["age"].min() >= d.age_min and rows["age"].max() <= d.age_max, code
    present = {by_code[c].sensitive for c in diagnoses["icd10_code"].unique()}
    assert {"malignant", "std", "psychiatric", "pregnancy"} <= present
    primary = diagnoses.filter(pl.col("is_primary"))
    assert primary["visit_id"].n_unique() == primary.height == read(raw, "visits").height
    # Common things are common: hypertension far outnumbers cervical cancer.
    counts = primary["icd10_code"].value_counts()
    count = dict(zip(counts["icd10_code"], counts["count"], strict=True))
    assert count["I10"] > 20 * count.get("C53.9", 0)


def test_labs_costs_and_prescriptions_are_consistent(raw):
    labs = read(raw, "labs")
    assert 0.01 < labs["value"].null_count() / labs.height < 0.06
    assert labs.group_by("test_code").agg(pl.col("unit").n_unique())["unit"].max() == 1
    glucose = labs.filter(pl.col("test_code") == "GLU")["value"].drop_nulls()
    assert 4.0 < glucose.median() < 7.0
    costs = read(raw, "costs")
    assert (costs["total_cost"] > 0).all()
    gap = (costs["insurance_paid"] + costs["self_paid"] - costs["total_cost"]).abs()
    assert gap.max() < 0.011
    rx = read(raw, "prescriptions")
    assert ((rx["amount"] - rx["quantity"] * rx["unit_price"]).abs() < 0.011).all()


def test_consent_covers_seven_purposes_with_some_withdrawals(raw):
    consents = read(raw, "consents")
    assert consents.height == 1500
    for purpose, share in CONSENT_SHARES.items():
        assert abs(consents[purpose].mean() - share) < 0.06, purpose
    withdrawn = consents.filter(pl.col("withdrawn_at").is_not_null())
    assert 0 < withdrawn.height < 0.05 * consents.height
    assert (withdrawn["withdrawn_at"] >= withdrawn["consent_date"]).all()
    assert set(consents["consented_by"].unique()) == {"本人", "监护人"}


@pytest.mark.parametrize("patients,seed,message", [(0, 1, "--patients"), (5, -1, "--seed")])
def test_bad_arguments_are_refused(cli, tmp_path, patients, seed, message):
    result = cli("data", "generate", "--patients", patients, "--seed", seed,
                 "--out", tmp_path / "x")
    assert result.code != 0 and message in result.stderr
    assert not (tmp_path / "x").exists()
