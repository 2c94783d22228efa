"""Models and tests of a cohort through the gateway (``gw.cohort(c).logistic(...)``,
``.linear(...)``, ``.table(...)``): the per-cell releases each needs — charged and receipted
as any other — then the fit, which is post-processing (``sandbox.cohorts.fits``). With
``preview=True`` each returns the noise of the releases it would make, spending nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from sandbox import units
from sandbox.cohorts import fits
from sandbox.cohorts.spec import CohortSpec

if TYPE_CHECKING:
    from sandbox.client import DPResult, Where
    from sandbox.client.cohorts import CohortStatistics

NUMERIC = ("count", "min", "max", "mean", "days_to_first", "survival", "square")


def logistic(stats: CohortStatistics, outcome: str, predictors: list[str], *,
             epsilon: float, value: str = "yes", where: Where = None,
             reference: dict[str, str] | None = None, level: float = 0.95,
             preview: bool = False) -> DPResult | pl.DataFrame:
    """Logistic regression of ``outcome`` = ``value`` on categorical ``predictors``: one
    count of patients per predictor cell and outcome, fitted by maximum likelihood."""
    _check(stats, [*predictors, outcome], level, reference, predictors)
    if outcome in predictors:
        raise ValueError(f"{outcome!r} is the outcome: it cannot also be a predictor")
    outcomes = stats._categories(outcome)
    if outcomes is not None and value not in outcomes:
        raise ValueError(f"{value!r} is not a value of {outcome!r}: {', '.join(outcomes)}")
    query = stats._query("count", epsilon, where=where, group_by=[*predictors, outcome])
    noise = stats.preview(query)
    if preview:
        return noise
    counts = stats.query(query)
    rows, about = fits.logistic(counts.df, outcome, predictors, value,
                                fits.preview_variance(noise, "Frame Length"), reference, level)
    return _result(counts, rows, about | {"scale": float(noise["scale"][0])})


def linear(stats: CohortStatistics, target: str, predictors: list[str], *,
           epsilon: float, bounds: tuple[float, float], where: Where = None,
           reference: dict[str, str] | None = None, level: float = 0.95,
           preview: bool = False) -> DPResult | pl.DataFrame:
    """Linear regression of the numeric ``target`` on categorical ``predictors``, over the
    patients whose ``target`` lies within ``bounds``: two grouped sums, each with half of
    ``epsilon`` — of ``target`` (its release also counts the patients per cell) and of its
    square."""
    _check(stats, predictors, level, reference, predictors)
    low, high = bounds
    square = next(n for n in (f"{target[:34]}_sq{i or ''}" for i in range(30))
                  if n not in stats.spec["variables"])
    spec = json.loads(json.dumps(stats.spec))
    spec["variables"][square] = {"kind": "square", "of": target}
    asked = type(stats)(stats._gateway, spec)
    inside = [*_where(where), {"field": target, "op": "between", "value": [low, high]}]
    half = units.micro_epsilon(epsilon) // 2
    shares = [half, units.micro_epsilon(epsilon) - half]
    least = 0.0 if low <= 0 <= high else min(low * low, high * high)
    queries = [
        asked._query("sum", units.epsilon_of(shares[0]), field=target, bounds=[low, high],
                     where=inside, group_by=predictors),
        asked._query("sum", units.epsilon_of(shares[1]), field=square,
                     bounds=[least, max(low * low, high * high)], where=inside,
                     group_by=predictors)]
    noises = [asked.preview(q) for q in queries]
    if preview:
        return pl.concat([n.with_columns(pl.lit(name).alias("release")) for name, n in
                          zip((target, f"{target}²"), noises, strict=True)],
                         how="diagonal_relaxed")
    remaining = stats._gateway.budget()["epsilon"]["remaining"]
    if units.micro_epsilon(remaining) < units.micro_epsilon(epsilon):
        # two releases: refuse before the first rather than spend half and stop
        raise ValueError(f"this model needs ε = {epsilon:g}; the project has "
                         f"{remaining:g} left")
    released = [asked.query(q) for q in queries]
    rows, about = fits.linear(released[0].df, released[1].df, target, predictors,
                              fits.linear_variances(*noises),
                              (low, high), reference, level)
    from sandbox.client import DPResult
    spent = units.epsilon_of(sum(units.micro_epsilon(r.epsilon) for r in released))
    return DPResult(pl.DataFrame(rows), released[0].release_id,
                    released[0].receipt, spent, sum(r.delta for r in released),
                    all(r.repeated for r in released),
                    {"releases": [r.query for r in released]}, about, tuple(released))


def table(stats: CohortStatistics, rows: str, columns: str, *, epsilon: float,
          where: Where = None, preview: bool = False) -> DPResult | pl.DataFrame:
    """The contingency table of two categorical variables (one count per cell) and the
    chi-square test of their independence, with the release's noise in its null
    distribution (``.comparison``)."""
    _check(stats, [rows, columns], 0.95)
    query = stats._query("count", epsilon, where=where, group_by=[rows, columns])
    noise = stats.preview(query)
    if preview:
        return noise
    counts = stats.query(query)
    seed = int(hashlib.sha256(counts.release_id.encode()).hexdigest()[:16], 16)
    test = fits.independence(counts.df, rows, columns, float(noise["scale"][0]), seed,
                             "Gaussian" in noise["distribution"][0])
    return _result(counts, counts.df.to_dicts(), test)


def _check(stats: CohortStatistics, categorical: list[str], level: float,
           reference: dict[str, str] | None = None, predictors: Sequence[str] = ()) -> None:
    """Refuse, before anything is spent, what the releases could not answer."""
    from sandbox.client.cohorts import _check_level
    _check_level(level)
    for name, level_of in (reference or {}).items():
        if name not in predictors:
            raise ValueError(f"reference names {name!r}, which is not a predictor")
        known = stats._categories(name)
        if known is not None and level_of not in known:
            raise ValueError(f"{level_of!r} is not a level of {name!r}: {', '.join(known)}")
    variables = stats.spec["variables"]
    columns = CohortSpec.model_validate(stats.spec).columns()
    for name in categorical:
        if name not in columns:
            raise ValueError(f"{name!r} is not a variable of this cohort")
        if variables.get(name, {}).get("kind") in NUMERIC:
            raise ValueError(f"{name!r} is numeric: band it first (.bands()) to use it as "
                             "a categorical variable")


def _where(where: Where) -> list[dict]:
    from sandbox.client import _filters
    return _filters(where)


def _result(release: DPResult, rows: list[dict], about: dict) -> DPResult:
    from sandbox.client import DPResult
    return DPResult(pl.DataFrame(rows), release.release_id, release.receipt, release.epsilon,
                    release.delta, release.repeated, release.query, about)
