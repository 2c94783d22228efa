"""Generalisation keeps utility: no quasi-identifier is left coarser than the minimum count
needs within ``max_suppression``. Checked against an independent Polars count of the
records in small classes — the labels of every row at the final levels, and at each
column's next finer level — on random small extracts, bucketed as onboarding buckets them.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from unittest.mock import patch

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.data import anonymize, codes
from sandbox.data.anonymize import Column, generalise
from sandbox.data.hierarchy import TOP
from sandbox.data.spec import BandsHierarchy, DateHierarchy, GroupingHierarchy
from sandbox.data.spill import Workspace

HIERARCHIES = {
    "age": BandsHierarchy(kind="bands", widths=[10, 20]),
    "admitted": DateHierarchy(kind="date", levels=["month", "quarter", "year"]),
    "status": GroupingHierarchy(kind="grouping", groups=[{"any": ["pre", "peri", "post"]}]),
    "dx": GroupingHierarchy(kind="grouping", groups=[
        {"A": [f"a{i}" for i in range(6)], "B": [f"b{i}" for i in range(6)]}]),
}


def _generalised(root: Path, frame: pl.DataFrame, names: list[str], k: int,
                 budget: float, buckets: int, sensitive: str | None = None,
                 hierarchies: dict | None = None) -> tuple[list[Column], int]:
    """The quasi-identifiers as generalised, and the records suppressed."""
    hierarchies = HIERARCHIES | (hierarchies or {})
    work = Workspace(root, buckets, 10**6)
    published = work.spill("published")
    published.add(frame, (pl.col("_id").hash(7) % buckets).cast(pl.UInt32))
    published.close()
    every = [*names, *([sensitive] if sensitive else [])]
    distinct = {n: frame[n].drop_nulls().unique().sort() for n in every}
    rows = codes.encode(published, distinct, work)
    columns = [Column.build(n, hierarchies[n], distinct[n], frame[n].null_count() > 0)
               for n in every]
    quasi, sens = columns[:len(names)], (columns[-1] if sensitive else None)
    outcome = generalise(rows, quasi, sens, k, budget, work)
    return quasi, outcome.suppressed_records


def _labels(frame: pl.DataFrame, column: Column, level: np.ndarray) -> pl.Series:
    """Every row's label with the column's values at ``level``, null → "*"."""
    shown = column.labels[level, np.arange(column.labels.shape[1])][:-1]
    return frame[column.name].replace_strict(column.values, shown.tolist(), default=TOP,
                                             return_dtype=pl.String)


def _in_small(frame: pl.DataFrame, labels: dict[str, pl.Series], k: int) -> int:
    """Records in combinations of labels covering fewer than k patients."""
    shown = pl.DataFrame({"_id": frame["_id"], **labels})
    sizes = shown.group_by(list(labels)).agg(pl.col("_id").n_unique().alias("n"),
                                             pl.len().alias("r"))
    return int(sizes.filter(pl.col("n") < k)["r"].sum())


@st.composite
def extracts(draw) -> tuple[pl.DataFrame, list[str], int, float, int]:
    patients = draw(st.integers(8, 160))
    # a few common ages and a long tail of rare ones, as real extracts have
    common = draw(st.lists(st.integers(20, 90), min_size=1, max_size=4))
    ages = [draw(st.sampled_from(common) | st.integers(0, 119) | st.none())
            for _ in range(patients)]
    statuses = [draw(st.sampled_from(["pre", "peri", "post"])) for _ in range(patients)]
    start = date(2024, 1, 1)
    rows = []
    for p in range(patients):
        for _ in range(draw(st.integers(1, 3))):
            day = draw(st.integers(0, 700))
            dx = draw(st.sampled_from(["a0", "a1", "b0"]) | st.sampled_from(
                [f"{g}{i}" for g in "ab" for i in range(6)]))
            rows.append((p, ages[p], statuses[p], start + timedelta(days=day), dx))
    frame = pl.DataFrame(rows, schema={"_id": pl.Int64, "age": pl.Int64,
                                       "status": pl.String, "admitted": pl.Date,
                                       "dx": pl.String}, orient="row")
    names = draw(st.sampled_from([["age"], ["age", "status"], ["admitted", "status"],
                                  ["age", "admitted", "status"]]))
    k = draw(st.integers(2, 6))
    budget = draw(st.sampled_from([0.0, 0.02, 0.05, 0.2]))
    buckets = draw(st.integers(1, 4))
    return frame, names, k, budget, buckets


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=extracts())
def test_no_quasi_identifier_is_coarser_than_the_budget_needs(tmp_path_factory, case):
    frame, names, k, budget, buckets = case
    if frame["_id"].n_unique() < k:
        return  # refused before generalising (tested in test_onboard_refusals)
    quasi, _ = _generalised(tmp_path_factory.mktemp("g"), frame, names, k, budget, buckets)
    final = {c.name: _labels(frame, c, c.level) for c in quasi}
    small = _in_small(frame, final, k)
    every_top = all((c.level[:-1] == c.top).all() for c in quasi)
    assert small <= budget * frame.height + 1e-9 or every_top
    for column in quasi:
        finer = column.lowered()
        if finer is None:
            continue
        # one level finer for this column, the others as they are: over the budget
        assert _in_small(frame, {**final, column.name: _labels(frame, column, finer)},
                         k) > budget * frame.height, (column.name, column.describe(
                             np.ones(len(column.values) + 1, dtype=np.int64)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=extracts())
def test_lowering_never_takes_suppression_past_the_budget(tmp_path_factory, case):
    """With a sensitive attribute too (its rare values suppressed after the quasi-
    identifiers' small classes): lowering a column is kept only if the whole suppression
    stays within the budget — or within what it was without lowering."""
    frame, names, k, budget, buckets = case
    if frame["_id"].n_unique() < k:
        return
    _, suppressed = _generalised(tmp_path_factory.mktemp("s"), frame, names, k, budget,
                                 buckets, sensitive="dx")
    with patch.object(anonymize, "lower", lambda *args: None):
        _, unlowered = _generalised(tmp_path_factory.mktemp("u"), frame, names, k, budget,
                                    buckets, sensitive="dx")
    assert suppressed <= max(budget * frame.height, unlowered)


def test_a_rare_diagnosis_suppressed_after_lowering_counts_against_the_budget(tmp_path):
    """An extract a fuzzer found (113 records, k = 4, 20 % budget) where lowering age by
    its small classes alone left 26.5 % suppressed once rare diagnoses went too; judged by
    the whole suppression, lowering stops where it stays within the budget."""
    frame = pl.read_parquet(Path(__file__).parent / "cases" / "lowering-over-budget.parquet")
    dx = GroupingHierarchy(kind="grouping", groups=[
        {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"]}])
    _, suppressed = _generalised(tmp_path, frame, ["age"], 4, 0.2, 2, sensitive="dx",
                                 hierarchies={"age": BandsHierarchy(kind="bands",
                                                                    widths=[5, 10, 20]),
                                              "dx": dx})
    assert suppressed <= 0.2 * frame.height


def test_one_rare_age_range_does_not_take_the_whole_column_along(tmp_path):
    """The extract that once lost its age column: ~700 patients, age in bands of 10 and 20
    years, three patients in a range no one else is near. They are suppressed (0.4 % of
    the records, within 5 %) and every other age keeps its 10-year band."""
    rng = np.random.default_rng(5)
    ages = [*rng.integers(25, 85, 697).tolist(), 101, 103, 104]
    frame = pl.DataFrame({"_id": range(700), "age": ages,
                          "status": rng.choice(["pre", "post"], 700).tolist()})
    (age,), _ = _generalised(tmp_path, frame, ["age"], 5, 0.05, 3)
    assert {str(label) for label in age.current()[:-1]} == {
        *(f"{lo}-{lo + 9}" for lo in range(20, 90, 10)), "100-109"}
    records = np.bincount(np.searchsorted(age.values, ages), minlength=len(age.values) + 1)
    described = age.describe(records)
    assert described["levels_used"] == ["10-wide bands"]
    assert described["precision_lost"] == 0.0
    kept = _labels(frame, age, age.level)
    assert _in_small(frame, {"age": kept}, 5) == 3  # the three, suppressed


@pytest.mark.parametrize("budget", [0.0, 0.05])
def test_the_budget_decides_between_suppressing_and_lifting(tmp_path, budget):
    """Five patients in two rare 10-year ranges, 4.8 % of the records: within a 5 % budget
    they keep their 10-year bands (and are suppressed); with none, both ranges are lifted
    to the 20-year band that covers five patients — and no further."""
    ages = [30] * 100 + [41, 42, 57, 58, 59]
    frame = pl.DataFrame({"_id": range(len(ages)), "age": ages})
    (age,), _ = _generalised(tmp_path, frame, ["age"], 5, budget, 2)
    shown = dict(zip(age.values, age.current()[:-1].tolist(), strict=True))
    assert shown[30] == "30-39"
    if budget:
        assert shown[41] == "40-49" and shown[57] == "50-59"
    else:
        assert shown[41] == shown[57] == "40-59"
