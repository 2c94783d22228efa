"""Benchmark: end-to-end latency of the gateway, on each engine, beside plain Polars.

For each size (patients → about 11 visits each, at most 20 per patient served), onboards
a demo dataset — ``--repeat N`` then serves N copies of the generator's output, each under
new pseudonyms (SHA-256 of the copy number and the pseudonym), so 1M patients × 9 make
≈ 100M rows without a bigger generator run — and, for each engine (``--engines
polars,spark``; spark against a local[2] Spark Connect server started by
infra/scripts/spark-connect.sh), starts ``sandboxctl gateway serve`` as its own process
(timing the bounded view's build), then times count, mean and grouped-count queries
through the researcher client — HTTP, token check, ledger charge, exact plan on the
engine, OpenDP noise, receipt signing — with a distinct filter value each time (so no
stored answer is reused). The first query of each shape (the noise scale derived) is
reported apart, and then the p50 over ``--shapes`` new shapes (each a new ε, so each is
calibrated afresh). The floor is plain Polars computing the same aggregate over the same
bounded view already in memory; ratios are gateway p50 / floor p50. Last, for each size, a
withdrawal's latency: the POST (once it returns, every question that starts excludes the
patient) and the POST with the next answer.

    .venv/bin/python bench/gateway.py [--patients 100000,1000000] [--repeat 1]
        [--engines polars,spark] [--runs 40] [--rounds 3] [--shapes 20] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from tests.spark import SparkConnect  # noqa: E402

SPEC = ROOT / "sandbox" / "data" / "specs" / "emr-visits.toml"
KINDS = ("count", "mean", "grouped count")
FLOOR_COLUMNS = ("_consent_medical_research", "length_of_stay", "total_cost", "visit_type")


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


def filters(i: int, r: int = 0) -> list[dict]:
    """Filter values of the ``i``-th question of round ``r``: distinct for every (i, r) (a
    repeated question would be answered from its stored release); a later round's differ
    by a 1/1024 of a yuan, so each round reads as many rows."""
    return [{"field": "length_of_stay", "op": "ge", "value": i % 30},
            {"field": "total_cost", "op": "ge", "value": i // 30 + r / 1024}]


def ask(gw: Gateway, kind: str, i: int, epsilon: float = 0.01, r: int = 0) -> None:
    where = filters(i, r)
    if kind == "count":
        gw.count("emr-visits", where=where, epsilon=epsilon)
    elif kind == "mean":
        gw.mean("emr-visits", "total_cost", bounds=(0, 100_000), where=where,
                epsilon=epsilon)
    else:
        gw.count("emr-visits", group_by=["visit_type"], where=where, epsilon=epsilon)


def new_shapes(gw: Gateway, kind: str, shapes: int) -> list[float]:
    """Latency of the first query of ``shapes`` shapes never asked before (ms)."""
    out = []
    for s in range(shapes):
        start = time.perf_counter()
        ask(gw, kind, s, epsilon=0.02 + s / 1000)
        out.append((time.perf_counter() - start) * 1000)
    return out


def withdrawals(process: GatewayProcess, gw: Gateway, patients: list[str], runs: int
                ) -> tuple[list[float], list[float]]:
    """(POST, POST + next answer) latencies of single withdrawals (ms)."""
    posts, effective = [], []
    for i, patient in enumerate(patients[:runs]):
        start = time.perf_counter()
        answer = process.admin("POST", "/v1/admin/consent-withdrawals",
                               {"pseudonym": patient, "purposes": ["medical_research"]})
        posts.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 201, answer.text
        ask(gw, "count", 5_000 + i)
        effective.append((time.perf_counter() - start) * 1000)
    return posts, effective


def repeat(served: Path, copies: int) -> Path:
    """``served``'s dataset as ``copies`` copies, each under new pseudonyms."""
    if copies == 1:
        return served
    out = served.parent / f"{served.name}-x{copies}"
    target = out / "emr-visits"
    if (target / "metadata.json").exists():
        return out
    source = served / "emr-visits"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.parquet"))
    meta = json.loads((source / "metadata.json").read_text(encoding="utf-8"))
    patients = pl.read_parquet(source / "restricted" / "consent.parquet",
                               columns=["pseudonym"])["pseudonym"].unique().to_list()
    for table in ("records", "consent"):
        rows = pl.scan_parquet(source / "restricted" / f"{table}.parquet")
        parts = []
        for c in range(copies):  # each copy a file of its own, streamed: memory stays flat
            parts.append(target / "restricted" / f".{table}-{c}.parquet")
            rows.with_columns(pl.col("pseudonym").replace_strict(
                patients, [hashlib.sha256(f"{c}:{p}".encode()).hexdigest() for p in patients]
            )).sink_parquet(parts[-1])
        pl.concat([pl.scan_parquet(p) for p in parts]).sink_parquet(
            target / "restricted" / f"{table}.parquet")
        for part in parts:
            part.unlink()
        meta["files"][f"restricted/{table}.parquet"] = f"x{copies}"
    distinct = pl.scan_parquet(target / "restricted" / "consent.parquet").select(
        pl.col("pseudonym").n_unique()).collect().item()
    assert distinct == copies * len(patients), "every copy under pseudonyms of its own"
    meta["sample_size"] = {k: v * copies for k, v in meta["sample_size"].items()}
    (target / "metadata.json").write_text(json.dumps(meta, ensure_ascii=False),
                                          encoding="utf-8")
    return out


def plain(frame: pl.DataFrame, kind: str, i: int, r: int = 0) -> None:
    """The floor: the same aggregate over the bounded view already in memory."""
    stay, cost = (f["value"] for f in filters(i, r))
    rows = frame.lazy().filter(pl.col("_consent_medical_research")
                               & (pl.col("length_of_stay") >= stay)
                               & (pl.col("total_cost") >= cost))
    if kind == "count":
        rows.select(pl.len()).collect()
    elif kind == "mean":
        rows.select(pl.col("total_cost").fill_null(0).clip(0, 100_000).mean()).collect()
    else:
        rows.group_by("visit_type").agg(pl.len()).collect()


def resident(process: GatewayProcess) -> str:
    """The gateway process's resident memory now and at its peak (Linux)."""
    assert process.proc is not None
    status = Path(f"/proc/{process.proc.pid}/status").read_text().splitlines()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status
           if line.startswith(("VmRSS", "VmHWM"))}
    return f"{kib['VmRSS'] / 1024:,.0f} MiB (peak {kib['VmHWM'] / 1024:,.0f} MiB)"


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def run(served: Path, state: Path, views: Path, engine: str, spark: SparkConnect | None,
        runs: int, shapes: int, rounds: int) -> None:
    """One engine over ``served``; its bounded view is built in ``views`` (kept between runs
    in a --workdir: a view is named by its dataset version and never changes)."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    built = not any(p.is_dir() and (p / "view.json").is_file()
                    for p in (views.iterdir() if views.is_dir() else []))
    options = ["--max-epsilon", "100", "--engine", engine, "--views-dir", str(views)]
    if spark is not None:
        options += ["--spark-remote", spark.remote]
    started = time.perf_counter()
    # (start returns once the view is built and the gateway answers its health check)
    process = GatewayProcess(served, state / "gw", f"sqlite:///{state / 'gw.db'}",
                             options=options, start_timeout=3600).start()
    build = time.perf_counter() - started
    try:
        grant = process.grant(epsilon=100.0)
        view = next(p for p in views.iterdir() if p.is_dir() and (p / "view.json").is_file())
        # the floor's frame: the columns its aggregates read (all rows, in memory)
        frame = pl.read_parquet(f"{view}/**/*.parquet", hive_partitioning=False,
                                columns=list(FLOOR_COLUMNS))
        how = "built" if built else "kept from an earlier run"
        print(f"{frame.height:>12,} {engine:<6} view {how} and served in {build:.1f} s",
              flush=True)
        with Gateway(process.url, grant["token"]) as gw:
            for kind in KINDS:
                start = time.perf_counter()
                ask(gw, kind, 10_000)  # the first query of this shape
                first = (time.perf_counter() - start) * 1000
                plain(frame, kind, 0)
                # each series on its own (interleaved query by query, each side would be
                # timed while the other's worker threads were still winding down on the same
                # two cores), the two series taken in turn ``rounds`` times, so that a slow
                # spell of the machine falls on both
                http, base = [], []
                for r in range(rounds):
                    for i in range(runs):
                        start = time.perf_counter()
                        ask(gw, kind, i, r=r)
                        http.append((time.perf_counter() - start) * 1000)
                    for i in range(runs):
                        start = time.perf_counter()
                        plain(frame, kind, i, r)
                        base.append((time.perf_counter() - start) * 1000)
                p50, p95, b50 = pct(http, 50), pct(http, 95), pct(base, 50)
                print(f"{frame.height:>12,} {engine:<6} {kind:<14} {first:>9.0f} {p50:>8.1f} "
                      f"{p95:>8.1f} {b50:>9.1f} {p50 / b50:>6.1f}x", flush=True)
            for kind in KINDS:
                fresh = new_shapes(gw, kind, shapes)
                print(f"{frame.height:>12,} {engine:<6} {kind:<14} first query of a new "
                      f"shape: p50 {pct(fresh, 50):.1f} ms, p95 {pct(fresh, 95):.1f} ms "
                      f"({shapes} shapes)", flush=True)
            one = next(view.rglob("*.parquet"))  # patients of one partition suffice
            patients = pl.read_parquet(one, columns=["pseudonym", FLOOR_COLUMNS[0]]).filter(
                pl.col(FLOOR_COLUMNS[0]))["pseudonym"].unique(maintain_order=True).to_list()
            posts, effective = withdrawals(process, gw, patients, runs)
            print(f"{frame.height:>12,} {engine:<6} withdrawal: POST p50 {pct(posts, 50):.1f} "
                  f"ms (effective for every question that starts after it), POST + next "
                  f"answer p50 {pct(effective, 50):.1f} ms", flush=True)
            later = []
            for i in range(runs):  # questions under the same withdrawal set
                start = time.perf_counter()
                ask(gw, "count", 8_000 + i)
                later.append((time.perf_counter() - start) * 1000)
            print(f"{frame.height:>12,} {engine:<6} count after those {len(posts)} "
                  f"withdrawals, no new one: p50 {pct(later, 50):.1f} ms; the gateway "
                  f"process holds {resident(process)}", flush=True)
        del frame
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=1,
                        help="serve this many copies of the generator's output")
    parser.add_argument("--engines", default="polars")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3,
                        help="series of --runs queries timed, gateway and floor in turn")
    parser.add_argument("--shapes", type=int, default=20,
                        help="new shapes timed for the first-query latency")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    work.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    spark = SparkConnect.start(work / "spark") if "spark" in engines else None
    print(f"{'rows':>12} {'engine':<6} {'query':<14} {'first ms':>9} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'floor p50':>9} {'ratio':>7}")
    try:
        for patients in (int(p) for p in args.patients.split(",")):
            served = repeat(dataset(work, patients), args.repeat)
            for engine in engines:
                run(served, work / f"state-{served.name}-{engine}",
                    work / f"views-{served.name}-{engine}", engine,
                    spark if engine == "spark" else None, args.runs, args.shapes,
                    args.rounds)
    finally:
        if spark is not None:
            spark.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
