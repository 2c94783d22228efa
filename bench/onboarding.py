"""Benchmark: generate + onboard at 1M and 3M patients; onboarding's peak memory should not
grow with the extract.

Each step runs in its own process so its peak memory (``ru_maxrss`` of that child) is its
own: the generator's memory never counts against onboarding. Beside onboarding, the same run
measures a plain-Polars baseline — read the raw tables, join them as the spec does with the
streaming engine, write Parquet — up to ``--baseline-max`` patients (default 100,000: its
joins hold the right-hand tables in memory, ≈ 13 GiB at 1M patients). Prints time,
rows/s, peak memory, the ratio to the baseline, and between consecutive sizes the ratio of
time and of peak memory (memory: 1.00 = flat).

    .venv/bin/python bench/onboarding.py [--sizes 1000000,3000000] [--baseline-max N]
                                         [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "sandbox" / "data" / "specs" / "emr-visits.toml"


def _step(kind: str, patients: int, work: Path) -> dict:
    """Run inside the child process: one step, timed, with its own peak memory."""
    raw, out, key = work / "raw", work / "dataset", work / "pseudonym.key"
    started = time.perf_counter()
    if kind == "generate":
        from sandbox.data.generate import generate

        rows = generate(patients, 20251231, raw).rows["visits"]
    elif kind == "onboard":
        from sandbox.data.onboard import onboard
        from sandbox.data.pseudonym import create_key

        if not key.exists():
            create_key(key)
        rows = onboard(raw, SPEC, key, out).report["before"]["records"]
    else:  # baseline: the same joins in plain Polars, written out, nothing else
        import polars as pl

        visits = pl.scan_parquet(raw / "visits.parquet")
        patients_t = pl.scan_parquet(raw / "patients.parquet")
        diagnoses = pl.scan_parquet(raw / "diagnoses.parquet").filter(pl.col("is_primary"))
        costs = pl.scan_parquet(raw / "costs.parquet")
        joined = (visits.join(patients_t, on="patient_id")
                  .join(diagnoses.drop("patient_id"), on="visit_id")
                  .join(costs.drop("patient_id"), on="visit_id"))
        joined.sink_parquet(work / "baseline.parquet")
        rows = pl.scan_parquet(work / "baseline.parquet").select(pl.len()).collect().item()
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rows": rows, "peak_mib": peak_mib}


def _run(kind: str, patients: int, work: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--patients", str(patients),
         "--workdir", str(work)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000")
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="largest size at which to run the plain-Polars baseline")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", choices=["generate", "onboard", "baseline"])
    parser.add_argument("--patients", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_step(args.child, args.patients, args.workdir)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-onboarding-"))
    results: dict[int, dict[str, dict]] = {}
    print(f"{'patients':>10} {'step':<9} {'seconds':>8} {'visits':>11} {'visits/s':>11} "
          f"{'peak MiB':>9} {'vs baseline':>11}", flush=True)
    for patients in sizes:
        work = base / str(patients)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        steps = ["generate", "onboard"]
        if patients <= args.baseline_max:
            steps.insert(1, "baseline")
        results[patients] = {kind: _run(kind, patients, work) for kind in steps}
        floor = results[patients].get("baseline")
        for kind, r in results[patients].items():
            ratio = f"{r['seconds'] / floor['seconds']:>10.1f}x" if floor else f"{'—':>11}"
            print(f"{patients:>10,} {kind:<9} {r['seconds']:>8.1f} {r['rows']:>11,} "
                  f"{r['rows'] / r['seconds']:>11,.0f} {r['peak_mib']:>9,.0f} {ratio}",
                  flush=True)
        shutil.rmtree(work, ignore_errors=True)
    for small, large in itertools.pairwise(sizes):
        scale = large / small
        print(f"\nfrom {small:,} to {large:,} patients (x{scale:g}): ratio of time (and per "
              "patient, 1.00 = linear), ratio of peak memory (1.00 = flat)")
        for kind in ("generate", "baseline", "onboard"):
            if kind not in results[small] or kind not in results[large]:
                continue
            t = results[large][kind]["seconds"] / results[small][kind]["seconds"]
            m = results[large][kind]["peak_mib"] / results[small][kind]["peak_mib"]
            print(f"  {kind:<9} time x{t:.2f} ({t / scale:.2f} per patient)   "
                  f"peak memory x{m:.2f}")
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
