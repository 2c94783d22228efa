"""The Polars engine holds a view only as wide as the questions asked of it: each column is
read into memory the first time a plan needs it, and columns read at different times line
up row for row with the files."""

from __future__ import annotations

import math

import polars as pl

from sandbox.queries.exact import KEPT_SETS, PolarsExecutor, scan
from sandbox.queries.plan import ExactPlan, Value
from sandbox.queries.spec import Filter


def _view(tmp_path) -> str:
    view = tmp_path / "view"
    for part in range(3):  # a view is partitioned Parquet, read in one sorted order
        (view / f"_part={part}").mkdir(parents=True)
        n = 1_000 * (part + 1)
        pl.DataFrame({
            "pseudonym": [f"p{part}-{i}" for i in range(n)],
            "age": [(i * 7 + part) % 90 for i in range(n)],
            "cost": [float(i % 113) * (part + 1) for i in range(n)],
            "ward": [["a", "b", "c"][(i + part) % 3] for i in range(n)],
        }).write_parquet(view / f"_part={part}" / "rows.parquet")
    return str(view)


def test_columns_are_read_when_first_asked_for_and_line_up(tmp_path):
    view = _view(tmp_path)
    executor = PolarsExecutor()
    assert executor.held(view) == []
    first = executor.frame(view, ["age"]).collect()
    assert executor.held(view) == ["age"]
    later = executor.frame(view, ["ward", "age", "pseudonym"]).collect()
    assert executor.held(view) == ["age", "pseudonym", "ward"]  # cost never asked for
    files = scan(view).select("ward", "age", "pseudonym").collect()
    assert later.with_columns(pl.col("ward", "pseudonym").cast(pl.String)).equals(files)
    assert first["age"].equals(later["age"])
    assert later.schema["ward"] == pl.Categorical  # text held as categories


def test_a_withdrawal_sets_mask_is_worked_out_once_and_kept_for_a_few_sets(tmp_path):
    view = _view(tmp_path)
    executor = PolarsExecutor()
    gone = frozenset({"p0-3", "p1-10", "p2-2999", "nobody"})
    mask = executor.kept(view, gone)
    files = scan(view).select("pseudonym").collect()["pseudonym"]
    assert mask.to_list() == [p not in gone for p in files.to_list()]
    assert mask.sum() == files.len() - 3
    assert executor.kept(view, frozenset(gone)) is mask  # the same set: the same mask
    for n in range(KEPT_SETS):  # later sets push the oldest out
        executor.kept(view, gone | {f"p0-{100 + n}"})
    assert executor.kept(view, gone) is not mask
    assert executor.kept(view, gone).equals(mask)


def test_integers_held_narrow_answer_exactly_as_the_files_do(tmp_path):
    """Integers are held in the narrowest type their values fit; every filter — with values
    far outside that type's range too — and every sum answer as a scan of the files does,
    and a column with nulls and NaN is still filled before it is clamped."""
    view = tmp_path / "view"
    view.mkdir()
    n = 2_000
    pl.DataFrame({
        "_consent_x": [i % 5 != 0 for i in range(n)],
        "stay": pl.Series([None if i % 97 == 0 else i % 120 for i in range(n)], dtype=pl.Int64),
        "cost": [None if i % 31 == 0 else (math.nan if i % 37 == 0 else i * 0.1)
                 for i in range(n)],
        "fee": [i * 0.3 for i in range(n)],  # no null, no NaN: not filled
    }).write_parquet(view / "rows.parquet")
    held, files = PolarsExecutor(), PolarsExecutor(in_memory=False)
    schema = held.frame(str(view), ["stay", "cost"]).collect().schema
    assert (schema["stay"], schema["cost"]) == (pl.Int8, pl.Float64)  # floats never narrowed
    wheres = [("ge", 70_000), ("le", 70_000), ("ne", 65_636), ("eq", 100.0), ("lt", 2.5),
              ("between", [-(2**63), 2**63 - 1]), ("in", [3, 259, 70_003])]
    for op, value in wheres:
        for column, low, high in (("cost", 0.0, 150.0), ("stay", 1.0, 60.0),
                                  ("fee", 10.0, 500.0), ("fee", -0.7, 33.3)):
            plan = ExactPlan("_consent_x", (Filter(field="stay", op=op, value=value),),
                             value=Value(column, low, high), bits=8)
            assert held.aggregate(plan, str(view)).equals(files.aggregate(plan, str(view))), \
                (op, value, column)
    assert held._known_clean(str(view)) == {"_consent_x", "fee"}
