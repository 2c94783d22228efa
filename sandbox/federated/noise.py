"""The noise on federated answers: each site's OpenDP share, and what the researcher can
expect of the total (the accuracy a preview shows).

A site adds ``noisy(plan, vector)`` to its normalised local vector before it encrypts; the
total the key service decrypts carries one such share per site, so its noise is the sum
of ``k`` independent Laplace draws — √k times one share's standard deviation, with the
exact (1 − α) bound from ``laplace_sum_bound`` (ADR 0011).
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp

from sandbox.errors import InputError, PolicyRefusal
from sandbox.federated import ckks
from sandbox.federated.plan import Plan

dp.enable_features("contrib")

ALPHA = 0.05
MAX_SHARES = 64
# A mean or regression is released only if each count it reveals is at least the minimum
# plus this margin: a group below the minimum then passes with probability < 1 in 1,000.
FALSE_PASS = 0.001


def noisy(plan: Plan, vector: np.ndarray) -> np.ndarray:
    """This site's share: ``vector`` (normalised) plus OpenDP Laplace noise at the plan's
    scale, whose privacy loss OpenDP checks — a patient moves the vectors of at most
    ``m`` sites by ``row_l1 · r`` each, and their ``m`` shares together stay within ε."""
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=plan.size)
    mechanism = dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=plan.scale)
    d_in = float(plan.row_l1 * plan.rows_per_patient)
    if mechanism.map(d_in) * plan.sites_per_patient > plan.spec.epsilon * (1 + 1e-9):
        raise PolicyRefusal("the noise would not keep this query within its ε")
    return np.asarray(mechanism([float(v) for v in vector]), dtype=np.float64)


def accuracy(plan: Plan) -> list[dict]:
    """Per slot: one share's noise scale, the number of shares in the total, the (1 − α)
    bound of their sum, the CKKS error bound at the largest value the slot can hold, and
    for a count the key service checks, the noisy count it needs."""
    ckks_error = ckks.error_bound(plan.limits())
    bound = laplace_sum_bound(1.0, plan.shares, ALPHA)
    margin = 0.0 if plan.spec.kind == "histogram" else \
        check_margin(((0, 1),), plan.scale, plan.shares)
    counted = {check[0][0] for check in plan.count_checks if len(check) == 1}
    out = []
    for i, (name, s) in enumerate(zip(plan.slots, plan.sensitivity, strict=True)):
        scale = s * plan.scale
        out.append({"slot": name, "noise_scale": scale, "shares": plan.shares,
                    "noise_std": scale * math.sqrt(2 * plan.shares),
                    "noise_bound_95": scale * bound, "ckks_error_bound": s * ckks_error,
                    # the noisy count this slot needs (withheld or refused below it)
                    "count_needed": plan.min_count + margin if i in counted else None})
    return out


def check_margin(check: tuple[tuple[int, int], ...], scale: float, shares: int) -> float:
    """How far above the minimum count a noisy count check must come out, so that a group
    truly below it passes with probability under ``FALSE_PASS``: the one-sided bound of
    the check's noise — the sum of ``shares`` Laplace(``scale``) draws in each of its
    slots (exact while at most ``MAX_SHARES`` draws; past that, a union bound over its
    slots)."""
    if scale <= 0:
        return 0.0
    draws = sum(abs(c) for _, c in check) * shares
    if draws <= MAX_SHARES and all(abs(c) == 1 for _, c in check):
        return laplace_sum_bound(scale, draws, 2 * FALSE_PASS)
    each = laplace_sum_bound(scale, shares, 2 * FALSE_PASS / len(check))
    return sum(abs(c) for _, c in check) * each


def laplace_sum_bound(scale: float, shares: int, alpha: float) -> float:
    """The t with P(|S| > t) = α for S the sum of ``shares`` independent Laplace(scale)
    draws. Its tail has a closed form (S is a difference of two Gamma(k, scale) draws):
    P(S > t) = e^(−T) Σⱼ cⱼ nⱼ! Σᵢ≤ₙⱼ Tⁱ/i!, T = t/scale, nⱼ = k−1−j,
    cⱼ = C(k−1+j, j) / (nⱼ! 2^(k+j)); solved for t by bisection."""
    if not 1 <= shares <= MAX_SHARES:
        raise InputError(f"between 1 and {MAX_SHARES} noise shares, not {shares}")
    k = shares

    def tail(t: float) -> float:  # P(|S| > t · scale)
        total = 0.0
        for j in range(k):
            n = k - 1 - j
            weight = math.comb(k - 1 + j, j) / 2 ** (k + j)
            total += weight * sum(t ** i / math.factorial(i) for i in range(n + 1))
        return 2 * math.exp(-t) * total

    low, high = 0.0, math.log(1 / alpha)
    while tail(high) > alpha:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if tail(middle) > alpha else (low, middle)
    return scale * high
