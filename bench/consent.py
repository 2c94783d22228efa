"""Benchmark: consent withdrawals at query time.

Serves an onboarded dataset with ``sandboxctl gateway serve`` (its own process, SQLite)
and measures, through HTTP as a controller and a researcher meet them:

- a single withdrawal: the POST's latency, and the time from sending it to the first
  answer that excludes the patient (the POST plus the next query), p50 over ``--runs``;
- a bulk intake of 10,000 withdrawals in one call (``/v1/admin/consent-withdrawals/batch``);
- the query latency before and after those 10,000 (the per-query anti-join's cost), beside
  the same count in plain Polars on the view already in memory (the floor).

Goal: a withdrawal effective in ≤ 50 ms at any size (no view is rebuilt; the view file's
modification time is checked unchanged).

    .venv/bin/python bench/consent.py [--datasets var/datasets] [--runs 30]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.client import Gateway  # noqa: E402
from tests.services import GatewayProcess  # noqa: E402

PURPOSE = "medical_research"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def queries(gw: Gateway, runs: int, start: int) -> list[float]:
    out = []
    for i in range(runs):
        where = [{"field": "length_of_stay", "op": "ge", "value": (start + i) % 30}]
        began = time.perf_counter()
        gw.count("emr-visits", where=where, epsilon=0.01)
        out.append((time.perf_counter() - began) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT / "var" / "datasets")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    restricted = args.datasets / "emr-visits" / "restricted"
    patients = pl.read_parquet(restricted / "consent.parquet", columns=["pseudonym", PURPOSE]
                               ).filter(pl.col(PURPOSE))["pseudonym"].to_list()
    with tempfile.TemporaryDirectory() as work:
        state = Path(work) / "state"
        gateway = GatewayProcess(args.datasets, state, f"sqlite:///{work}/gw.db").start()
        try:
            grant = gateway.grant(epsilon=10.0, delta=0.0)
            gw = Gateway(gateway.url, grant["token"])
            queries(gw, 3, 0)  # the shape's scale, and the view read once
            views = {p: p.stat().st_mtime_ns for p in (state / "views").rglob("*.parquet")}
            view_dir = next((state / "views").rglob("view.json")).parent
            view = pl.read_parquet(f"{view_dir}/**/*.parquet", hive_partitioning=False)
            rows = view.height
            floor = []
            for i in range(args.runs):
                began = time.perf_counter()
                counted = view.filter(pl.col(f"_consent_{PURPOSE}")
                                      & (pl.col("length_of_stay") >= i % 30)).height
                floor.append((time.perf_counter() - began) * 1000)
                assert counted >= 0
            before = queries(gw, args.runs, 100)
            posts, effective = [], []
            for i in range(args.runs):
                began = time.perf_counter()
                answer = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                                       {"pseudonym": patients[i], "purposes": [PURPOSE]})
                posts.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 201, answer.text
                queries(gw, 1, 1000 + i)
                effective.append((time.perf_counter() - began) * 1000)
            batch = [{"pseudonym": p, "purposes": [PURPOSE]}
                     for p in patients[args.runs:args.runs + 5000]]
            batch += [{"pseudonym": secrets.token_hex(32)} for _ in range(10_000 - len(batch))]
            began = time.perf_counter()
            answer = gateway.admin("POST", "/v1/admin/consent-withdrawals/batch",
                                   {"withdrawals": batch})
            bulk = time.perf_counter() - began
            assert answer.status_code == 201, answer.text
            after = queries(gw, args.runs, 2000)
            rebuilt = {p: p.stat().st_mtime_ns for p in (state / "views").rglob("*.parquet")}
        finally:
            gateway.stop()
    print(f"view rows {rows:,}; runs {args.runs}")
    print(f"single withdrawal POST p50 {p50(posts):.1f} ms; effective (POST + next "
          f"answer) p50 {p50(effective):.1f} ms")
    print(f"10,000 withdrawals in one call: {bulk:.2f} s")
    print(f"count p50 before {p50(before):.1f} ms, after 10,000 withdrawals "
          f"{p50(after):.1f} ms ({p50(after) / p50(before):.2f}×); plain Polars floor "
          f"{p50(floor):.1f} ms")
    print(f"views rebuilt: {'none' if rebuilt == views else 'YES'}")


if __name__ == "__main__":
    main()
