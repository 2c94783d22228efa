"""The patient-level frame of random cohort definitions equals an independent computation
over the raw extract (tests/cohorts/oracle.py); published dates and codes read as the
periods and code sets they stand for."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.cohorts import codes, frame
from sandbox.cohorts.spec import CohortQuery, CohortSpec
from sandbox.gateway import cohorts
from sandbox.queries.withdrawals import Withdrawn
from tests.cohorts import oracle
from tests.cohorts.strategies import PURPOSE, definitions, load_world


@pytest.fixture(scope="module")
def world(raw, key_file, dataset):
    return load_world(raw, key_file, dataset)


def _built(world, definition: dict) -> dict[str, dict]:
    """The frame as the gateway builds it (``sandbox.gateway.cohorts.patients``)."""
    query = CohortQuery.model_validate({"cohort": definition, "query": {
        "dataset": "emr-visits", "kind": "count", "epsilon": 1.0}})
    dataset = SimpleNamespace(directory=world["dataset"], metadata=world["metadata"])
    rows = cohorts.patients(query, dataset, PURPOSE, Withdrawn()).collect()
    rows = rows.with_columns(pl.col(pl.Enum).cast(pl.String))
    return {r.pop(frame.PATIENT): r for r in rows.to_dicts()}


def _same(built: dict[str, dict], expected: dict[str, dict]) -> None:
    assert built.keys() == expected.keys()
    for patient, values in expected.items():
        for name, value in values.items():
            got = built[patient][name]
            if isinstance(value, float) and got is not None:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-9), (patient, name)
            else:
                assert got == value, (patient, name, got, value)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_cohorts_equal_an_independent_computation_over_the_raw_extract(world, data):
    definition = data.draw(definitions(world))
    expected = oracle.frame(definition, world["events"], world["consent"],
                            world["categories"])
    _same(_built(world, definition), expected)


def test_a_typical_cohort_is_not_empty_and_matches(world):
    """A diabetes cohort with glucose, metformin and readmission: a non-trivial answer
    (random definitions are often empty), checked the same way."""
    definition = {
        "dataset": "emr-visits",
        "index": {"table": "diagnoses", "codes": {"field": "diagnosis_code",
                                                  "codelist": ["E11"]},
                  "window": {"start": "2020-01-01"}},
        "variables": {
            "glucose": {"kind": "max", "field": "value", "events": {
                "table": "labs", "where": [{"field": "test_code", "op": "eq",
                                            "value": "GLU"}]}},
            "band": {"kind": "bands", "of": "glucose", "edges": [0, 7, 11.1, 50]},
            "metformin": {"kind": "exists", "events": {
                "table": "prescriptions", "where": [{"field": "drug_name", "op": "eq",
                                                     "value": "盐酸二甲双胍片"}]}},
            "later": {"kind": "count", "events": {"table": "diagnoses",
                                                  "window": {"after_index": [1, 400]}}},
            "readmitted": {"kind": "exists", "events": {
                "table": "visits", "where": [{"field": "visit_type", "op": "eq",
                                              "value": "住院"}],
                "window": {"after_index": [1, 30]}}},
            "days": {"kind": "days_to_first", "events": {"table": "visits"}},
            "again": {"kind": "survival", "horizon": 365, "events": {
                "table": "visits", "window": {"after_index": [1, 365]}},
                "followup": {"table": "visits"}},
            "first_drug": {"kind": "first_value", "field": "drug_name",
                           "events": {"table": "prescriptions"}},
        },
    }
    expected = oracle.frame(definition, world["events"], world["consent"],
                            world["categories"])
    assert len(expected) > 100
    assert {v["metformin"] for v in expected.values()} == {"yes", "no"}
    assert sum(v["later"] for v in expected.values()) > 0

    _same(_built(world, definition), expected)


# -- published values as periods and code sets -----------------------------------------------
@pytest.mark.parametrize(("label", "first", "last"), [
    ("2023-05-17", "2023-05-17", "2023-05-17"), ("2024-02", "2024-02-01", "2024-02-29"),
    ("2023-Q4", "2023-10-01", "2023-12-31"), ("2023", "2023-01-01", "2023-12-31"),
    ("*", None, None), ("2023-13", None, None), ("2023-Q5", None, None)])
def test_a_published_date_is_the_period_it_stands_for(label, first, last):
    start, end = codes.period("d")
    got = pl.DataFrame({"d": [label]}).select(start.alias("s"), end.alias("e")).row(0)
    assert [None if v is None else v.isoformat() for v in got] == [first, last]


@pytest.mark.parametrize(("entry", "value", "expected"), [
    ("E11", "E11", True), ("E11", "E11.9", True), ("E11", "E110", False),
    ("E11.9", "E11", False), ("E11", "E10-E14", False), ("E10-E14", "E10-E14", True),
    ("E10-E14", "E12.1", True), ("E10-E14", "E15", False), ("I00-I99", "I10-I15", True),
    ("E11", "*", False), ("E11", "Chapter IV", False), ("E11.6", "E11.65", True)])
def test_a_codelist_entry_matches_only_codes_wholly_within_it(entry, value, expected):
    assert codes.matches(entry, value) is expected
    assert oracle._code_in([entry], value) is expected


def test_definitions_the_catalogue_does_not_allow_are_refused(world):
    from sandbox.cohorts.checks import check
    from sandbox.errors import InputError, PolicyRefusal
    base = {"dataset": "emr-visits", "index": {"table": "diagnoses"}}
    cases = [
        ({**base, "index": {"table": "admissions"}}, InputError, "unknown table"),
        ({**base, "variables": {"x": {"kind": "mean", "field": "test_code",
                                      "events": {"table": "labs"}}}}, InputError,
         "numeric field"),
        ({**base, "variables": {"x": {"kind": "count", "events": {
            "table": "labs", "where": [{"field": "test_code", "op": "eq",
                                        "value": "NOPE"}]}}}}, InputError,
         "not among the public categories"),
        ({**base, "variables": {"x": {"kind": "count", "events": {
            "table": "labs", "codes": {"field": "test_code", "codelist": ["E11"]}}}}},
         InputError, "no ICD-10 codes"),
        ({**base, "variables": {"x": {"kind": "count", "events": {
            "table": "labs", "where": [{"field": "pseudonym", "op": "eq",
                                        "value": "a"}]}}}}, InputError, "unknown field"),
    ]
    for definition, error, words in cases:
        with pytest.raises(error, match=words):
            check(CohortSpec.model_validate(definition), world["metadata"])
    granted = {"diagnoses.diagnosis_code", "diagnoses.diagnosed_on"}
    check(CohortSpec.model_validate(base), world["metadata"], granted)
    with pytest.raises(PolicyRefusal, match=r"labs: field .value. is outside"):
        check(CohortSpec.model_validate({**base, "variables": {"x": {
            "kind": "max", "field": "value", "events": {"table": "labs"}}}}),
            world["metadata"], granted | {"labs.test_code", "labs.sampled_on"})
    with pytest.raises(PolicyRefusal, match="diagnosed_on"):
        check(CohortSpec.model_validate(base), world["metadata"], {"diagnoses.diagnosis_code"})
    # a table none of whose fields is granted tells nothing, not even who has events in it
    with pytest.raises(PolicyRefusal, match="no field of prescriptions"):
        check(CohortSpec.model_validate({**base, "variables": {"x": {
            "kind": "exists", "events": {"table": "prescriptions"}}}}),
            world["metadata"], granted)
    with pytest.raises(InputError, match="as finely as a month"):
        check(CohortSpec.model_validate({
            "dataset": "emr-visits", "index": {"table": "records"},
            "variables": {"m": {"kind": "index_period", "level": "month"}}}),
            world["metadata"])
    with pytest.raises(InputError, match="too close together"):
        check(CohortSpec.model_validate({**base, "variables": {
            "n": {"kind": "count", "events": {"table": "diagnoses"}},
            "b": {"kind": "bands", "of": "n", "edges": [1, 1.0000001, 1.0000002, 2]}}}),
            world["metadata"])


@pytest.mark.parametrize(("variables", "words"), [
    ({"n": {"kind": "count", "events": {"table": "labs"}},
      "b": {"kind": "bands", "of": "n", "edges": [0, float("nan"), 50]}}, "finite"),
    ({"n": {"kind": "count", "events": {"table": "labs"}},
      "b": {"kind": "bands", "of": "n", "edges": [0, 7, float("inf")]}}, "finite"),
    ({"count": {"kind": "count", "events": {"table": "labs"}}}, "a release's own columns"),
    ({"suppressed": {"kind": "exists", "events": {"table": "labs"}}},
     "a release's own columns"),
])
def test_definitions_that_would_fail_after_the_charge_are_refused_before(variables, words):
    """Found by the red team: each was charged, then failed or came back garbled."""
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match=words):
        CohortSpec.model_validate({"dataset": "emr-visits", "index": {"table": "labs"},
                                   "variables": variables})


def _tiny(visits: list[tuple[str, str, str]]) -> tuple[dict, dict[str, pl.DataFrame]]:
    """A dataset of one event table, ``visits`` (patient, date label, type)."""
    labels = sorted({d for _, d, _ in visits})
    metadata = {"patient_key": "pseudonym", "contribution_bound": 10,
                "sample_size": {"patients": 3, "records": len(visits)},
                "tables": {"visits": {"contribution_bound": 10,
                                      "sample_size": {"patients": 3, "records": len(visits)},
                                      "fields": [
        {"name": "pseudonym", "type": "string", "role": "patient_key"},
        {"name": "on", "type": "string", "role": "quasi_identifier", "hierarchy": "date",
         "categories": labels},
        {"name": "kind", "type": "string", "role": "attribute",
         "categories": ["门诊", "住院"]}]}}}
    frame = pl.DataFrame(visits, schema=["pseudonym", "on", "kind"], orient="row")
    return metadata, {"visits": frame}


def test_survival_and_days_count_only_what_day_level_dates_make_certain():
    metadata, tables = _tiny([
        ("a", "2023-01-10", "住院"), ("a", "2023-01-25", "住院"), ("a", "2023-06-01", "门诊"),
        ("b", "2023-02-01", "住院"), ("b", "2023-03-15", "门诊"), ("b", "2023-09", "住院"),
        ("c", "2023-03", "住院"), ("c", "2023-04-02", "住院"),
        ("d", "2023-05-01", "住院"), ("d", "2023-05-20", "门诊"),
    ])
    definition = CohortSpec.model_validate({
        "dataset": "tiny", "index": {"table": "visits", "where": [
            {"field": "kind", "op": "eq", "value": "住院"}]},
        "variables": {
            "back": {"kind": "survival", "horizon": 90,
                     "events": {"table": "visits", "where": [
                         {"field": "kind", "op": "eq", "value": "住院"}],
                         "window": {"after_index": [1, 90]}},
                     "followup": {"table": "visits"}},
            "late": {"kind": "survival", "horizon": 90,
                     "events": {"table": "visits", "where": [
                         {"field": "kind", "op": "eq", "value": "住院"}],
                         "window": {"after_index": [1, 36600]}},
                     "followup": {"table": "visits", "where": [
                         {"field": "kind", "op": "eq", "value": "门诊"}]}},
            "soon": {"kind": "exists", "events": {"table": "visits", "window": {
                "after_index": [1, 30]}}},
            "next": {"kind": "days_to_first", "events": {"table": "visits", "window": {
                "after_index": [1, 400]}}}}})
    rows = frame.build(definition, metadata, lambda t: tables[t].lazy()).collect()
    got = {r.pop(frame.PATIENT): r for r in rows.with_columns(
        pl.col(pl.Enum).cast(pl.String)).to_dicts()}
    # a: readmitted 15 days after; b: no stay within 90 days, seen again in September
    # (past the horizon: followed all 90 days); c: its index is a month — no day to count
    late = {p: (row.pop("late"), row.pop("late_event")) for p, row in got.items()}
    assert got["a"] == {"back": 15, "back_event": "yes", "soon": "yes", "next": 15}
    assert got["b"] == {"back": 90, "back_event": "no", "soon": "no", "next": 42}
    assert got["c"] == {"back": None, "back_event": None, "soon": "no", "next": None}
    assert got["d"] == {"back": 19, "back_event": "no", "soon": "yes", "next": 19}  # lost
    # b's only outpatient visit is on day 42, but its September stay shows it was followed
    # through the 90 days
    assert late["b"] == (90, "no") and late["d"] == (19, "no") and late["a"] == (15, "yes")
