"""The Spark lowering of the cohort frame (``sandbox.cohorts.spark``) gives, row for row,
the frame the Polars engine builds (``sandbox.cohorts.frame``) — on random definitions,
with withdrawals, and for dates whose catalogue lists no labels — run on the run's local
Spark Connect server."""

from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.cohorts import frame
from sandbox.cohorts import spark as lowered
from sandbox.cohorts.spec import CohortQuery
from sandbox.gateway import cohorts
from sandbox.queries.plan import consent_column
from sandbox.queries.spark import SparkExecutor
from sandbox.queries.withdrawals import Withdrawn
from tests.cohorts.strategies import PURPOSE, definitions, load_world
from tests.tiers import tier

TYPICAL = {
    "dataset": "emr-visits",
    "index": {"table": "diagnoses", "codes": {"field": "diagnosis_code",
                                              "codelist": ["E11", "I10-I15"]},
              "window": {"start": "2020-01-01"}, "which": "last"},
    "variables": {
        "glucose": {"kind": "max", "field": "value", "events": {
            "table": "labs", "where": [{"field": "test_code", "op": "eq", "value": "GLU"}]}},
        "control": {"kind": "bands", "of": "glucose", "edges": [0, 7, 11.1, 50]},
        "glucose2": {"kind": "square", "of": "glucose"},
        "metformin": {"kind": "exists", "events": {
            "table": "prescriptions", "where": [{"field": "drug_name", "op": "eq",
                                                 "value": "盐酸二甲双胍片"}]}},
        "later": {"kind": "count", "events": {"table": "diagnoses",
                                              "window": {"after_index": [-200, 400]}}},
        "days": {"kind": "days_to_first", "events": {"table": "visits"}},
        "first_drug": {"kind": "first_value", "field": "drug_name",
                       "events": {"table": "prescriptions"}},
        "last_test": {"kind": "last_value", "field": "test_code",
                      "events": {"table": "labs"}},
        "back": {"kind": "survival", "events": {"table": "visits",
                                                "window": {"after_index": [1, 400]}},
                 "followup": {"table": "labs"}, "horizon": 365},
        "quarter": {"kind": "index_period", "level": "quarter"},
    },
    "where": [{"field": "later", "op": "ge", "value": 0}],
}


@pytest.fixture(scope="module")
@tier("service")
def spark(spark_server):
    executor = SparkExecutor(spark_server.remote)
    yield executor
    executor.stop()


@pytest.fixture(scope="module")
def world(raw, key_file, dataset):
    return load_world(raw, key_file, dataset)


def _both(spark: SparkExecutor, definition: dict, metadata: dict, directory,
          withdrawn: Withdrawn | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    withdrawn = withdrawn or Withdrawn()
    query = CohortQuery.model_validate({"cohort": definition, "query": {
        "dataset": "emr-visits", "kind": "count", "epsilon": 1.0}})
    dataset = SimpleNamespace(directory=directory, metadata=metadata)
    polars = cohorts.patients(query, dataset, PURPOSE, withdrawn).collect().with_columns(
        pl.col(pl.Enum).cast(pl.String))
    rows = lowered.patients(query.cohort, metadata, directory, PURPOSE,
                            withdrawn.excluded(PURPOSE))
    built = pl.from_arrow(rows(spark.session()).toArrow())
    assert built[consent_column(PURPOSE)].all()
    built = built.drop(consent_column(PURPOSE))
    assert built.columns == polars.columns
    return (polars.sort(frame.PATIENT),
            built.select([pl.col(c).cast(t) for c, t in polars.schema.items()])
            .sort(frame.PATIENT))


def _equal(polars: pl.DataFrame, spark: pl.DataFrame) -> None:
    assert polars[frame.PATIENT].equals(spark[frame.PATIENT])
    for name in polars.columns:
        a, b = polars[name], spark[name]
        if a.dtype == pl.Float64:  # a mean's last bit may differ with the order of adding
            assert (a.is_null() == b.is_null()).all(), name
            assert (a.is_nan() == b.is_nan()).fill_null(True).all(), name
            close = ((a - b).abs() <= 1e-9 * (1 + a.abs())) | a.is_nan()
            assert close.fill_null(True).all(), name
        else:
            assert a.equals(b), name


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_cohorts_build_the_same_frame_on_spark_as_on_polars(spark, world, data):
    definition = data.draw(definitions(world))
    _equal(*_both(spark, definition, world["metadata"], world["dataset"]))


def test_a_typical_cohort_is_the_same_on_both_engines_with_withdrawals(spark, world):
    polars, built = _both(spark, TYPICAL, world["metadata"], world["dataset"])
    assert polars.height > 100 and polars["back_event"].n_unique() >= 2
    _equal(polars, built)
    # a withdrawal set larger than travels inline (a table anti-joined) and a small one
    for size in (5, 300):
        gone = frozenset(polars[frame.PATIENT].head(size).to_list())
        less = Withdrawn(1, {PURPOSE: gone})
        fewer, built = _both(spark, TYPICAL, world["metadata"], world["dataset"], less)
        assert fewer.height == polars.height - min(size, polars.height)
        _equal(fewer, built)


def test_dates_without_published_labels_read_as_the_same_periods(spark, world):
    """A date column whose catalogue lists no labels: Spark reads its distinct values and
    the same ``codes.period`` gives their periods."""
    metadata = copy.deepcopy(world["metadata"])
    for table in ("diagnoses", "labs", "visits", "prescriptions"):
        for field in metadata["tables"][table]["fields"]:
            if field.get("hierarchy") == "date":
                field.pop("categories", None)
    definition = {k: v for k, v in TYPICAL.items() if k != "variables"} | {
        "variables": {k: v for k, v in TYPICAL["variables"].items() if k != "quarter"}}
    polars, built = _both(spark, definition, metadata, world["dataset"])
    assert polars.height > 100
    _equal(polars, built)


def test_long_lists_of_values_and_edges_build_on_spark(spark, world):
    """An ``in`` of 60 values and bands of 90 edges — within the spec's limits, past the
    depth Spark Connect accepts for a chain of ORs or additions — build the same frame."""
    drugs = world["categories"][("prescriptions", "drug_name")]
    many = [drugs[i % len(drugs)] for i in range(60)]
    definition = {
        "dataset": "emr-visits",
        "index": {"table": "prescriptions",
                  "where": [{"field": "drug_name", "op": "in", "value": many}]},
        "variables": {
            "n": {"kind": "count", "events": {"table": "prescriptions"}},
            "band": {"kind": "bands", "of": "n", "edges": list(range(90))}},
        "where": [{"field": "band", "op": "in", "value": [f"[{i}, {i + 1})"
                                                           for i in range(60)]}],
    }
    polars, built = _both(spark, definition, world["metadata"], world["dataset"])
    assert polars.height > 100 and polars["band"].n_unique() > 5
    _equal(polars, built)


def test_dirty_values_build_the_same_frame_on_both_engines(spark, world, tmp_path):
    """Lab values that are NaN (Polars' max passes over them, Spark's would not) and a
    date "0000" in a column without published labels (no period on either engine — it
    once made the Spark build fail after the charge)."""
    source = world["dataset"]
    target = tmp_path / "emr-visits"
    shutil.copytree(source, target)
    labs = pl.read_parquet(source / "restricted" / "labs.parquet")
    dirty = labs.with_row_index().with_columns(
        pl.when(pl.col("index") % 7 == 0).then(float("nan")).otherwise(pl.col("value"))
        .alias("value"),
        pl.when(pl.col("index") % 101 == 0).then(pl.lit("0000"))
        .otherwise(pl.col("sampled_on")).alias("sampled_on")).drop("index")
    dirty.write_parquet(target / "restricted" / "labs.parquet")
    metadata = copy.deepcopy(world["metadata"])
    for field in metadata["tables"]["labs"]["fields"]:
        if field["name"] == "sampled_on":
            field.pop("categories", None)
    definition = {
        "dataset": "emr-visits", "index": {"table": "labs"},
        "variables": {
            "high": {"kind": "max", "field": "value", "events": {"table": "labs"}},
            "low": {"kind": "min", "field": "value", "events": {"table": "labs"}},
            "average": {"kind": "mean", "field": "value", "events": {"table": "labs"}},
            "band": {"kind": "bands", "of": "high", "edges": [0, 7, 50]},
            "later": {"kind": "count", "events": {"table": "labs",
                                                  "window": {"after_index": [0, 365]}}}},
    }
    polars, built = _both(spark, definition, metadata, target)
    assert polars["high"].is_nan().sum() < polars["average"].is_nan().sum()
    _equal(polars, built)
