"""Models and a test of independence from released counts and sums of a cohort — all
post-processing of differentially private releases, so they cost nothing beyond them.

Predictors are categorical (a ``bands`` variable, ``exists``, sex, an age band): with them,
each patient's contribution to a regression's likelihood depends only on the patient's
cell — one combination of predictor values — so per-cell counts (and, for a linear model,
per-cell sums) are the fit's sufficient statistics. The gateway releases those with OpenDP;
the fit here is then exactly the unregularised fit on the patient-level frame, except for
the release's noise, and its uncertainty has two parts that add:

- sampling — the usual model-based covariance (inverse Fisher information for the logistic
  model, σ²(XᵀWX)⁻¹ for the linear one), from the noisy statistics;
- noise — by the delta method through the estimating equations: how far the coefficients
  move per unit of noise in each cell's statistics, times the noise's known variance.

``noise_se`` is the error against the unregularised fit on the same patients; ``se`` is
the error against the population's coefficients. Both are normal approximations, stated as
such in each result.

The test of independence uses the release's noise in its null distribution (a Monte Carlo
test in the manner of Gaboardi et al., "Differentially private chi-squared hypothesis
testing", ICML 2016): tables drawn under independence from the noisy margins, with fresh
noise of the release's scale, give the distribution of the statistic the release can show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

MAX_ITERATIONS = 50
DRAWS = 4000
MIN_DRAWS = 200
UNDETERMINED = ("the released statistics do not determine the model: a level of a predictor "
                "has no patients, its outcome never or always occurs, or two predictors say "
                "the same thing — merge that level with another or drop the predictor")


class FitError(ValueError):
    """The released statistics do not determine the model (a level without patients, or an
    outcome that never or always occurs in one)."""


def design(cells: Sequence[dict], predictors: Sequence[str],
           levels: dict[str, list[str]]) -> tuple[np.ndarray, list[str]]:
    """The design matrix of ``cells`` (one dict of predictor values each): an intercept and
    one indicator per level of each predictor but its first (the reference)."""
    names = ["intercept"] + [f"{p}={level}" for p in predictors for level in levels[p][1:]]
    rows = []
    for cell in cells:
        row = [1.0]
        for p in predictors:
            row.extend(1.0 if cell[p] == level else 0.0 for level in levels[p][1:])
        rows.append(row)
    return np.asarray(rows, dtype=float).reshape(len(rows), len(names)), names


def logistic(x: np.ndarray, yes: np.ndarray, no: np.ndarray, yes_variance: float,
             no_variance: float) -> dict:
    """The logistic model's coefficients from per-cell counts with and without the outcome
    (noisy, negatives taken as 0; their noise variances), by Newton–Raphson; their sampling
    and noise covariance."""
    yes, no = np.clip(yes, 0, None), np.clip(no, 0, None)
    total = yes + no
    beta = np.zeros(x.shape[1])
    for _ in range(MAX_ITERATIONS):
        p = _expit(x @ beta)
        information = x.T @ (x * (total * p * (1 - p))[:, None])
        step = _solve(information, x.T @ (yes - total * p))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    else:
        raise FitError(UNDETERMINED)
    p = _expit(x @ beta)
    information = x.T @ (x * (total * p * (1 - p))[:, None])
    inverse = _inverse(information)
    # ∂β/∂yes_c = I⁻¹x_c(1 − p_c), ∂β/∂no_c = −I⁻¹x_c p_c; both counts carry the noise
    middle = x.T @ (x * ((1 - p) ** 2 * yes_variance + p**2 * no_variance)[:, None])
    return {"coefficients": beta, "sampling": inverse, "noise": inverse @ middle @ inverse,
            "n": float(total.sum())}


def linear(x: np.ndarray, counts: np.ndarray, sums: np.ndarray, squares: np.ndarray,
           count_variance: float, sum_variance: float, square_variance: float = 0.0,
           spread: float = math.inf) -> dict:
    """The linear model's coefficients from per-cell patient counts, sums of the outcome and
    sums of its squares (noisy); σ² from the residual sum of squares — unless the noise of
    the sums of squares (``square_variance`` per cell) is too large to tell it, when σ² is
    ``spread``, the largest variance the bounded outcome can have ((high − low)²/4): the
    sampling error is then an upper bound, and ``residual_bounded`` says so."""
    counts = np.clip(counts, 0, None)
    gram = x.T @ (x * counts[:, None])
    inverse = _inverse(gram)
    beta = inverse @ (x.T @ sums)
    fitted = x @ beta
    n = float(counts.sum())
    residual = float(squares.sum() - beta @ (x.T @ sums))
    unclear = residual <= 0 or math.sqrt(len(counts) * square_variance) > 0.5 * residual
    bounded = unclear and math.isfinite(spread)
    sigma2 = spread if bounded else min(max(residual, 0.0) / max(n - x.shape[1], 1.0),
                                        spread)
    # ∂β/∂sum_c = A⁻¹x_c, ∂β/∂count_c = −A⁻¹x_c·fitted_c
    middle = x.T @ (x * (sum_variance + fitted**2 * count_variance)[:, None])
    return {"coefficients": beta, "sampling": sigma2 * inverse,
            "noise": inverse @ middle @ inverse, "n": n, "residual_variance": sigma2,
            "residual_bounded": bounded}


def table(fit: dict, names: list[str], level: float, exponentiate: bool = False
          ) -> list[dict]:
    """One row per coefficient: estimate, standard errors and a ``level`` interval (and the
    odds ratio with its interval where ``exponentiate``)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    rows = []
    for i, name in enumerate(names):
        estimate = float(fit["coefficients"][i])
        noise = math.sqrt(max(float(fit["noise"][i, i]), 0.0))
        se = math.sqrt(max(float(fit["sampling"][i, i]), 0.0) + noise**2)
        row = {"term": name, "estimate": estimate, "se": se, "noise_se": noise,
               "low": estimate - z * se, "high": estimate + z * se}
        if exponentiate:
            row |= {"odds_ratio": math.exp(estimate), "or_low": math.exp(row["low"]),
                    "or_high": math.exp(row["high"])}
        rows.append(row)
    return rows


def independence(observed: np.ndarray, scale: float, seed: int, draws: int = DRAWS,
                 withhold_below: int = 0, gaussian: bool = False) -> dict:
    """Test that the rows and columns of a noisy contingency table (integer Laplace noise of
    ``scale``, or integer Gaussian with ``gaussian``) are independent: Pearson's statistic
    and its Monte Carlo p-value under independence with the release's noise; Cramér's V as
    the effect size.

    Cells withheld for a noisy count under ``withhold_below`` (read as 0) would bias the
    statistic: it is then taken over the rows and columns without one (independence holds
    in any part of a table), and each simulated table goes through the same steps — noise,
    withholding, the same choice of rows and columns — so the null is the distribution of
    what the procedure shows."""
    observed = np.clip(np.asarray(observed, dtype=float), 0, None)
    if observed.shape[0] < 2 or observed.shape[1] < 2 or observed.sum() < 1:
        raise FitError("a test of independence needs two rows, two columns and patients")
    kept_rows, kept_columns = _shown(observed) if withhold_below else (
        list(range(observed.shape[0])), list(range(observed.shape[1])))
    table = observed[np.ix_(kept_rows, kept_columns)]
    rows, columns = table.shape
    about = {"test": "chi-square (Monte Carlo under independence, with the release's noise)",
             "rows_kept": kept_rows, "columns_kept": kept_columns, "n": float(table.sum()),
             "df": max(rows - 1, 0) * max(columns - 1, 0)}
    if rows < 2 or columns < 2 or table.sum() < 1:
        return about | {"statistic": None, "p_value": None, "cramers_v": None, "draws": 0,
                        "reason": "withheld cells leave fewer than two rows or columns"}
    statistic = float(_pearson(table[None])[0])
    null = _null(observed, scale, np.random.default_rng(seed), draws, withhold_below,
                 gaussian)
    if len(null) < MIN_DRAWS:
        return about | {"statistic": statistic, "p_value": None, "cramers_v": None,
                        "draws": len(null), "reason": "too few simulated tables keep two "
                        "rows and columns of shown cells"}
    exceed = int(np.sum(null >= statistic))
    return about | {"statistic": statistic, "p_value": (1 + exceed) / (1 + len(null)),
                    "draws": len(null), "cramers_v": math.sqrt(
                        statistic / (table.sum() * (min(rows, columns) - 1)))}


def _null(observed: np.ndarray, scale: float, rng: np.random.Generator, draws: int,
          withhold_below: int, gaussian: bool = False) -> np.ndarray:
    """Pearson's statistic of tables drawn under independence from ``observed``'s margins,
    noised, withheld and cut down as the release and the test were."""
    if withhold_below:
        observed = _filled(observed, withhold_below)
    n = observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0)).ravel() / n**2
    simulated = rng.multinomial(round(float(n)), expected, size=draws).astype(float)
    if scale > 0 and gaussian:
        # a simulation of the release's noise, not a release: the rounded normal has the
        # discrete Gaussian's spread for the scales a release uses (σ ≥ 1)
        simulated += np.round(rng.normal(0.0, scale, simulated.shape))
    elif scale > 0:
        success = -math.expm1(-1.0 / scale)
        simulated += rng.geometric(success, simulated.shape) - rng.geometric(
            success, simulated.shape)
    tables = np.clip(simulated, 0, None).reshape(draws, *observed.shape)
    if not withhold_below:
        return _pearson(tables)
    tables[tables < withhold_below] = 0
    out = []
    for one in tables:
        kept = _shown(one)
        if len(kept[0]) >= 2 and len(kept[1]) >= 2:
            out.append(float(_pearson(one[np.ix_(*kept)][None])[0]))
    return np.asarray(out)


def _filled(observed: np.ndarray, withhold_below: int) -> np.ndarray:
    """The table with each withheld cell (0) read as what independence expects of it,
    below ``withhold_below`` (it was withheld): margins less biased towards the shown."""
    withheld = observed == 0
    filled = observed.copy()
    for _ in range(20):
        expected = np.outer(filled.sum(1), filled.sum(0)) / filled.sum()
        filled = np.where(withheld, np.clip(expected, 0, withhold_below - 1), observed)
    return filled


def _shown(observed: np.ndarray) -> tuple[list[int], list[int]]:
    """The largest part of the table without a withheld (zero) cell among three ways of
    dropping rows and columns: greedily (the largest share of such cells first), columns
    only, rows only."""
    def drop(way: str) -> tuple[list[int], list[int]]:
        rows, columns = list(range(observed.shape[0])), list(range(observed.shape[1]))
        while rows and columns:
            zero = observed[np.ix_(rows, columns)] == 0
            if not zero.any():
                break
            by_row, by_column = zero.sum(1), zero.sum(0)
            if way == "rows":
                rows = [r for r, z in zip(rows, by_row, strict=True) if not z]
            elif way == "columns":
                columns = [c for c, z in zip(columns, by_column, strict=True) if not z]
            elif by_row.max() * len(rows) > by_column.max() * len(columns):
                del rows[int(by_row.argmax())]
            else:
                del columns[int(by_column.argmax())]
        return rows, columns

    ways = [drop(way) for way in ("greedy", "columns", "rows")]
    usable = [w for w in ways if len(w[0]) >= 2 and len(w[1]) >= 2] or ways
    return max(usable, key=lambda w: len(w[0]) * len(w[1]))


def _pearson(tables: np.ndarray) -> np.ndarray:
    """Pearson's statistic of each table of a stack (cells expecting none left out)."""
    n = tables.sum(axis=(1, 2))[:, None, None]
    expected = tables.sum(2)[:, :, None] * tables.sum(1)[:, None, :] / np.where(n > 0, n, 1)
    inside = expected > 0
    terms = np.where(inside, (tables - expected) ** 2 / np.where(inside, expected, 1), 0.0)
    return terms.sum(axis=(1, 2))


def _expit(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -40, 40)))


def _solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(matrix, vector)
    except np.linalg.LinAlgError:
        raise FitError(UNDETERMINED) from None


def _inverse(matrix: np.ndarray) -> np.ndarray:
    if np.linalg.cond(matrix) > 1e12:
        raise FitError(UNDETERMINED)
    return np.linalg.inv(matrix)
