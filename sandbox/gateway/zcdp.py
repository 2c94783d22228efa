"""A grant's zero-concentrated pool: its Gaussian releases composed in zCDP (docs/adr/0017).

A Gaussian release asks (ε, δ); OpenDP calibrated its noise so that its own zCDP loss ρ,
converted at δ, is within ε. Charged alone, k such releases would cost k ε. Composed, their
ρ add up and their δ too, and the pool's loss is OpenDP's conversion of the summed ρ at the
summed δ — for many releases far less than the sum of their ε. So the ledger keeps each
grant's pool (ρ and δ, in exact units) and charges a Gaussian release what the pool's
converted ε grows by when the release joins it (``join``): the charges of the pool's
releases then add up to at least the pool's converted ε, and the grant's spent ε —
Laplace releases plus the pool's charges — is a bound on the whole grant's loss. A release
that would cost the pool more than its own ε (which the conversion never asks for a pool
of releases at the same δ, but a rule must not rely on it) is charged its own (ε, δ) and
stays out of the pool.

All conversions are OpenDP's (``make_zCDP_to_approxDP``, ``make_fix_delta``).
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
    return binary_search(lambda r: approximate(r, delta)[0] <= epsilon, T=float,
                         bounds=(0.0, epsilon))


@dataclass(frozen=True)
class Join:
    """What a Gaussian release costs a grant: the ε and δ charged, and the ρ and δ it adds
    to the pool (0 and 0 when it is charged on its own)."""

    epsilon_micro: int
    delta_atto: int
    rho_femto: int
    pooled_delta_atto: int

    @property
    def pooled(self) -> bool:
        return self.rho_femto > 0


def join(epsilon_micro: int, delta_atto: int, pool_rho_femto: int,
         pool_delta_atto: int) -> Join:
    """The charge of a Gaussian release of (ε, δ) (in units) to a grant whose pool holds
    ``pool_rho_femto`` and ``pool_delta_atto``."""
    epsilon, delta = units.epsilon_of(epsilon_micro), units.delta_of(delta_atto)
    rho = units.femto_rho(rho_within(epsilon, delta))
    before = _converted(pool_rho_femto, pool_delta_atto)
    after = _converted(pool_rho_femto + rho, pool_delta_atto + delta_atto)
    grows = max(after - before, 0)
    if grows > epsilon_micro:
        return Join(epsilon_micro, delta_atto, 0, 0)
    return Join(grows, delta_atto, rho, delta_atto)


def _converted(rho_femto: int, delta_atto: int) -> int:
    """A pool's converted ε in micro-ε, rounded up."""
    if rho_femto == 0:
        return 0
    epsilon, _ = approximate(units.rho_of(rho_femto), units.delta_of(delta_atto))
    return units.micro_epsilon(epsilon, up=True)
