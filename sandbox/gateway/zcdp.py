"""A grant that accounts in zero-concentrated DP (docs/adr/0017).

A grant accounts in pure ε, releases adding up their (ε, δ) (basic composition), until its
first release — if that release asks Gaussian noise, the grant accounts in zCDP from then
on: the δ of that release is the grant's conversion δ, fixed, and every release adds its ρ
to the grant's pool — a Gaussian release of (ε, δ) the largest ρ whose conversion at δ is
within ε (its measurement was calibrated to that), a Laplace release of ε its pure loss
converted to zCDP (ε²/2), both by OpenDP. The grant's spent ε is OpenDP's conversion of
the pool's ρ at the fixed δ, and each release is charged what that grows by. Because the
δ is fixed, the budget is a fixed ρ budget — the largest ρ whose conversion is within the
grant's ε — and a zCDP filter with a fixed ρ budget holds however each ρ was chosen from
earlier answers (Feldman & Zrnic 2021, Whitehouse et al. 2023), so the grant's loss is
its spent (ε, δ). The choice is made before anything is released, so it depends on no
answer. In a grant that has spent in pure ε, a Gaussian release is charged its own
(ε, δ), as any (ε, δ) release; in a zCDP grant a release whose loss is not pure or
Gaussian (private group keys) is refused.

All conversions are OpenDP's (``make_zCDP_to_approxDP``, ``make_fix_delta``,
``make_pureDP_to_zCDP``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import opendp.prelude as dp
from opendp.mod import Measurement, binary_search

from sandbox import units

dp.enable_features("contrib")


@lru_cache(maxsize=16)
def _converter(delta: float) -> Measurement:
    unit = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False),
                              dp.absolute_distance(T=float), 1.0)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(unit), delta)


def approximate(rho: float, delta: float) -> tuple[float, float]:
    """The (ε, δ) OpenDP's conversion gives a ρ-zCDP loss at ``delta``: that of a unit
    Gaussian at the sensitivity whose ρ is ``rho``, converted."""
    if rho <= 0:
        return 0.0, 0.0
    eps, dlt = _converter(delta).map(math.sqrt(2 * rho))
    return float(eps), float(dlt)


@lru_cache(maxsize=4096)
def rho_within(epsilon: float, delta: float) -> float:
    """The largest ρ whose conversion at ``delta`` is within ``epsilon``: a bound on the zCDP
    loss of any Gaussian release calibrated to (ε, δ), the conversion rising with ρ."""
    high = max(epsilon, 1.0)
    while approximate(high, delta)[0] <= epsilon:  # at a large δ the bound lies above ε
        high *= 2
    return binary_search(lambda r: approximate(r, delta)[0] <= epsilon, T=float,
                         bounds=(0.0, high))


@lru_cache(maxsize=4096)
def rho_of_pure(epsilon: float) -> float:
    """The zCDP loss OpenDP gives an ε-DP release: ε²/2."""
    unit = dp.m.make_laplace(dp.atom_domain(T=float, nan=False),
                             dp.absolute_distance(T=float), 1.0)
    return float(dp.c.make_pureDP_to_zCDP(unit).map(epsilon))


def release_rho(noise: str, epsilon: float, delta: float) -> float | None:
    """A release's zCDP loss: Gaussian at (ε, δ), or Laplace at ε (δ = 0); None for a
    Laplace release with δ (private group keys), whose loss is not zCDP."""
    if noise == "gaussian":
        return rho_within(epsilon, delta)
    return rho_of_pure(epsilon) if delta == 0 else None


@dataclass(frozen=True)
class Pool:
    """A grant's accounting as stored: its pool (ρ, and the fixed conversion δ — 0 while the
    grant accounts in pure ε) and what it has spent."""

    rho_femto: int
    delta_atto: int
    epsilon_spent_micro: int
    delta_spent_atto: int

    @property
    def open(self) -> bool:
        return self.delta_atto > 0

    @property
    def fresh(self) -> bool:
        return self.epsilon_spent_micro == 0 and self.delta_spent_atto == 0


@dataclass(frozen=True)
class Charge:
    """What a release costs a grant: the ε and δ charged, the ρ it adds to the pool and the
    δ it fixes for the pool (only the release that opens it)."""

    epsilon_micro: int
    delta_atto: int
    rho_femto: int = 0
    opens_delta_atto: int = 0


def price(noise: str, epsilon_micro: int, delta_atto: int, pool: Pool) -> Charge:
    """The charge of a release of (ε, δ) in units with ``noise`` to a grant as ``pool``
    says; raises ValueError for a release a zCDP grant cannot account."""
    epsilon, delta = units.epsilon_of(epsilon_micro), units.delta_of(delta_atto)
    if pool.open:
        rho = release_rho(noise, epsilon, delta)
        if rho is None:
            raise ValueError("this grant accounts in zCDP (its first release was Gaussian): a "
                             "Laplace release asking delta > 0 (such as private group keys) "
                             "cannot be accounted in it; ask delta 0 or Gaussian noise")
        added = units.femto_rho(rho) + 1  # a unit of margin over the float's rounding
        grows = _converted(pool.rho_femto + added, pool.delta_atto) - _converted(
            pool.rho_femto, pool.delta_atto)
        return Charge(grows, 0, added)
    if noise == "gaussian" and pool.fresh:
        added = units.femto_rho(release_rho(noise, epsilon, delta)) + 1
        return Charge(_converted(added, delta_atto), delta_atto, added, delta_atto)
    return Charge(epsilon_micro, delta_atto)


def _converted(rho_femto: int, delta_atto: int) -> int:
    """A pool's converted ε in micro-ε, rounded up."""
    if rho_femto == 0:
        return 0
    epsilon, _ = approximate(units.rho_of(rho_femto), units.delta_of(delta_atto))
    return units.micro_epsilon(epsilon, up=True)
