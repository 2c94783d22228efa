"""From released per-cell statistics (the frames a grouped count or sum returns) to a
fitted model or a test — ``sandbox.cohorts.models`` on the cells, with the levels, the
reference, withheld cells and dropped levels stated. Post-processing only: the client runs
it on what the gateway released, the benchmark on OpenDP's releases in process."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from sandbox.cohorts import models, rates
from sandbox.queries.spec import SMALL_CELL

COUNTS = "OpenDP integer Laplace counts per cell"


def preview_variance(preview: pl.DataFrame, aggregate: str) -> float:
    """The noise variance of the ``aggregate`` ("Frame Length", "Sum") of a release, from
    its preview (``distribution``, ``scale``)."""
    row = preview.filter(pl.col("aggregate") == aggregate).row(0, named=True)
    return rates.variance_of(row["distribution"], float(row["scale"]))


def linear_variances(sums: pl.DataFrame, squares: pl.DataFrame
                     ) -> tuple[float, float, float]:
    """A linear model's noise variances — count and sum of its first release, sum of its
    second — from the two releases' previews."""
    return (preview_variance(sums, "Frame Length"), preview_variance(sums, "Sum"),
            preview_variance(squares, "Sum"))


def logistic(counts: pl.DataFrame, outcome: str, predictors: list[str], value: str,
             variance: float, reference: dict[str, str] | None = None,
             level: float = 0.95) -> tuple[list[dict], dict]:
    """Coefficient rows and what to know about them, from a count of patients grouped by
    ``predictors`` and ``outcome`` (noise ``variance`` per count)."""
    cells, withheld = [], 0
    others = max(counts[outcome].n_unique() - 1, 1)
    for key, group in counts.group_by(predictors, maintain_order=True):
        found = dict(zip(group[outcome].to_list(), group["count"].to_list(), strict=True))
        withheld += sum(c is None for c in found.values())
        cells.append({**dict(zip(predictors, key, strict=True)),
                      "yes": found.get(value) or 0,
                      "no": sum(c or 0 for k, c in found.items() if k != value)})
    cells, levels, dropped = _levels(cells, predictors, reference,
                                     lambda c: max(c["yes"], 0) + max(c["no"], 0))
    x, names = models.design(cells, predictors, levels)
    fit = models.logistic(x, np.array([c["yes"] for c in cells], dtype=float),
                          np.array([c["no"] for c in cells], dtype=float),
                          variance, variance * others)
    about = {"model": "logistic", "outcome": f"{outcome} = {value}", "n": fit["n"],
             "mechanism": f"{COUNTS}; maximum likelihood on the released counts",
             **_notes(withheld, dropped, levels)}
    return models.table(fit, names, level, exponentiate=True), about


def linear(sums: pl.DataFrame, squares: pl.DataFrame, target: str, predictors: list[str],
           variances: tuple[float, float, float], bounds: tuple[float, float],
           reference: dict[str, str] | None = None, level: float = 0.95
           ) -> tuple[list[dict], dict]:
    """Coefficient rows from a grouped sum of ``target`` within ``bounds`` (with its count)
    and a grouped sum of its square; ``variances`` of the count, sum and square noise. A
    cell withheld in either release is left out of both."""
    joined = sums.select(*predictors, "count", "sum").join(
        squares.select(*predictors, pl.col("sum").alias("squares")), on=predictors,
        how="full", coalesce=True)
    complete = pl.all_horizontal(pl.col("count", "sum", "squares").is_not_null())
    withheld = joined.height - joined.filter(complete).height
    cells = [{**row, **({} if all(row[k] is not None for k in ("count", "sum", "squares"))
                       else {"count": 0, "sum": 0, "squares": 0})}
             for row in joined.iter_rows(named=True)]
    cells, levels, dropped = _levels(cells, predictors, reference,
                                     lambda c: max(c["count"], 0))
    x, names = models.design(cells, predictors, levels)
    low, high = bounds
    fit = models.linear(x, *(np.array([c[k] for c in cells], dtype=float)
                             for k in ("count", "sum", "squares")),
                        *variances, spread=(high - low) ** 2 / 4)
    about = {"model": "linear", "outcome": target, "bounds": [low, high], "n": fit["n"],
             "residual_sd": float(np.sqrt(fit["residual_variance"])),
             "residual_bounded": fit["residual_bounded"],
             "mechanism": "OpenDP Laplace sums of the outcome and of its square per cell "
                          "(with counts); least squares on the released sums",
             **_notes(withheld, dropped, levels)}
    if fit["residual_bounded"]:
        about["note"] = " ".join(filter(None, [about["note"], (
            "the noisy sums of squares cannot tell the residual variance at this ε: the "
            "sampling error assumes the largest a bounded outcome allows (conservative); "
            "tighter bounds or more ε estimate it")]))
    return models.table(fit, names, level), about


def independence(counts: pl.DataFrame, rows: str, columns: str, scale: float,
                 seed: int, gaussian: bool = False) -> dict:
    """The test of independence of a count grouped by ``rows`` and ``columns``."""
    wide = counts.select(rows, columns, pl.col("count").fill_null(0)).pivot(
        on=columns, index=rows, values="count").fill_null(0)
    test = models.independence(wide.drop(rows).to_numpy().astype(float), scale, seed,
                               withhold_below=SMALL_CELL, gaussian=gaussian)
    # the rows and columns the test kept (those without a withheld cell), by name
    names = wide[rows].to_list(), wide.drop(rows).columns
    return test | {"rows_kept": [names[0][i] for i in test["rows_kept"]],
                   "columns_kept": [names[1][i] for i in test["columns_kept"]],
                   "withheld": counts["count"].null_count()}


def _levels(cells: list[dict], predictors: list[str], reference: dict[str, str] | None,
            size: Callable[[dict], float]
            ) -> tuple[list[dict], dict[str, list[str]], list[str]]:
    """Each predictor's levels with patients (the reference first: ``reference`` or the
    first released); cells of a level without any are dropped, and named."""
    reference = reference or {}
    levels, dropped = {}, []
    for p in predictors:
        seen = list(dict.fromkeys(c[p] for c in cells))
        if p in reference and reference[p] not in seen:
            raise ValueError(f"{reference[p]!r} is not a level of {p!r}: {', '.join(seen)}")
        present = [v for v in seen if sum(size(c) for c in cells if c[p] == v) > 0]
        dropped += [f"{p}={v}" for v in seen if v not in present]
        first = reference.get(p, present[0] if present else None)
        levels[p] = [first, *(v for v in present if v != first)]
    kept = [c for c in cells if all(c[p] in levels[p] for p in predictors)]
    return kept, levels, dropped


def _notes(withheld: int, dropped: list[str], levels: dict[str, list[str]]) -> dict:
    return {"levels": levels, "reference": {p: v[0] for p, v in levels.items()},
            "withheld_cells": withheld, "dropped_levels": dropped,
            "uncertainty": "normal approximation: se = sampling and noise; noise_se alone "
                           "is the error against the same fit without noise",
            "note": ("withheld cells (a noisy count under 5) are taken as 0 (a model's cell "
                     "withheld in any of its releases is left out), which biases the "
                     "coefficients of sparse levels; coarser bands avoid it")
            if withheld else ""}
