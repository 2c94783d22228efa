"""The noise scale of a query, found without a search where the mechanism allows it.

Every measurement the engine builds adds Laplace-type noise (discrete Laplace on counts,
Laplace on sums, the exponential mechanism on quantile scores) at one global scale ``s``;
each spends sensitivity / ``s`` of ε, and their sum is what OpenDP's ``map`` reports. So
ε(s) = ε(1) / s: one call of ``map`` at ``s`` = 1 gives the constant, and the scale for a
budget ε is ε(1) / ε. The answer is then checked with OpenDP's own ``map`` — nudged up by
a few ulps if rounding puts it a hair over ε — and if the loss is not of that form (a
mechanism added later that is not), the search OpenDP provides is used instead. Privacy
is decided by ``map`` either way; the closed form only saves the search's ~40 builds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from opendp.mod import binary_search

NUDGES = 8  # how many ulp-sized steps up the closed form may take before searching


def scale_for(epsilon_at: Callable[[float], float], epsilon: float) -> float:
    """The smallest scale (up to rounding) whose loss ``epsilon_at(scale)`` is at most
    ``epsilon``, where ``epsilon_at`` builds the measurement at a scale and maps it."""
    unit = epsilon_at(1.0)
    if unit > 0 and math.isfinite(unit):
        scale = unit / epsilon
        for _ in range(NUDGES):
            spent = epsilon_at(scale)
            if spent <= epsilon:
                if epsilon_at(scale * (1 - 1e-6)) > epsilon:  # tight: the loss is c / s
                    return scale
                break
            scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    return binary_search(lambda s: epsilon_at(s) <= epsilon, T=float)
