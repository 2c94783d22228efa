"""Privacy loss in exact units: ε in millionths (micro-ε), δ in units of 10⁻¹⁸ (atto-δ).

A budget is a sum of many charges, and sums of binary floats drift (0.1 + 0.2 ≠ 0.3): a
ledger kept in floats needs a slack in its comparison, and a slack is a little ε an attacker
can spend once per query. The ledgers of the gateway and of the key service therefore keep
integers in these units, and every ε or δ a person sends is put on the grid first, rounded
down — the noise is then calibrated to exactly the amount that is charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

MICRO = 10**6  # units per ε
ATTO = 10**18  # units per δ
FEMTO = 10**15  # units per ρ (zero-concentrated DP)

# Decimal digits a float carries beyond the grid are noise of its arithmetic when they are
# this close to a grid point (0.7 - 0.4 = 0.29999999999999993 is 0.3, not 0.299999).
_JITTER = Decimal("1e-6")


def _units(value: float, per: int, up: bool) -> int:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a privacy loss: {value!r}")
    scaled = Decimal(repr(float(value))) * per
    return math.ceil(scaled - _JITTER) if up else math.floor(scaled + _JITTER)


def micro_epsilon(epsilon: float, *, up: bool = False) -> int:
    """ε in millionths, rounded down (``up``: rounded up, for amounts already spent)."""
    return _units(epsilon, MICRO, up)


def atto_delta(delta: float, *, up: bool = False) -> int:
    """δ in units of 10⁻¹⁸, rounded down (``up``: rounded up)."""
    return _units(delta, ATTO, up)


def femto_rho(rho: float) -> int:
    """ρ in units of 10⁻¹⁵, rounded up: a loss already incurred is never understated."""
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"not a privacy loss: {rho!r}")
    return math.ceil(Decimal(repr(float(rho))) * FEMTO)


def rho_of(units: int) -> float:
    return units / FEMTO


def epsilon_of(units: int) -> float:
    """The float nearest to ``units`` millionths of ε (0.3 for 300000, exactly as typed)."""
    return units / MICRO


def delta_of(units: int) -> float:
    return units / ATTO


def on_grid_epsilon(epsilon: float) -> float:
    """``epsilon`` put on the micro-ε grid (rounded down); refuses what rounds to nothing."""
    units = micro_epsilon(epsilon)
    if units == 0:
        raise ValueError("ε is counted in millionths: give at least 0.000001")
    return epsilon_of(units)


def on_grid_delta(delta: float) -> float:
    """``delta`` put on the 10⁻¹⁸ grid (rounded down); a positive δ must stay positive."""
    units = atto_delta(delta)
    if units == 0 and delta > 0:
        raise ValueError("δ is counted in units of 1e-18: give 0 or at least 1e-18")
    return delta_of(units)


@dataclass(frozen=True)
class Move:
    """A float column of an older database carried into an integer column of units."""

    column: str
    per: int  # MICRO or ATTO
    up: bool = False  # round up: amounts already spent are never understated

    def units(self, value: float | None) -> int:
        return _units(float(value or 0.0), self.per, self.up)
