"""An extract of another shape onboards from its own spec: one row per patient, other table
and column names, the cohort in CSV and its consent in Parquet, no year column, consent
without a signer or a withdrawal date (``sandbox/data/specs/breast-cancer.toml``). Its
ages — 686 patients, one aged 80 and two in their twenties — keep their 10-year bands;
the three are suppressed (0.4 % of the records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sandbox.data.idcard import check_digit
from sandbox.data.pseudonym import load_key, pseudonymise
from tests.conftest import ROOT

SPEC = ROOT / "sandbox" / "data" / "specs" / "breast-cancer.toml"
PATIENTS = 686


def write_extract(raw: Path, seed: int = 7) -> pl.DataFrame:
    """A breast cancer cohort like a public one of 686 patients: ages 21–80 around 53,
    menopausal status following age."""
    rng = np.random.default_rng(seed)
    ages = np.clip(rng.normal(54, 9, PATIENTS - 3).round(), 31, 79).astype(int).tolist()
    ages += [80, 23, 27]  # alone in their 10-year (and 20-year) ranges
    rng.shuffle(ages)
    menopause = ["pre" if a < 50 or (a < 54 and rng.random() < 0.5) else "post" for a in ages]
    bodies = [f"44010{1 + i % 9}19{50 + i % 40}0{1 + i % 9}1{i % 10}{i % 1000:03d}"
              for i in range(PATIENTS)]
    cohort = pl.DataFrame({
        "pid": [f"P{i:05d}" for i in range(PATIENTS)],
        "id_card": [b + check_digit(b) for b in bodies],
        "full_name": [f"患者{i}" for i in range(PATIENTS)],
        "age": ages,
        "menostat": menopause,
        "tsize": rng.integers(3, 120, PATIENTS),
        "tgrade": rng.choice(["I", "II", "III"], PATIENTS, p=[0.12, 0.64, 0.24]),
        "pnodes": rng.poisson(4, PATIENTS),
        "time": rng.integers(8, 2660, PATIENTS),
        "cens": rng.choice(["1", "0"], PATIENTS),
    })
    raw.mkdir(parents=True, exist_ok=True)
    cohort.write_csv(raw / "cohort.csv")
    pl.DataFrame({"pid": cohort["pid"],
                  "medical_research": rng.random(PATIENTS) < 0.95}).write_parquet(
        raw / "consent.parquet")
    return cohort


@pytest.fixture(scope="module")
def onboarded(cli, key_file, tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("breast")
    cohort = write_extract(root / "raw")
    result = cli("data", "onboard", "--raw", root / "raw", "--spec", SPEC,
                 "--key-file", key_file, "--out", root / "ds")
    assert result.code == 0, result.stderr
    return root / "ds", cohort


def test_it_onboards_and_keeps_ages_in_10_year_bands(onboarded):
    out, cohort = onboarded
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    age = report["generalisation"]["age"]
    assert age["levels_used"] == ["10-wide bands"]
    assert report["suppression"]["records"] == 3
    assert report["after"]["k_patients"] >= 5
    records = pl.read_parquet(out / "restricted" / "records.parquet")
    assert records.height == PATIENTS - 3
    assert set(records["age"]) == {f"{lo}-{lo + 9}" for lo in range(30, 80, 10)}
    # every other column as the extract has it, typed as the spec says
    assert records.schema["tumour_size"] == pl.Int64
    assert records.schema["recurred"] == pl.Boolean
    kept = cohort.filter(~pl.col("age").is_in([80, 23, 27]))
    assert records["tumour_size"].to_list() == kept["tsize"].to_list()
    assert records["recurred"].to_list() == (kept["cens"] == "1").to_list()
    assert "id_card" not in records.columns and "full_name" not in records.columns
    assert "| records generalised | precision lost |" in (out / "report.md").read_text(
        encoding="utf-8")


def test_its_catalog_and_consent_need_no_year_signer_or_withdrawal_date(onboarded):
    out, _ = onboarded
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["years"] == [] and meta["sample_size"]["patients"] == PATIENTS - 3
    consent = pl.read_parquet(out / "restricted" / "consent.parquet")
    assert consent.height == PATIENTS - 3
    assert consent["consented_by"].null_count() == consent.height
    assert consent["withdrawn_at"].null_count() == consent.height


def test_its_cohorts_work_one_row_per_patient_without_dates(onboarded, key_file):
    """A cohort of the extract's own shape: every consenting patient, by grade, with a
    banded node count and recurrence — as computed from the raw CSV."""
    from sandbox.cohorts import frame
    from sandbox.cohorts.spec import CohortSpec
    out, cohort = onboarded
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    spec = CohortSpec.model_validate({
        "dataset": "breast-cancer", "index": {"table": "records"},
        "variables": {
            "grade": {"kind": "first_value", "field": "grade",
                      "events": {"table": "records"}},
            "nodes": {"kind": "max", "field": "positive_nodes",
                      "events": {"table": "records"}},
            "nodal": {"kind": "bands", "of": "nodes", "edges": [0, 1, 4, 100]},
            "recurred": {"kind": "exists", "events": {"table": "records", "where": [
                {"field": "recurred", "op": "eq", "value": True}]}}},
        "where": [{"field": "grade", "op": "in", "value": ["II", "III"]}]})
    restricted = out / "restricted"
    consenting = frame.consenting(pl.scan_parquet(restricted / "consent.parquet"),
                                  meta["patient_key"], "medical_research")
    built = frame.build(spec, meta, lambda t: pl.scan_parquet(restricted / f"{t}.parquet"),
                        consenting).collect()
    consent = pl.read_parquet(out.parent / "raw" / "consent.parquet")
    key = load_key(key_file)
    raw = (cohort.join(consent, on="pid")
           .filter(pl.col("medical_research") & ~pl.col("age").is_in([80, 23, 27])
                   & pl.col("tgrade").is_in(["II", "III"])))
    raw = raw.with_columns(pseudonymise(raw["id_card"], key).alias("pseudonym"))
    expected = {r["pseudonym"]: r for r in raw.iter_rows(named=True)}
    assert built.height == len(expected) > 400
    for row in built.with_columns(pl.col(pl.Enum).cast(pl.String)).iter_rows(named=True):
        source = expected[row[frame.PATIENT]]
        nodes = source["pnodes"]
        assert (row["grade"], row["nodes"]) == (source["tgrade"], nodes)
        assert row["nodal"] == ("[0, 1)" if nodes < 1 else "[1, 4)" if nodes < 4
                                else "[4, 100]" if nodes <= 100 else None)
        assert row["recurred"] == ("yes" if source["cens"] == "1" else "no")


def test_catalog_command_prints_it_without_years(cli, onboarded):
    out, _ = onboarded
    shown = cli("data", "catalog", out, "--lang", "en")
    assert shown.code == 0, shown.stderr
    assert "breast-cancer 2026.1" in shown.stdout and "years" not in shown.stdout


def test_a_csv_value_that_is_not_its_type_is_refused_without_being_repeated(
        cli, key_file, tmp_path):
    cohort = write_extract(tmp_path / "raw")
    cohort.with_columns(pl.when(pl.col("pid") == "P00042").then(pl.lit("138 1234 5678"))
                        .otherwise(pl.col("tsize").cast(pl.String)).alias("tsize")
                        ).write_csv(tmp_path / "raw" / "cohort.csv")
    result = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", SPEC,
                 "--key-file", key_file, "--out", tmp_path / "ds")
    assert result.code == 2, result.stderr
    assert "column 'tsize' holds a value that is not of type integer" in result.stderr
    assert "1234" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ds").exists()


def test_a_table_in_both_formats_is_refused(cli, key_file, tmp_path):
    cohort = write_extract(tmp_path / "raw")
    cohort.write_parquet(tmp_path / "raw" / "cohort.parquet")
    result = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", SPEC,
                 "--key-file", key_file, "--out", tmp_path / "ds")
    assert result.code == 3, result.stderr
    assert "both cohort.parquet and cohort.csv" in result.stderr


def test_an_id_number_is_keyed_as_the_portal_spells_it(cli, key_file, tmp_path):
    """Adversary: none — an extract that writes the check character in lower case or pads
    the number with spaces. The pseudonym is keyed on the number as the portal spells it
    when the patient withdraws (trimmed, upper case), so the withdrawal finds the patient,
    and one person spelled two ways is still one patient."""
    cohort = write_extract(tmp_path / "raw")
    ending_x = cohort.filter(pl.col("id_card").str.ends_with("X"))["pid"].head(5).to_list()
    padded = cohort.filter(~pl.col("pid").is_in(ending_x))["pid"].head(5).to_list()
    assert ending_x and padded
    cohort.with_columns(
        pl.when(pl.col("pid").is_in(ending_x)).then(pl.col("id_card").str.to_lowercase())
        .when(pl.col("pid").is_in(padded)).then(pl.format(" {} ", pl.col("id_card")))
        .otherwise(pl.col("id_card")).alias("id_card")).write_csv(tmp_path / "raw" / "cohort.csv")
    result = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", SPEC,
                 "--key-file", key_file, "--out", tmp_path / "ds")
    assert result.code == 0, result.stderr
    key = load_key(key_file)
    consent = pl.read_parquet(tmp_path / "ds" / "restricted" / "consent.parquet")
    chosen = cohort.filter(pl.col("pid").is_in(ending_x + padded))
    kept = chosen.filter(~pl.col("age").is_in([80, 23, 27]))["id_card"]
    portal_spelling = pseudonymise(kept.str.strip_chars().str.to_uppercase(), key)
    assert set(portal_spelling) <= set(consent["pseudonym"])


def test_who_consented_is_scanned_and_listed_only_when_common(cli, key_file, tmp_path):
    """Adversary: none — a consent extract whose signer column holds free text. A phone
    number there refuses the dataset (exit 4, masked); otherwise the catalog lists only
    signers that cover at least k patients."""
    write_extract(tmp_path / "raw")
    consent = pl.read_parquet(tmp_path / "raw" / "consent.parquet")
    signers = ["patient"] * (PATIENTS - 3) + ["guardian 王小明", "guardian 李四", "x"]
    consent.with_columns(signer=pl.Series(signers)).write_parquet(
        tmp_path / "raw" / "consent.parquet")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.read_text(encoding="utf-8").replace(
        'purposes = ["medical_research"]',
        'purposes = ["medical_research"]\nconsented_by = "signer"'), encoding="utf-8")
    result = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", spec,
                 "--key-file", key_file, "--out", tmp_path / "ds")
    assert result.code == 0, result.stderr
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text(encoding="utf-8"))
    signer = {f["name"]: f for f in meta["tables"]["consent"]["fields"]}["consented_by"]
    assert signer["categories"] == ["patient"]
    dummy_consent = pl.read_parquet(tmp_path / "ds" / "dummy" / "consent.parquet")
    assert set(dummy_consent["consented_by"].drop_nulls()) <= {"patient"}

    signers[10] = "guardian 13812345678"
    consent.with_columns(signer=pl.Series(signers)).write_parquet(
        tmp_path / "raw" / "consent.parquet")
    refused = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", spec,
                  "--key-file", key_file, "--out", tmp_path / "ds2")
    assert refused.code == 4, refused.stderr
    assert "consent column 'consented_by' holds mobile phone numbers" in refused.stderr
    assert "13812345678" not in refused.stderr
    assert not (tmp_path / "ds2").exists()


@pytest.mark.parametrize("damage", ["unclosed quote", "not UTF-8"])
def test_a_csv_file_that_is_not_well_formed_is_refused_without_its_text(cli, key_file,
                                                                        tmp_path, damage):
    write_extract(tmp_path / "raw")
    path = tmp_path / "raw" / "cohort.csv"
    text = path.read_bytes()
    broken = (text.replace(b"\nP00042,", b'\n"P00042 13812345678,', 1) if damage == "unclosed quote"
              else text.replace("患者42,".encode(), "患者42 13812345678,".encode("gbk"), 1))
    assert broken != text
    path.write_bytes(broken)
    result = cli("data", "onboard", "--raw", tmp_path / "raw", "--spec", SPEC,
                 "--key-file", key_file, "--out", tmp_path / "ds")
    assert result.code == 2, result.stderr
    assert "cannot read raw table" in result.stderr and "cohort.csv: " in result.stderr
    assert "13812345678" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ds").exists()
