"""Benchmark: what a cohort costs and what its answers are worth.

1. **Latency of a cohort build** — a type 2 diabetes cohort with a lab maximum, a drug,
   30-day readmission and sex, built as the gateway builds it
   (``sandbox.gateway.cohorts.patients``: checks, periods of published dates, codelists,
   consent) beside plain Polars doing the same joins on the same tables with day-level
   dates read directly (the floor); median of ``--runs``, ratio printed (goal ≤ 2×).
   With ``--spark sc://…``, also the Spark engine's answer to a grouped count of the
   cohort — the frame built on Spark (``sandbox.cohorts.spark``) and the count's exact
   aggregate brought back — beside the same floor (no speed-up claim on one machine).
2. **Relative error vs ε** for each statistic of the cohort — patient count, grouped
   count, mean, histogram, proportion, and the models: a logistic regression's odds
   ratios, a linear regression's fitted group means, the chi-square statistic of a
   table, a survival curve at its horizon — from OpenDP's measurements on the built frame
   (``--draws`` releases per ε, in this process: nothing is charged), post-processed as
   the client does (``sandbox.cohorts.fits``, ``survival``), the mean of
   |released − exact| / exact (averaged over the cells of a grouped release, the terms of
   a model); a plot saved to ``docs/bench/cohort-utility.png``.

    .venv/bin/python bench/utility.py [--sizes 100000,1000000] [--runs 5] [--draws 50]
                                      [--spark sc://127.0.0.1:15002]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import dataset  # noqa: E402
from sandbox.client import Cohort  # noqa: E402
from sandbox.cohorts import fits, rates, survival  # noqa: E402
from sandbox.cohorts.checks import grantable  # noqa: E402
from sandbox.cohorts.spec import CohortQuery  # noqa: E402
from sandbox.data.metadata import load as load_metadata  # noqa: E402
from sandbox.gateway import cohorts  # noqa: E402
from sandbox.gateway.engine import Engine, post_process  # noqa: E402
from sandbox.queries.checks import bin_labels  # noqa: E402
from sandbox.queries.withdrawals import Withdrawn  # noqa: E402

PURPOSE = "medical_research"
EPSILONS = [0.1, 0.3, 1.0, 3.0]
SURVIVAL_BINS = [0, 30, 90, 180, 365]
METFORMIN = "盐酸二甲双胍片"


def diabetes() -> Cohort:
    return (Cohort("emr-visits", Cohort.events("diagnoses", codes=["E11"]))
            .first_value("sex", Cohort.events("records"), "sex")
            .max("glucose", Cohort.events("labs", where={"test_code": "GLU"}), "value")
            .bands("control", "glucose", [0, 7, 50])
            .exists("metformin", Cohort.events("prescriptions",
                                               where={"drug_name": [METFORMIN]}))
            .exists("readmitted", Cohort.events("visits", where={"visit_type": "住院"},
                                                after_index=(1, 30))))


def served(directory: Path) -> SimpleNamespace:
    metadata = load_metadata(directory).document()
    return SimpleNamespace(id="emr-visits", version=metadata["version"], metadata=metadata,
                           directory=directory)


def modelled() -> Cohort:
    """The cohort with what the models ask of it: the square of glucose (a linear model's
    sums of squares), time to an inpatient stay within a year, and its bins."""
    return (diabetes().variable("glucose_sq", "square", of="glucose")
            .survival("back", Cohort.events("visits", where={"visit_type": "住院"},
                                            after_index=(1, 365)),
                      followup=Cohort.events("visits"), horizon=365)
            .bands("time_bin", "back", SURVIVAL_BINS))


def query(kind: str, epsilon: float, cohort: Cohort | None = None, **extra) -> CohortQuery:
    return CohortQuery.model_validate({"cohort": (cohort or diabetes()).spec(), "query": {
        "dataset": "emr-visits", "kind": kind, "epsilon": epsilon, **extra}})


def built(data: SimpleNamespace) -> pl.DataFrame:
    return cohorts.patients(query("count", 1.0), data, PURPOSE, Withdrawn()).collect()


def plain(directory: Path) -> pl.DataFrame:
    """The same cohort in plain Polars: dates read as days (a month label as its first
    day), no checks, no periods — the floor."""
    read = lambda t: pl.scan_parquet(directory / "restricted" / f"{t}.parquet")  # noqa: E731
    day = lambda c: pl.coalesce(pl.col(c).str.to_date("%Y-%m-%d", strict=False),  # noqa: E731
                                (pl.col(c) + "-01").str.to_date("%Y-%m-%d", strict=False))
    consent = read("consent").group_by("pseudonym").agg(
        (pl.col(PURPOSE).fill_null(False) & pl.col("withdrawn_at").is_null()).all()
        .alias("ok")).filter("ok").select("pseudonym")
    index = (read("diagnoses").filter(pl.col("diagnosis_code").str.starts_with("E11"))
             .group_by("pseudonym").agg(day("diagnosed_on").min().alias("index"))
             .join(consent, on="pseudonym", how="semi"))
    sex = read("records").group_by("pseudonym").agg(pl.col("sex").first())
    glucose = (read("labs").filter(pl.col("test_code") == "GLU").group_by("pseudonym")
               .agg(pl.col("value").max().alias("glucose")))
    metformin = (read("prescriptions").filter(pl.col("drug_name") == METFORMIN)
                 .group_by("pseudonym").agg(pl.len().alias("metformin")))
    readmitted = (read("visits").filter(pl.col("visit_type") == "住院")
                  .join(index, on="pseudonym")
                  .filter(((day("admitted_on") - pl.col("index")).dt.total_days())
                          .is_between(1, 30))
                  .group_by("pseudonym").agg(pl.len().alias("readmitted")))
    frame = index
    for part in (sex, glucose, metformin, readmitted):
        frame = frame.join(part, on="pseudonym", how="left")
    return frame.with_columns(
        pl.when(pl.col("glucose") < 7).then(pl.lit("[0, 7)")).otherwise(pl.lit("[7, 50]"))
        .alias("control")).collect()


def timed(run, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def on_spark(data: SimpleNamespace, executor) -> pl.DataFrame:
    """The Spark engine's exact aggregate of the cohort counted by control × metformin."""
    from sandbox.cohorts import spark as lowered
    from sandbox.queries.plan import compile_plan
    asked = query("count", 1.0, group_by=["control", "metformin"])
    described = cohorts.describe(asked, data, grantable(data.metadata), PURPOSE)
    plan = compile_plan(asked.query, described.fields, PURPOSE, described.max_rows)
    rows = lowered.patients(asked.cohort, data.metadata, data.directory, PURPOSE,
                            frozenset())
    return executor.aggregate_rows(plan, rows)


def latency(work: Path, sizes: list[int], runs: int, spark: str | None) -> None:
    executor = None
    if spark:
        from sandbox.queries.spark import SparkExecutor
        executor = SparkExecutor(spark)
    print("patients  cohort  built s  plain Polars s  ratio"
          + ("  Spark s  ratio" if executor else ""))
    for patients in sizes:
        directory = dataset(work, patients) / "emr-visits"
        data = served(directory)
        ours = timed(lambda data=data: built(data), runs)
        floor = timed(lambda directory=directory: plain(directory), runs)
        frame = built(data)
        size = frame.height
        line = f"{patients:>8,}  {size:>6,}  {ours:>7.2f}  {floor:>14.2f}  {ours / floor:>5.2f}×"
        if executor is not None:
            counted = on_spark(data, executor)  # the first run also starts the session
            # the same patients as the Polars build (a patient without glucose in no cell)
            assert int(counted["count"].sum()) == frame["control"].drop_nulls().len()
            theirs = timed(lambda data=data: on_spark(data, executor), runs)
            line += f"  {theirs:>7.2f}  {theirs / floor:>5.1f}×"
        print(line)
    if executor is not None:
        executor.stop()


def utility(work: Path, patients: int, draws: int, plot: Path) -> None:
    data = served(dataset(work, patients) / "emr-visits")
    engine = Engine()
    allowed = grantable(data.metadata)
    exact = built(data).with_columns(pl.col(pl.Enum).cast(pl.String))
    truth = {
        "count": exact.height,
        "count by control × readmitted": exact.group_by("control", "readmitted").len()
        .filter(pl.col("control").is_not_null()),
        "mean glucose": exact["glucose"].drop_nulls().clip(0, 50).mean(),
        "histogram of glucose": exact["glucose"].drop_nulls(),
        "proportion on metformin": (exact["metformin"] == "yes").mean(),
    }
    kinds = {
        "count": lambda e: query("count", e),
        "count by control × readmitted": lambda e: query(
            "count", e, group_by=["control", "readmitted"]),
        "mean glucose": lambda e: query("mean", e, field="glucose", bounds=[0, 50],
                                        filters=[{"field": "glucose", "op": "ge",
                                                  "value": 0}]),
        "histogram of glucose": lambda e: query("histogram", e, field="glucose",
                                                bins=[0, 5, 7, 9, 11, 20, 50]),
        "proportion on metformin": lambda e: query("count", e, group_by=["metformin"]),
    }
    print(f"\nrelative error (mean of {draws} releases), {exact.height:,} patients")
    print("statistic".ljust(32) + "".join(f"ε={e:<8g}" for e in EPSILONS))
    errors: dict[str, list[float]] = {}
    for name, make in kinds.items():
        row = []
        for epsilon in EPSILONS:
            q = make(epsilon)
            described = cohorts.describe(q, data, allowed, PURPOSE)
            measurement = engine.measurement(q.query, described, PURPOSE)
            frame = cohorts.build(q, data, described, PURPOSE, Withdrawn()).collect().lazy()
            scale = cohorts.preview(q, data, SimpleNamespace(fields=allowed, purpose=PURPOSE),
                                    engine, 0.05)[0]["scale"]
            row.append(statistics.fmean(
                _error(name, measurement(frame).collect(), truth[name], scale)
                for _ in range(draws)))
        errors[name] = row
        print(name.ljust(32) + "".join(f"{v:<10.4f}" for v in row))
    for name, row in model_errors(data, engine, allowed, draws).items():
        errors[name] = row
        print(name.ljust(32) + "".join(f"{v:<10.4f}" for v in row))
    _plot(errors, plot, exact.height)


def model_errors(data: SimpleNamespace, engine: Engine, allowed: set[str], draws: int
                 ) -> dict[str, list[float]]:
    """The models' relative errors: each fit on noisy releases against the same fit on the
    exact cells (the unregularised fit on the patients' rows)."""
    cohort = modelled()
    first = query("count", 1.0, cohort)
    frame = cohorts.build(first, data, cohorts.describe(first, data, allowed, PURPOSE),
                          PURPOSE, Withdrawn()).collect()  # one frame for every release

    def release(q: CohortQuery, exact: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
        described = cohorts.describe(q, data, allowed, PURPOSE)
        noise = pl.DataFrame(cohorts.preview(q, data, SimpleNamespace(
            fields=allowed, purpose=PURPOSE), engine, 0.05))
        if exact:
            return _exact_release(q, frame), noise
        measured = engine.measurement(q.query, described, PURPOSE)(frame.lazy()).collect()
        return post_process(q.query, measured, None), noise

    def logistic(e: float, exact: bool = False) -> list[float]:
        counts, noise = release(query("count", e, cohort, group_by=[
            "control", "sex", "metformin"]), exact)
        rows, _ = fits.logistic(counts, "metformin", ["control", "sex"], "yes",
                                0.0 if exact else fits.preview_variance(noise, "Frame Length"))
        return [r["odds_ratio"] for r in rows[1:]]

    def linear(e: float, exact: bool = False) -> list[float]:
        inside = [{"field": "glucose", "op": "between", "value": [0, 30]}]
        (sums, noise), (squares, square_noise) = (release(query(
            "sum", e / 2, cohort, field=field, bounds=bounds, filters=inside,
            group_by=["metformin", "sex"]), exact) for field, bounds in (
            ("glucose", [0, 30]), ("glucose_sq", [0, 900])))
        variances = (0.0, 0.0, 0.0) if exact else fits.linear_variances(noise, square_noise)
        rows, _ = fits.linear(sums, squares, "glucose", ["metformin", "sex"], variances,
                              (0, 30))
        b = [r["estimate"] for r in rows]  # intercept, metformin=…, sex=…
        return [b[0], b[0] + b[1], b[0] + b[2], b[0] + b[1] + b[2]]

    def table(e: float, exact: bool = False) -> list[float]:
        counts, noise = release(query("count", e, cohort, group_by=["control", "metformin"]),
                                exact)
        return [fits.independence(counts, "control", "metformin",
                                  0.0 if exact else float(noise["scale"][0]), 1)["statistic"]]

    def curve(e: float, exact: bool = False) -> list[float]:
        counts, noise = release(query("count", e, cohort, group_by=["time_bin", "back_event"]),
                                exact)
        found = {(r["time_bin"], r["back_event"]): r["count"]
                 for r in counts.iter_rows(named=True)}
        labels = bin_labels(SURVIVAL_BINS)
        rows = survival.kaplan_meier([found.get((b, "yes")) for b in labels],
                                     [found.get((b, "no")) for b in labels],
                                     0.0 if exact else float(noise["scale"][0]))
        return [rows[-1]["survival"]]

    out = {}
    for name, fit in (("logistic odds ratios", logistic), ("linear fitted means", linear),
                      ("chi-square statistic", table), ("survival at 1 year", curve)):
        row = []
        for epsilon in EPSILONS:
            truth = fit(epsilon, exact=True)
            row.append(statistics.fmean(
                statistics.fmean(abs(d - t) / abs(t) for d, t in zip(
                    fit(epsilon), truth, strict=True)) for _ in range(draws)))
        out[name] = row
    return out


def _exact_release(q: CohortQuery, frame: pl.DataFrame) -> pl.DataFrame:
    """What a grouped count or sum would release without noise (public keys)."""
    spec = q.query
    frame = frame.drop_nulls(spec.group_by).with_columns(pl.col(pl.Enum).cast(pl.String))
    for flt in spec.filters:
        frame = frame.filter(pl.col(flt.field).is_between(*flt.value))
    values = [pl.len().alias("count")]
    if spec.kind == "sum":
        values.append(pl.col(spec.field).clip(*spec.bounds).sum().alias("sum"))
    return frame.group_by(spec.group_by).agg(values).sort(spec.group_by)


def _error(name: str, released: pl.DataFrame, truth, scale: float) -> float:
    if name == "count":
        return abs(released.item() - truth) / truth
    if name == "mean glucose":
        return abs(released["mean"][0] - truth) / truth
    if name == "proportion on metformin":
        cells = dict(zip(released["metformin"].cast(pl.String), released["count"],
                         strict=True))
        share = rates.proportion(cells.get("yes"), cells.get("no"), scale)["proportion"]
        return abs(share - truth) / truth
    if name == "histogram of glucose":
        edges = [0, 5, 7, 9, 11, 20, 50]
        labels = bin_labels(edges)
        exact = truth.clip(0, 50).cut(edges[1:-1], labels=labels, left_closed=True)
        counts = exact.cast(pl.String).to_frame("bin").group_by("bin").len("exact")
        joined = counts.join(released.with_columns(pl.col("bin").cast(pl.String)), on="bin")
        return float(((joined["count"].fill_null(0) - joined["exact"]).abs()
                      / joined["exact"]).mean())
    joined = truth.join(released.with_columns(pl.col(pl.Categorical, pl.Enum)
                                              .cast(pl.String)),
                        on=["control", "readmitted"], how="left")
    return float(((joined["count"].fill_null(0) - joined["len"]).abs()
                  / joined["len"]).mean())


def _plot(errors: dict[str, list[float]], path: Path, patients: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for name, row in errors.items():
        ax.loglog(EPSILONS, row, marker="o", label=name)
    ax.set_xlabel("ε")
    ax.set_ylabel("mean relative error")
    ax.set_title(f"Cohort statistics, {patients:,} patients (one row each)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--spark", default=None,
                        help="a Spark Connect server (sc://host:port) to time as well")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench" /
                        "cohort-utility.png")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-utility-"))
    latency(work, sizes, args.runs, args.spark)
    utility(work, sizes[0], args.draws, args.plot)


if __name__ == "__main__":
    main()
