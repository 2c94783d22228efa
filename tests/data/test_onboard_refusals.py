"""Onboarding refuses, with a clear message, a non-zero exit and no output at all: direct
identifiers hidden in published columns, and every kind of bad input."""

from __future__ import annotations

import polars as pl
import pytest

from sandbox.data import identifiers
from tests.data.conftest import EVENTS, leftovers

REMARK_FIELD = """
[[fields]]
name = "remark"
role = "attribute"
type = "string"
description = { zh = "备注", en = "remark" }
"""


def onboard_cli(cli, raw, spec, key, out):
    return cli("data", "onboard", "--raw", raw, "--spec", spec, "--key-file", key, "--out", out)


def assert_refused(result, out, *needles, code=None):
    assert result.code != 0
    if code is not None:
        assert result.code == code
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(out.parent, out.name) == []


def spec_with(spec_path, tmp_path, extra: str = "", replace: tuple[str, str] | None = None):
    """The spec with ``replace`` done and ``extra`` added; a public one without the event
    tables (a public dataset publishes aggregates of one table)."""
    text = spec_path.read_text(encoding="utf-8")
    if replace and replace[1] == 'grade = "public"':
        text = text.split(EVENTS)[0]
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "spec.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def put_in_remarks(raw, values: list[str]):
    visits = pl.read_parquet(raw / "visits.parquet")
    remarks = visits["remark"].to_list()
    for i, value in enumerate(values):
        remarks[100 + 37 * i] = value
    visits.with_columns(remark=pl.Series(remarks)).write_parquet(raw / "visits.parquet")


def test_a_phone_number_in_a_mislabeled_remark_column_is_caught(cli, raw_copy, key_file,
                                                                  spec_path, tmp_path):
    put_in_remarks(raw_copy, ["家属电话13812345678", "预约复诊", "联系人 15999990000 (女儿)"])
    out = tmp_path / "ds"
    result = onboard_cli(cli, raw_copy, spec_with(spec_path, tmp_path, REMARK_FIELD),
                         key_file, out)
    assert_refused(result, out, "direct identifiers found", "'remark'",
                   "mobile phone numbers in 2 rows", code=4)
    assert "13812345678" not in result.stderr  # the message masks what it found


def test_the_same_remark_column_without_identifiers_is_published(cli, raw_copy, key_file,
                                                                   spec_path, tmp_path):
    out = tmp_path / "ds"
    result = onboard_cli(cli, raw_copy, spec_with(spec_path, tmp_path, REMARK_FIELD),
                         key_file, out)
    assert result.code == 0, result.stderr
    assert "remark" in pl.read_parquet(out / "restricted" / "records.parquet").columns


def test_an_id_number_and_a_patient_name_in_a_remark_are_caught(cli, raw_copy, key_file,
                                                                 spec_path, tmp_path):
    patients = pl.read_parquet(raw_copy / "patients.parquet")
    put_in_remarks(raw_copy, [f"身份证 {patients['id_number'][3]}", patients["name"][7]])
    out = tmp_path / "ds"
    result = onboard_cli(cli, raw_copy, spec_with(spec_path, tmp_path, REMARK_FIELD),
                         key_file, out)
    assert_refused(result, out, "ID numbers in 1 rows", "patient names in 1 rows", code=4)


def test_scan_needs_a_valid_check_digit_for_an_id_number():
    frame = pl.DataFrame({
        "good": ["11010519491231002X", "x"],
        "bad_check": ["110105194912310021", "y"],
        "phone_as_int": [13912345678, 5],
        "order_no": ["20240101123456789", "z"],  # 17 digits: neither ID nor phone
    })
    found = {(f.column, f.kind) for f in identifiers.scan(frame, pl.Series([], dtype=pl.String))}
    assert found == {("good", "id_number"), ("phone_as_int", "phone")}


def test_missing_column(cli, raw, key_file, spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path, replace=('name = "hospital"\n',
                                                   'name = "hospital"\nsource = "clinic"\n'))
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec, key_file, out), out,
                   "column(s) clinic missing", "it has:", code=3)


def test_wrong_type(cli, raw_copy, key_file, spec_path, tmp_path):
    costs = pl.read_parquet(raw_copy / "costs.parquet")
    costs.with_columns(pl.col("total_cost").cast(pl.String)).write_parquet(
        raw_copy / "costs.parquet")
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw_copy, spec_path, key_file, out), out,
                   "field total_cost: the spec says float", "is String", code=3)


def test_an_event_table_with_a_missing_column_is_refused_naming_it(cli, raw, key_file,
                                                                    spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path, replace=('name = "test_code"\n',
                                                   'name = "test_code"\nsource = "loinc"\n'))
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec, key_file, out), out,
                   "event table labs: spec: column(s) loinc missing", code=3)


def test_unknown_hierarchy_level(cli, raw, key_file, spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path, replace=('levels = ["month", "quarter", "year"]',
                                                   'levels = ["month", "decade"]'))
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec, key_file, out), out,
                   "fields[admission_month].hierarchy.date.levels", "'decade' is not allowed",
                   code=3)


@pytest.mark.parametrize("edit,needle", [
    (("[privacy]\nk = 5", "[privacy]\nk = 3"), "privacy.k: Input should be greater than or"),
    (("widths = [5, 10, 20]", "widths = [5, 12]"), "larger multiple"),
    (('name = "hospital"\n', 'name = "hospital"\nsource = "phone"\n'),
     "fields publish direct identifiers ['phone']"),
    (("[dataset]\n", "[dataset]\nowner = 1\n"), "dataset.owner: Extra inputs are not permitted"),
    (('grade = "restricted"', 'grade = "secret"'), "'secret' is not allowed"),
    (('contribution_bound = 20\n', ''), "privacy.contribution_bound: Field required"),
    (('name = "unit"\n', 'name = "unit"\nsource = "phone"\n'),
     "event table labs: fields publish direct identifiers ['phone']"),
    (('name = "labs"', 'name = "consent"'), "reserved name: ['consent']"),
    (('name = "labs"', 'name = "diagnoses"'), "named twice or by a reserved name: ['diagnoses']"),
])
def test_bad_spec_values(cli, raw, key_file, spec_path, tmp_path, edit, needle):
    out = tmp_path / "ds"
    result = onboard_cli(cli, raw, spec_with(spec_path, tmp_path, replace=edit), key_file, out)
    assert_refused(result, out, "is invalid", needle, code=3)


def test_spec_that_is_not_toml(cli, raw, key_file, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("[dataset\nid = ", encoding="utf-8")
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec, key_file, out), out, "is not valid TOML", code=3)


def test_missing_spec_file(cli, raw, key_file, tmp_path):
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, tmp_path / "nope.toml", key_file, out), out,
                   "spec file", "not found", code=2)


def test_missing_key_file(cli, raw, spec_path, tmp_path):
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec_path, tmp_path / "no.key", out), out,
                   "key file", "not found", "sandboxctl data keygen", code=2)


def test_short_or_malformed_key(cli, raw, spec_path, tmp_path):
    out = tmp_path / "ds"
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    assert_refused(onboard_cli(cli, raw, spec_path, short, out), out, "at least 32", code=2)
    junk = tmp_path / "junk.key"
    junk.write_text("not hex at all\n")
    assert_refused(onboard_cli(cli, raw, spec_path, junk, out), out, "hex key", code=2)


def test_keygen_refuses_to_overwrite(cli, key_file):
    before = key_file.read_text()
    result = cli("data", "keygen", key_file)
    assert result.code == 2 and "refusing to overwrite" in result.stderr
    assert key_file.read_text() == before
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_missing_raw_directory_and_table(cli, raw_copy, key_file, spec_path, tmp_path):
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, tmp_path / "nowhere", spec_path, key_file, out), out,
                   "raw extract directory", "not found", code=2)
    (raw_copy / "costs.parquet").unlink()
    assert_refused(onboard_cli(cli, raw_copy, spec_path, key_file, out), out,
                   "raw table 'costs' not found", code=2)


def test_unreadable_table(cli, raw_copy, key_file, spec_path, tmp_path):
    (raw_copy / "patients.parquet").write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw_copy, spec_path, key_file, out), out,
                   "cannot read raw table", "patients.parquet", code=2)


def test_join_that_is_not_one_to_one(cli, raw, key_file, spec_path, tmp_path):
    spec = spec_with(spec_path, tmp_path, replace=("where = { is_primary = true }\n", ""))
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec, key_file, out), out,
                   "join with diagnoses on 'visit_id' is not one-to-one", code=3)


def test_too_few_patients_for_the_minimum_count(cli, key_file, spec_path, tmp_path):
    raw = tmp_path / "tiny"
    assert cli("data", "generate", "--patients", 4, "--seed", 1, "--out", raw).code == 0
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw, spec_path, key_file, out), out,
                   "covers 4 patients, fewer than the minimum count 5", code=4)


def test_join_keys_of_different_types(cli, raw_copy, key_file, spec_path, tmp_path):
    costs = pl.read_parquet(raw_copy / "costs.parquet")
    costs.with_columns(pl.col("visit_id").str.slice(1).cast(pl.Int64)).write_parquet(
        raw_copy / "costs.parquet")
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw_copy, spec_path, key_file, out), out,
                   "join with costs on 'visit_id': the key is String in the extract but "
                   "Int64 in costs", code=3)


def test_an_empty_extract(cli, raw_copy, key_file, spec_path, tmp_path):
    for table in ("visits", "costs"):
        path = raw_copy / f"{table}.parquet"
        pl.read_parquet(path).clear().write_parquet(path)
    out = tmp_path / "ds"
    assert_refused(onboard_cli(cli, raw_copy, spec_path, key_file, out), out,
                   "covers 0 patients, fewer than the minimum count 5", code=4)


def test_a_malformed_code_that_is_not_code_like_is_not_repeated(cli, raw_copy, key_file,
                                                                spec_path, tmp_path):
    diagnoses = pl.read_parquet(raw_copy / "diagnoses.parquet")
    first = diagnoses["is_primary"].arg_true()[0]
    codes = diagnoses["icd10_code"].to_list()
    codes[first] = "王小明 13812345678"
    diagnoses.with_columns(icd10_code=pl.Series(codes)).write_parquet(
        raw_copy / "diagnoses.parquet")
    out = tmp_path / "ds"
    result = onboard_cli(cli, raw_copy, spec_path, key_file, out)
    assert_refused(result, out, "1 values are not ICD-10 codes (the first is not shown",
                   code=3)
    assert "13812345678" not in result.stderr and "王小明" not in result.stderr
