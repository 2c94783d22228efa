"""Benchmark: what the audit witness costs a release on the gateway.

Two gateways over the same demo dataset (SQLite ledger, each served over HTTP on its own
port in this process), one keeping its witness file as deployed, one with its witness
follower switched off (possible only in code, as here); count queries with a new filter
value each time through the researcher client, alternating between the two in blocks
(and which goes first); the time the follower spends per release is measured as well.
Also: how long after a release returns its audit entries are fsynced in the witness
(the follower writes after the commit, in the background), and what one append + fsync
costs on this disk.

    .venv/bin/python bench/audit_witness.py [--patients 20000] [--runs 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench.gateway import dataset, pct  # noqa: E402
from sandbox import witnessing  # noqa: E402
from sandbox.audit import audit_log  # noqa: E402
from sandbox.client import Gateway  # noqa: E402
from sandbox.gateway.service import GatewayService  # noqa: E402
from sandbox.gateway.settings import GatewaySettings  # noqa: E402
from sandbox.witness import WitnessFile  # noqa: E402
from tests.federated.cluster import ServedApp  # noqa: E402

BLOCK = 10


def served(work: Path, datasets: Path, name: str, follow: bool) -> ServedApp:
    state = work / name
    shutil.rmtree(state, ignore_errors=True)
    service = GatewayService(GatewaySettings(
        database_url=f"sqlite:///{state / 'gw.db'}", datasets_dir=datasets,
        state_dir=state / "state", rate_limit=0))
    if not follow:
        witnessing.unfollow(service.anchors.witness)
    return ServedApp(service)


def client(app: ServedApp) -> Gateway:
    response = app.admin("POST", "/v1/admin/grants", {
        "project": "bench", "datasets": ["emr-visits"], "fields": ["length_of_stay"],
        "purpose": "medical_research", "epsilon": 100.0, "expires_at": "2030-01-01T00:00:00Z"})
    response.raise_for_status()
    return Gateway(app.url, response.json()["token"])


def release(gw: Gateway, i: int) -> None:
    gw.count("emr-visits", where=[{"field": "length_of_stay", "op": "ge", "value": i}],
             epsilon=0.01)


def head(app: ServedApp) -> int:
    with app.service.db.connect() as conn:
        return conn.execute(select(func.max(audit_log.c.seq))).scalar()


def witnessed(path: Path) -> int:
    """The last sequence number in the live witness file (its last line)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
        lines = handle.read().splitlines()
    try:
        return json.loads(lines[-1]).get("seq") or json.loads(lines[-1])["last_seq"]
    except (IndexError, ValueError, KeyError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-witness-"))
    work.mkdir(parents=True, exist_ok=True)
    datasets = dataset(work, args.patients)
    on, off = served(work, datasets, "witness", True), served(work, datasets, "off", False)
    try:
        clients = {"witness kept": (on, client(on)), "witness off": (off, client(off))}
        timings: dict[str, list[float]] = {name: [] for name in clients}
        for _app, gw in clients.values():
            release(gw, 100_000)  # calibrate the shape once
        spent = [0.0, 0]  # the follower's time in WitnessFile.sync, and its syncs
        original = WitnessFile.sync

        def timed(witness_file: WitnessFile, engine: object) -> int:
            start = time.perf_counter()
            try:
                return original(witness_file, engine)
            finally:
                spent[0] += time.perf_counter() - start
                spent[1] += 1

        WitnessFile.sync = timed
        for block in range(0, args.runs, BLOCK):
            order = list(clients.items())
            for name, (_app, gw) in order if block // BLOCK % 2 else reversed(order):
                for i in range(block, min(block + BLOCK, args.runs)):
                    start = time.perf_counter()
                    release(gw, i)
                    timings[name].append((time.perf_counter() - start) * 1000)
        WitnessFile.sync = original
        print(f"{'gateway':<14} {'releases':>8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
        for name, values in timings.items():
            print(f"{name:<14} {len(values):>8} {pct(values, 50):>8.2f} "
                  f"{pct(values, 95):>8.2f} {statistics.mean(values):>8.2f}")
        kept = timings["witness kept"]
        print(f"difference of p50: {pct(kept, 50) - pct(timings['witness off'], 50):+.2f} ms")
        print(f"the follower, in the background: {spent[1] / args.runs:.2f} syncs and "
              f"{spent[0] * 1000 / args.runs:.2f} ms per release")

        # How long after a release returns are its entries fsynced in the witness?
        path = on.service.anchors.witness.path
        lags = []
        for i in range(args.runs, args.runs + 50):
            release(clients["witness kept"][1], i)
            done, last = time.perf_counter(), head(on)
            while witnessed(path) < last:
                time.sleep(0.0002)
            lags.append((time.perf_counter() - done) * 1000)
        print(f"witness lag after a release returns: p50 {pct(lags, 50):.1f} ms, "
              f"p95 {pct(lags, 95):.1f} ms")

        probe = work / "fsync-probe"
        costs = []
        with open(probe, "ab") as handle:
            for _ in range(200):
                start = time.perf_counter()
                handle.write(b'{"at":"2025-01-01T00:00:00.000000+00:00","hash":"' +
                             b"0" * 64 + b'","seq":1}\n')
                handle.flush()
                os.fsync(handle.fileno())
                costs.append((time.perf_counter() - start) * 1000)
        print(f"one witness line appended and fsynced on this disk: p50 "
              f"{pct(costs, 50):.2f} ms, p95 {pct(costs, 95):.2f} ms")
    finally:
        on.close()
        off.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
