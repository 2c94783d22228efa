"""Kaplan–Meier curves and a log-rank comparison from released counts — post-processing of
one differentially private release (patients by time bin and outcome), so they cost
nothing more.

For each time bin k (in order) the release gives the patients whose outcome came in it
(``d_k``) and those censored in it (``c_k``), each with OpenDP's integer Laplace noise of
one scale. At risk at the start of bin k: n_k = Σ_j (d_j + c_j) − Σ_{j<k} (d_j + c_j) (a
patient censored in a bin is at risk through it, as Kaplan–Meier counts a censoring at an
event's time). Survival at the end of bin k: S_k = Π_{j≤k} (1 − d_j / n_j). Where a bin
is wider than the times' unit, the life-table rule counts a patient censored in it at risk
for half of it (n_j − c_j / 2 in place of n_j): censorings fall through the bin, not at its
end.

Uncertainty adds two variances: the sampling one (Greenwood's formula,
S_k² Σ d_j / (n_j (n_j − d_j))) and the noise's, by the delta method — the derivative of
S_k with respect to each released count, taken numerically, times the noise's variance.
The log-rank test of two groups treats its statistic U = Σ (d1_k − E1_k) the same way: its
variance is the hypergeometric one plus the noise's. Both are normal approximations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

from sandbox.cohorts.rates import LAPLACE, variance_of

STEP = 0.5  # counts are moved by this much to take a numerical derivative
MIN_GROUP = 10  # patients a group needs for the log-rank test


def _clean(counts: Sequence[float | None]) -> list[float]:
    return [max(float(c), 0.0) if c is not None else 0.0 for c in counts]


def _curve(events: list[float], censored: list[float], middle: bool = False
           ) -> tuple[list[float], list[float]]:
    """At risk at the start of each bin, and survival at its end (``middle``: a censored
    patient is at risk for half of their bin, the life-table rule for wide bins)."""
    left = sum(events) + sum(censored)
    at_risk, survival, s = [], [], 1.0
    for d, c in zip(events, censored, strict=True):
        at_risk.append(left)
        exposed = left - c / 2 if middle else left
        if exposed > 0:
            s *= 1 - min(d / exposed, 1.0)
        survival.append(s)
        left -= d + c
    return at_risk, survival


def _noise(value: Callable[[list[float], list[float]], list[float]], events: list[float],
           censored: list[float], variance: float) -> list[float]:
    """The noise's variance in each number ``value(events, censored)`` gives:
    Σ over the released counts of (∂number/∂count)², times the noise's variance."""
    total = [0.0] * len(value(events, censored))
    for series in (events, censored):
        for i in range(len(series)):
            keep = series[i]
            series[i] = keep + STEP
            up = value(events, censored)
            series[i] = max(keep - STEP, 0.0)
            down = value(events, censored)
            series[i] = keep
            width = keep + STEP - max(keep - STEP, 0.0)
            for k, (a, b) in enumerate(zip(up, down, strict=True)):
                total[k] += ((a - b) / width) ** 2
    return [t * variance for t in total]


def kaplan_meier(events: Sequence[float | None], censored: Sequence[float | None],
                 scale: float, level: float = 0.95, middle: bool = False,
                 distribution: str = LAPLACE) -> list[dict]:
    """Per bin: at risk, events, censored, survival at its end and its ``level`` interval
    (``middle``: the life-table rule, for bins wider than the times' unit). A withheld
    count (None: under 5) is read as 0 and the row says so."""
    d, c = _clean(events), _clean(censored)
    at_risk, survival = _curve(d, c, middle)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    variance = variance_of(distribution, scale)
    noise = _noise(lambda e, cc: _curve(e, cc, middle)[1], d, c, variance)
    rows, greenwood = [], 0.0
    for k, (n, s) in enumerate(zip(at_risk, survival, strict=True)):
        exposed = n - c[k] / 2 if middle else n
        if exposed - d[k] > 0:
            greenwood += d[k] / (exposed * (exposed - d[k]))
        half = z * math.sqrt(s * s * greenwood + noise[k])
        rows.append({"at_risk": n, "events": d[k], "censored": c[k], "survival": s,
                     "low": max(0.0, s - half), "high": min(1.0, s + half),
                     "withheld": events[k] is None or censored[k] is None})
    return rows


def log_rank(first: tuple[Sequence[float | None], Sequence[float | None]],
             second: tuple[Sequence[float | None], Sequence[float | None]],
             scale: float, distribution: str = LAPLACE) -> dict:
    """The log-rank test of two groups' (events, censored) per bin: U, its variance (the
    hypergeometric one plus the noise's), χ² on one degree of freedom and its p-value —
    or, where a count was withheld or a group has fewer than ``MIN_GROUP`` patients,
    ``p_value`` None and the reason."""
    given = [*first, *second]
    if any(c is None for series in given for c in series):
        return {"p_value": None, "reason": "a count under 5 was withheld"}
    counts = [_clean(first[0]), _clean(first[1]), _clean(second[0]), _clean(second[1])]
    if min(sum(counts[0]) + sum(counts[1]), sum(counts[2]) + sum(counts[3])) < MIN_GROUP:
        return {"p_value": None, "reason": f"a group has fewer than {MIN_GROUP} patients"}
    bins = len(counts[0])

    def u_and_v(d1: list[float], c1: list[float], d2: list[float], c2: list[float]
                ) -> tuple[float, float]:
        n1, n2 = sum(d1) + sum(c1), sum(d2) + sum(c2)
        u = v = 0.0
        for k in range(bins):
            n, d = n1 + n2, d1[k] + d2[k]
            if n > 0:
                u += d1[k] - d * n1 / n
                if n > 1:
                    v += d * (n1 / n) * (n2 / n) * (n - d) / (n - 1)
            n1 -= d1[k] + c1[k]
            n2 -= d2[k] + c2[k]
        return u, v

    u, sampling = u_and_v(*counts)
    variance = variance_of(distribution, scale)
    noise = 0.0
    for a, b in ((0, 1), (2, 3)):
        def u_of(events: list[float], censored: list[float], a: int = a) -> list[float]:
            parts = list(counts)
            parts[a], parts[a + 1] = events, censored
            return [u_and_v(*parts)[0]]
        noise += _noise(u_of, counts[a], counts[b], variance)[0]
    total = sampling + noise
    chi2 = u * u / total if total > 0 else 0.0
    return {"u": u, "variance": total, "chi2": chi2,
            "p_value": math.erfc(math.sqrt(chi2 / 2))}
