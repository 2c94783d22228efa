"""The Polars engine holds a view only as wide as the questions asked of it: each column is
read into memory the first time a plan needs it, and columns read at different times line
up row for row with the files."""

from __future__ import annotations

import polars as pl

from sandbox.queries.exact import KEPT_SETS, PolarsExecutor, scan


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
