"""OpenDP's noise on an engine's exact aggregates.

The gateway's OpenDP measurement (``engine.Engine.measurement``) stays what it was: the
whole query as OpenDP's Polars plan, whose ``map`` gives the (ε, δ) that is charged and
whose per-statistic noise scales (and group threshold) OpenDP chose. Here the same scales
are taken from it (``summarize_polars_measurement``), and OpenDP's own noise measurements
— discrete Laplace on 64-bit integers, and Laplace with a threshold for private group keys;
or, for a Gaussian query, the discrete Gaussian, whose zCDP losses add up and are converted
to (ε, δ) by OpenDP — are built on the domain of the exact result at those scales. Their
losses are checked with OpenDP's ``map`` against the measurement's before anything is
spent; only then do they add noise to what Polars or Spark computed. Sums are fixed point
(``plan.bits``): the noise is drawn on the same integer grid, at the scale times 2^bits, and
the sum divided back — the same noise at a granularity of 2^-bits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.mod import Measurement

from sandbox.errors import PolicyRefusal
from sandbox.gateway.zcdp import approximate
from sandbox.queries.plan import COUNT, SUM, ExactPlan

dp.enable_features("contrib")

LENGTHS = ("Frame Length", "Length")
NOISES = ("Integer Laplace", "Float Laplace", "Integer Gaussian", "Float Gaussian")
SLACK = 1e-9


@dataclass(frozen=True)
class Statistic:
    """One noisy number per group, as OpenDP's measurement releases it."""

    column: str  # the released column: count, sum or mean
    aggregate: str  # OpenDP's name: "Frame Length", "Length" or "Sum"
    scale: float  # in the column's units
    threshold: int | None = None
    gaussian: bool = False  # OpenDP chose Gaussian noise: the loss is zCDP (ρ)


@dataclass(frozen=True)
class Noise:
    """The noise of one compiled query: a statistic and its OpenDP measurement each."""

    statistics: tuple[Statistic, ...]
    measurements: tuple[Measurement, ...]
    epsilon: float
    delta: float


def statistics(measurement: Measurement) -> list[Statistic]:
    """The noisy statistics of ``measurement`` and their scales, as OpenDP reports them."""
    summary = summarize_polars_measurement(measurement)
    out = []
    for row in summary.iter_rows(named=True):
        if row["distribution"] not in NOISES:
            raise PolicyRefusal(f"OpenDP chose {row['distribution']} noise, which this "
                                "engine does not apply")
        out.append(Statistic(row["column"], row["aggregate"], float(row["scale"]),
                             row.get("threshold"), "Gaussian" in row["distribution"]))
    return out


def sum_scale(stats: list[Statistic]) -> float:
    return max((s.scale for s in stats if s.aggregate == "Sum"), default=0.0)


def build(plan: ExactPlan, stats: list[Statistic], d_in: int, epsilon: float,
          delta: float) -> Noise:
    """OpenDP's noise measurement for each statistic, on the exact result's domain; refused
    (before any charge) unless their losses, composed, fit the query's (ε, δ)."""
    measurements = []
    spent_eps, spent_delta, spent_rho = 0.0, 0.0, 0.0
    for stat in stats:
        measurement, d_stat = _measurement(plan, stat, d_in)
        loss = measurement.map(d_stat)
        if stat.gaussian:
            spent_rho += loss
        else:
            eps, dlt = loss if isinstance(loss, tuple) else (loss, 0.0)
            spent_eps += eps
            spent_delta += dlt
        measurements.append(measurement)
    if spent_rho:
        # the statistics' zCDP losses compose by adding; OpenDP converts the sum at δ
        eps, dlt = approximate(spent_rho, delta)
        spent_eps, spent_delta = spent_eps + eps, spent_delta + dlt
    if spent_eps > epsilon * (1 + SLACK) or spent_delta > delta * (1 + SLACK) + 1e-300:
        raise PolicyRefusal(f"the noise of this query would lose ε = {spent_eps:g}, "
                            f"δ = {spent_delta:g}, more than its ε = {epsilon:g}, "
                            f"δ = {delta:g}")
    return Noise(tuple(stats), tuple(measurements), spent_eps, spent_delta)


def _measurement(plan: ExactPlan, stat: Statistic, d_in: int) -> tuple[Measurement, Any]:
    integer = dp.atom_domain(T="i64")
    if stat.aggregate in LENGTHS:
        scale, sensitivity = stat.scale, d_in
    elif stat.aggregate == "Sum":
        scale, sensitivity = math.ldexp(stat.scale, plan.bits), plan.sum_sensitivity(d_in)
    else:
        raise PolicyRefusal(f"OpenDP's {stat.aggregate} has no exact counterpart here")
    if stat.threshold is not None:
        # Private keys: OpenDP's Laplace with a threshold over the groups present; one
        # patient's rows reach at most d_in groups, d_in rows in all, d_in in any one.
        domain = dp.map_domain(dp.atom_domain(T=str), integer)
        metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        return (dp.m.make_laplace_threshold(domain, metric, scale=scale,
                                            threshold=stat.threshold),
                (d_in, sensitivity, sensitivity))
    # a Gaussian's sensitivity is an L2 norm, at most the L1 norm a Laplace takes
    make, norm = (dp.m.make_gaussian, dp.l2_distance) if stat.gaussian else (
        dp.m.make_laplace, dp.l1_distance)
    if plan.grouped:
        return make(dp.vector_domain(integer), norm(T="i64"), scale), sensitivity
    return make(integer, dp.absolute_distance(T="i64"), scale), sensitivity


def release(plan: ExactPlan, noise: Noise, exact: pl.DataFrame) -> pl.DataFrame:
    """The released frame, laid out as OpenDP's own release of the query would be."""
    keys = list(plan.group_columns)
    if any(s.threshold is not None for s in noise.statistics):
        return _thresholded(plan, noise, exact)
    columns: dict[str, pl.Series] = {k: exact[k] for k in keys}
    parts: dict[tuple[str, str], list] = {}
    for stat, measurement in zip(noise.statistics, noise.measurements, strict=True):
        source = exact[SUM if stat.aggregate == "Sum" else COUNT].to_list()
        noisy = measurement(source) if plan.grouped else [measurement(source[0])]
        parts[(stat.column, stat.aggregate)] = noisy
    for (column, aggregate), noisy in parts.items():
        if aggregate == "Frame Length":
            columns[column] = pl.Series(column, noisy, dtype=pl.Int64)
        elif column == "mean" and aggregate == "Sum":
            sums = [math.ldexp(v, -plan.bits) for v in noisy]
            lengths = parts[(column, "Length")]
            columns[column] = pl.Series(column, [_divide(s, n) for s, n in
                                                 zip(sums, lengths, strict=True)],
                                        dtype=pl.Float64)
        elif aggregate == "Sum":
            columns[column] = pl.Series(column, [math.ldexp(v, -plan.bits) for v in noisy],
                                        dtype=pl.Float64)
    return pl.DataFrame(columns)


def _divide(total: float, n: int) -> float:
    if n == 0:
        return math.nan if total == 0 else math.copysign(math.inf, total)
    return total / n


def _thresholded(plan: ExactPlan, noise: Noise, exact: pl.DataFrame) -> pl.DataFrame:
    (stat,), (measurement,) = noise.statistics, noise.measurements
    keys = list(plan.group_columns)
    counts = {json.dumps(list(row[:-1]), ensure_ascii=False): int(row[-1])
              for row in exact.select(*keys, COUNT).iter_rows()}
    kept = measurement(counts)
    rows = [(*json.loads(key), value) for key, value in kept.items()]
    schema = {**{k: pl.String for k in keys}, stat.column: pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")
