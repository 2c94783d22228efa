"""Benchmark: end-to-end latency of the gateway beside plain Polars.

For each size (patients → about 11 visits each, at most 20 per patient served), onboards
a demo dataset, starts ``sandboxctl gateway serve`` as its own process, and times count,
mean and grouped-count queries through the researcher client — HTTP, token check, ledger
charge, OpenDP release, receipt signing — with a distinct filter value each time (so no
stored answer is reused; the noise scale of each shape is calibrated once, first). In the
same run, plain Polars computes the same aggregates over the same prepared view file.
Goals: p50 ≤ 100 ms at 1M rows; p50 ≤ 3× plain Polars at 10M rows.

    .venv/bin/python bench/gateway.py [--patients 100000,1000000] [--runs 40] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.client import Gateway  # noqa: E402
from sandbox.data.generate import generate  # noqa: E402
from sandbox.data.onboard import onboard  # noqa: E402
from sandbox.data.pseudonym import create_key  # noqa: E402
from tests.services import GatewayProcess  # noqa: E402

SPEC = ROOT / "sandbox" / "data" / "specs" / "emr-visits.toml"
KINDS = ("count", "mean", "grouped count")


def dataset(work: Path, patients: int) -> Path:
    out = work / f"datasets-{patients}" / "emr-visits"
    if not (out / "metadata.json").exists():
        raw = work / f"raw-{patients}"
        if not (raw / "manifest.json").exists():
            generate(patients, 20251231, raw, replace=True)
        key = work / "bench.key"
        if not key.exists():
            create_key(key)
        onboard(raw, SPEC, key, out, replace=True)
        shutil.rmtree(raw)
    return out.parent


def ask(gw: Gateway, kind: str, i: int) -> None:
    where = [{"field": "length_of_stay", "op": "ge", "value": i % 30}]
    if kind == "count":
        gw.count("emr-visits", where=where, epsilon=0.01)
    elif kind == "mean":
        gw.mean("emr-visits", "total_cost", bounds=(0, 100_000), where=where, epsilon=0.01)
    else:
        gw.count("emr-visits", group_by=["visit_type"], where=where, epsilon=0.01)


def plain(view: Path, kind: str, i: int) -> None:
    frame = pl.scan_ipc(view, memory_map=True).filter(
        pl.col("_consent_medical_research") & (pl.col("length_of_stay") >= i % 30))
    if kind == "count":
        frame.select(pl.len()).collect()
    elif kind == "mean":
        frame.select(pl.col("total_cost").fill_null(0).clip(0, 100_000).mean()).collect()
    else:
        frame.group_by("visit_type").agg(pl.len()).collect()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="100000,1000000")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'rows':>11} {'query':<14} {'p50 ms':>8} {'p95 ms':>8} {'polars p50':>11} "
          f"{'ratio':>6}")
    for patients in (int(p) for p in args.patients.split(",")):
        served = dataset(work, patients)
        state = work / f"state-{patients}"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        process = GatewayProcess(served, state / "gw", f"sqlite:///{state / 'gw.db'}",
                                 options=["--max-epsilon", "100"]).start()
        try:
            grant = process.grant(epsilon=100.0)
            view = next((state / "gw" / "views").glob("*.arrow"))
            rows = pl.scan_ipc(view).select(pl.len()).collect().item()
            with Gateway(process.url, grant["token"]) as gw:
                for kind in KINDS:
                    ask(gw, kind, 10_000)  # calibrate this shape once
                    plain(view, kind, 0)
                    http, base = [], []
                    for i in range(args.runs):
                        start = time.perf_counter()
                        ask(gw, kind, i)
                        http.append((time.perf_counter() - start) * 1000)
                        start = time.perf_counter()
                        plain(view, kind, i)
                        base.append((time.perf_counter() - start) * 1000)
                    p50, p95, b50 = pct(http, 50), pct(http, 95), pct(base, 50)
                    print(f"{rows:>11,} {kind:<14} {p50:>8.1f} {p95:>8.1f} {b50:>11.1f} "
                          f"{p50 / b50:>5.1f}x", flush=True)
        finally:
            process.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
