"""The bounded view is built in buckets of patients, so that its memory does not grow with
the dataset; built in many buckets it is row for row the view built in one."""

from __future__ import annotations

import polars as pl

from sandbox.queries import bounded
from sandbox.queries.view import RANK_KEY, prepare


def _rows(view) -> pl.DataFrame:
    return pl.read_parquet(f"{view}/**/*.parquet", hive_partitioning=False).sort(bounded.RANK)


def test_a_view_built_in_buckets_is_the_view_built_at_once(dataset, tmp_path, monkeypatch):
    for name in ("once", "buckets"):
        (tmp_path / name).mkdir()
        (tmp_path / name / RANK_KEY).write_bytes(b"r" * 32)
    once = prepare(dataset, tmp_path / "once")
    total = pl.scan_parquet(dataset / "restricted" / "records.parquet").select(
        pl.len()).collect().item()
    monkeypatch.setattr(bounded, "BUCKET_ROWS", total // 7)  # eight buckets
    in_buckets = prepare(dataset, tmp_path / "buckets")
    files = sorted(p.name for p in in_buckets.view.rglob("*.parquet"))
    assert {f"part-{b}.parquet" for b in range(8)} <= set(files)
    assert _rows(once.view).equals(_rows(in_buckets.view))
    assert once.built["rows"] == in_buckets.built["rows"] == _rows(once.view).height
    # each patient keeps at most the bound, and bounding did bite
    counts = _rows(in_buckets.view).group_by("pseudonym").len()["len"]
    assert counts.max() == once.contribution_bound
