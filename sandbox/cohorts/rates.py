"""Proportions from released counts, with confidence intervals — post-processing of a
differentially private release, so it costs nothing more.

For each group, the release holds two noisy patient counts: with the outcome (``a``) and
without (``b``), each with OpenDP's integer Laplace noise of scale ``s`` (variance
2e^(-1/s)/(1 - e^(-1/s))², about 2s²). The proportion is p = a / (a + b). Its variance
adds the sampling variance, p(1 − p)/n, and the noise's, by the delta method:
Var(noise) · (a² + b²) / n⁴. The interval is p ± z·√(variance), within [0, 1] — a normal
approximation, stated as such in every result; where n is under 10 no interval is given.
"""

from __future__ import annotations

import math
from statistics import NormalDist

MIN_TOTAL = 10
LAPLACE = "Integer Laplace"  # the distribution of a count's noise unless Gaussian was asked


def noise_variance(scale: float) -> float:
    """The variance of OpenDP's integer (discrete) Laplace noise at ``scale``."""
    if scale <= 0:
        return 0.0
    r = math.exp(-1.0 / scale)
    return 2 * r / (1 - r) ** 2


def variance_of(distribution: str, scale: float) -> float:
    """The variance of a release's noise, from its preview's ``distribution`` and
    ``scale``: OpenDP's integer Laplace as above, its float Laplace 2s², a Gaussian s²."""
    if "Gaussian" in distribution:
        return scale * scale
    if distribution.startswith("Integer"):
        return noise_variance(scale)
    return 2 * scale * scale


def proportion(yes: float | None, no: float | None, scale: float, level: float = 0.95,
               distribution: str = LAPLACE) -> dict:
    """The proportion ``yes / (yes + no)`` of two noisy counts (noise of ``distribution``
    at ``scale``) and its ``level`` interval; None where a count was withheld or the total
    is too small to say."""
    if yes is None or no is None:
        return {"total": None, "proportion": None, "low": None, "high": None}
    yes, no = max(float(yes), 0.0), max(float(no), 0.0)
    total = yes + no
    if total < MIN_TOTAL:
        return {"total": total, "proportion": None, "low": None, "high": None}
    p = yes / total
    variance = p * (1 - p) / total + variance_of(distribution, scale) * (yes**2 + no**2) / total**4
    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * math.sqrt(variance)
    return {"total": total, "proportion": p, "low": max(0.0, p - half),
            "high": min(1.0, p + half)}
