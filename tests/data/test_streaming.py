"""Onboarding in buckets publishes exactly what the in-memory pipeline published — the same
records, consent, catalog metadata and risk report — however many buckets the extract is
split into; reads no piece larger than a bucket; and refuses or fails as before, leaving
nothing behind (its spill files included)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from sandbox.data import extract as extract_module
from sandbox.data import spill as spill_module
from sandbox.data.onboard import onboard
from sandbox.errors import PolicyRefusal, SpecError
from tests.data.conftest import leftovers, records_only
from tests.data.reference import onboard_in_memory
from tests.data.test_onboard_refusals import REMARK_FIELD, put_in_remarks, spec_with


@pytest.fixture(scope="module")
def spec_path(spec_path, tmp_path_factory) -> Path:
    """The demo spec without its event tables (tested in test_events.py)."""
    return records_only(spec_path, tmp_path_factory)

ONE_BUCKET = 10**9
MANY = 1_500  # rows per bucket: the session extract's tables split into ~15 buckets


def _restricted(out, table: str) -> pl.DataFrame:
    return pl.read_parquet(out / "restricted" / f"{table}.parquet")


def _document(out, name: str) -> dict:
    document = json.loads((out / name).read_text(encoding="utf-8"))
    document.pop("created_at", None)
    document.pop("files", None)
    return document


def assert_matches_reference(out, reference) -> None:
    records = _restricted(out, "records")
    assert records.schema == reference.records.schema
    assert records.sort(records.columns).equals(reference.records.sort(records.columns))
    assert _restricted(out, "consent").equals(reference.consent)
    expected = dict(reference.metadata)
    expected.pop("created_at")
    expected.pop("files")
    # the reference computes the records table; event tables go through the same code
    # path (tests/data/test_events.py checks them on their own)
    metadata = _document(out, "metadata.json")
    metadata["tables"] = {k: v for k, v in metadata["tables"].items()
                          if k in expected["tables"]}
    assert metadata == expected
    report = _document(out, "report.json")
    report.pop("events", None)
    assert report == reference.report


@pytest.mark.parametrize("bucket_rows", [ONE_BUCKET, MANY, 400])
def test_bucketed_output_equals_the_in_memory_reference(raw, key_file, spec_path, tmp_path,
                                                        bucket_rows):
    onboard(raw, spec_path, key_file, tmp_path / "ds", bucket_rows=bucket_rows)
    assert_matches_reference(tmp_path / "ds", onboard_in_memory(raw, spec_path, key_file))


def test_the_number_of_buckets_changes_neither_rows_nor_their_order(raw, key_file, spec_path,
                                                                    tmp_path):
    onboard(raw, spec_path, key_file, tmp_path / "one", bucket_rows=ONE_BUCKET)
    onboard(raw, spec_path, key_file, tmp_path / "many", bucket_rows=MANY)
    for table in ("records", "consent"):
        assert _restricted(tmp_path / "one", table).equals(_restricted(tmp_path / "many", table))
    # records keep the order of the base table (visits), consent is sorted by pseudonym
    visits = pl.read_parquet(raw / "visits.parquet")
    costs = pl.read_parquet(raw / "costs.parquet").select("visit_id", "total_cost")
    expected = (visits.join(costs, on="visit_id", how="left", maintain_order="left")
                ["total_cost"].to_list())
    published = _restricted(tmp_path / "many", "records")["total_cost"].to_list()
    position = iter(expected)
    assert all(cost in position for cost in published)  # a subsequence, in order
    consent = _restricted(tmp_path / "many", "consent")["pseudonym"]
    assert consent.is_sorted()


@pytest.mark.parametrize("patients,seed", [(600, 3), (2500, 29)])
def test_other_extracts_and_the_public_grade_match_the_reference(cli, key_file, spec_path,
                                                                 tmp_path, patients, seed):
    raw = tmp_path / "raw"
    assert cli("data", "generate", "--patients", patients, "--seed", seed,
               "--out", raw).code == 0
    onboard(raw, spec_path, key_file, tmp_path / "ds", bucket_rows=700)
    assert_matches_reference(tmp_path / "ds", onboard_in_memory(raw, spec_path, key_file))

    public = spec_with(spec_path, tmp_path, replace=('grade = "restricted"', 'grade = "public"'))
    onboard(raw, public, key_file, tmp_path / "public", bucket_rows=700)
    reference = onboard_in_memory(raw, public, key_file)
    table = pl.read_parquet(tmp_path / "public" / "public" / "aggregates.parquet")
    assert table.equals(reference.aggregates)
    assert _document(tmp_path / "public", "report.json") == reference.report


def test_no_piece_read_is_larger_than_a_bucket(raw_copy, key_file, spec_path, tmp_path,
                                               monkeypatch):
    # Raw tables written in small row groups, as a large extract's are relative to a bucket.
    for path in raw_copy.glob("*.parquet"):
        pl.read_parquet(path).write_parquet(path, row_group_size=500)
    largest: dict[str, int] = {}

    def watch(kind, function):
        def watched(*args, **kwargs):
            result = function(*args, **kwargs)
            largest[kind] = max(largest.get(kind, 0), result.height)
            return result
        return watched

    monkeypatch.setattr(spill_module.Spill, "read", watch("bucket", spill_module.Spill.read))
    original = extract_module.Source.chunks

    def chunks(self, rows):
        for chunk in original(self, rows):
            largest["chunk"] = max(largest.get("chunk", 0), chunk.height)
            yield chunk

    monkeypatch.setattr(extract_module.Source, "chunks", chunks)
    onboard(raw_copy, spec_path, key_file, tmp_path / "ds", bucket_rows=MANY)
    assert 0 < largest["chunk"] <= MANY + 500
    # hashing spreads rows unevenly, but no bucket comes near the whole table (~21,000 rows)
    assert 0 < largest["bucket"] <= 2 * MANY
    assert_matches_reference(tmp_path / "ds", onboard_in_memory(raw_copy, spec_path, key_file))


def test_identifiers_found_in_any_bucket_are_counted_once_and_nothing_is_left(
        raw_copy, key_file, spec_path, tmp_path):
    patients = pl.read_parquet(raw_copy / "patients.parquet")
    put_in_remarks(raw_copy, ["家属电话13812345678", "联系人 15999990000 (女儿)",
                              f"身份证 {patients['id_number'][3]}", patients["name"][7],
                              patients["name"][9]])
    spec = spec_with(spec_path, tmp_path, REMARK_FIELD)
    messages = set()
    for rows in (ONE_BUCKET, 300):
        with pytest.raises(PolicyRefusal) as refused:
            onboard(raw_copy, spec, key_file, tmp_path / "ds", bucket_rows=rows)
        messages.add(str(refused.value))
        assert leftovers(tmp_path, "ds") == []
    (message,) = messages
    assert "mobile phone numbers in 2 rows" in message
    assert "ID numbers in 1 rows" in message and "patient names in 2 rows" in message


def test_malformed_codes_and_duplicate_join_keys_are_refused_whatever_the_buckets(
        raw_copy, key_file, spec_path, tmp_path):
    diagnoses = pl.read_parquet(raw_copy / "diagnoses.parquet")
    codes = diagnoses["icd10_code"].to_list()
    primary = diagnoses["is_primary"].arg_true().to_list()
    # three malformed codes, each on several visits far apart in the table
    for i, position in enumerate(primary[50::700]):
        codes[position] = ["XYZ", "A1", "C50.123"][i % 3]
    diagnoses.with_columns(icd10_code=pl.Series(codes)).write_parquet(
        raw_copy / "diagnoses.parquet")
    for rows in (ONE_BUCKET, 300):
        with pytest.raises(SpecError, match=r"field diagnosis_code: 3 values are not ICD-10"):
            onboard(raw_copy, spec_path, key_file, tmp_path / "ds", bucket_rows=rows)
        assert leftovers(tmp_path, "ds") == []
    no_filter = spec_with(spec_path, tmp_path, replace=("where = { is_primary = true }\n", ""))
    with pytest.raises(SpecError, match="not one-to-one"):
        onboard(raw_copy, no_filter, key_file, tmp_path / "ds", bucket_rows=300)
    assert leftovers(tmp_path, "ds") == []


def test_a_crash_while_writing_leaves_the_previous_dataset_and_no_spill(
        raw, key_file, spec_path, dataset, tmp_path, monkeypatch):
    import shutil

    from sandbox.data import onboard as onboard_module

    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_sorted = onboard_module.write_sorted
    calls = []

    def crash_on_second_table(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_sorted(*args, **kwargs)

    monkeypatch.setattr(onboard_module, "write_sorted", crash_on_second_table)
    with pytest.raises(OSError, match="No space left"):
        onboard(raw, spec_path, key_file, out, replace=True, bucket_rows=MANY)
    assert leftovers(tmp_path, "ds") == [out]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_range_buckets_keep_key_order_and_hash_buckets_meet_across_tables(tmp_path):
    keys = pl.DataFrame({"k": [9, 0, 5, 3, 7, 1, 8, 2, 6, 4]})
    spill = spill_module.Spill(tmp_path, "ranged", 3)
    spill.add(keys, spill_module.ranged(pl.col("k"), 10, 3))
    spill.close()
    assert [v for part in spill for v in sorted(part["k"].to_list())] == list(range(10))

    left, right = (spill_module.Spill(tmp_path, side, 4) for side in ("left", "right"))
    left.add(pl.DataFrame({"id": [f"P{i}" for i in range(40)]}),
             spill_module.hashed(pl.col("id"), 4))
    right.add(pl.DataFrame({"id": [f"P{i}" for i in range(39, -1, -1)], "x": range(40)}),
              spill_module.hashed(pl.col("id"), 4))
    left.close()
    right.close()
    for index in range(4):
        assert sorted(left.read(index)["id"]) == sorted(right.read(index)["id"])
    assert sum(left.read(i).height for i in range(4)) == 40



def test_spill_files_with_identifiable_values_are_private_to_the_controller(
        raw, key_file, spec_path, tmp_path, monkeypatch):
    # While onboarding runs, bucket files hold ID numbers and names; another account on the
    # controller's machine must not be able to list or read them.
    from sandbox.data import onboard as onboard_module

    seen = {}
    screen = onboard_module.screen

    def watched(frames, spec, work):
        screened = screen(frames, spec, work)
        seen["modes"] = {p: p.stat().st_mode & 0o777 for p in (work.root.parent, work.root)}
        seen["files"] = [p for p in work.root.rglob("*") if p.is_file()]
        return screened

    monkeypatch.setattr(onboard_module, "screen", watched)
    onboard(raw, spec_path, key_file, tmp_path / "ds", bucket_rows=MANY)
    hidden = next(iter(seen["modes"]))
    assert seen["modes"][hidden] == 0o700  # the hidden output directory shuts others out
    assert seen["files"] and all(not p.exists() for p in seen["files"])
    assert not (tmp_path / "ds" / ".work").exists()
