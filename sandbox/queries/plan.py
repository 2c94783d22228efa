"""The exact-aggregate plan: what a checked query asks of the rows, with no privacy in it.

A plan is compiled from a ``QuerySpec`` that ``checks.check_spec`` has accepted, the
dataset's public metadata and the grant's purpose. It names columns only from the catalog
and carries filter values as literals, so an executor (``exact_polars``, ``exact_spark``)
turns it into DataFrame operations — never into SQL text built from input. Every number it
yields is an integer: row counts, and sums in fixed point (each clamped value scaled by
2^bits and floored to a 64-bit integer before adding), so that any two engines that follow
the plan agree bit for bit whatever order they add in. The noise is not here: the gateway
adds OpenDP's noise to these exact numbers (``sandbox.gateway.noise``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from sandbox.queries.checks import bin_labels
from sandbox.queries.spec import Filter, QuerySpec

COUNT = "count"
SUM = "sum_fixed"
BIN = "bin"
PATIENT = "pseudonym"
# The largest fixed-point sum allowed, with room for OpenDP's integer noise on top.
SUM_LIMIT = 2**60
MAX_BITS = 32

# Kinds whose exact part is counts and sums; quantiles score candidates inside OpenDP,
# which an external engine cannot do exactly (docs/adr/0013).
EXACT_KINDS = ("count", "sum", "mean", "histogram")


def consent_column(purpose: str) -> str:
    return f"_consent_{purpose}"


@dataclass(frozen=True)
class Value:
    """The numeric field a sum, mean or histogram reads: nulls (and NaN) become ``low``,
    then the value is clamped to [low, high] — as OpenDP's plan does."""

    column: str
    low: float
    high: float


@dataclass(frozen=True)
class ExactPlan:
    """One query's exact aggregates. ``keys`` are the group columns; ``key_values`` every
    public combination of their categories (so empty groups appear with zeros), or None
    for private keys (only the groups present are returned). ``edges`` are a histogram's
    bin edges, its bin labels those of ``checks.bin_labels``. ``excluded``: pseudonyms
    whose rows no query of this purpose may read (withdrawals applied at query time)."""

    consent: str
    filters: tuple[Filter, ...]
    keys: tuple[str, ...] = ()
    key_values: tuple[tuple[str, ...], ...] | None = ()
    edges: tuple[float, ...] | None = None
    value: Value | None = None
    bits: int = 0
    excluded: frozenset[str] = field(default_factory=frozenset)

    @property
    def grouped(self) -> bool:
        return bool(self.keys) or self.edges is not None

    @property
    def group_columns(self) -> tuple[str, ...]:
        return (BIN,) if self.edges is not None else self.keys

    @property
    def sums(self) -> bool:
        return self.value is not None and self.edges is None

    @property
    def labels(self) -> list[str]:
        return bin_labels(list(self.edges)) if self.edges is not None else []

    @property
    def unit(self) -> float:
        """The value of one fixed-point step."""
        return math.ldexp(1.0, -self.bits)

    def fixed_bounds(self) -> tuple[int, int]:
        """The fixed-point images of ``value``'s clamp bounds: every summed term lies
        between them."""
        assert self.value is not None
        return (math.floor(math.ldexp(self.value.low, self.bits)),
                math.floor(math.ldexp(self.value.high, self.bits)))

    def sum_sensitivity(self, d_in: int) -> int:
        """How far ``d_in`` added or removed rows can move one fixed-point sum (or the
        L1 norm of a vector of them)."""
        low, high = self.fixed_bounds()
        return d_in * max(abs(low), abs(high))

    def columns(self) -> list[str]:
        """The view's columns this plan reads, each once."""
        used = [self.consent, *(f.field for f in self.filters), *self.keys,
                *([self.value.column] if self.value else []),
                *([PATIENT] if self.excluded else [])]
        return list(dict.fromkeys(used))

    def public_rows(self) -> list[tuple[str, ...]]:
        """Every group a public-keys result has, in order."""
        if self.edges is not None:
            return [(label,) for label in self.labels]
        return list(self.key_values or [()])


def fixed_point_bits(max_rows: int, low: float, high: float, noise_scale: float = 0.0) -> int:
    """The most fractional bits (at most 32) such that a sum over ``max_rows`` clamped
    values, and OpenDP's integer noise at ``noise_scale`` (in value units) on top, stay
    within 64-bit integers."""
    largest = max(abs(low), abs(high), 1e-300) * max(max_rows, 1)
    # OpenDP's discrete Laplace exceeds 64 scales with probability e^-64.
    room = largest + 64 * noise_scale
    return max(-MAX_BITS, min(MAX_BITS, math.floor(math.log2(SUM_LIMIT / room))))


def compile_plan(spec: QuerySpec, fields: dict[str, dict], purpose: str, max_rows: int,
                 excluded: frozenset[str] = frozenset(), noise_scale: float = 0.0
                 ) -> ExactPlan:
    """The exact-aggregate plan of a checked ``spec``; ``max_rows`` bounds the rows a
    query can read (the dataset's margin), ``noise_scale`` the sum's noise in value units
    (both only size the fixed point)."""
    if spec.kind not in EXACT_KINDS:
        raise ValueError(f"{spec.kind} has no exact-aggregate plan")
    value = None
    edges = None
    if spec.kind == "histogram":
        edges = tuple(float(e) for e in spec.bins)
        value = Value(spec.field, edges[0], edges[-1])
    elif spec.kind in ("sum", "mean"):
        low, high = spec.bounds or fields[spec.field]["bounds"]
        value = Value(spec.field, float(low), float(high))
    keys = tuple(spec.group_by)
    if spec.keys == "private":
        key_values = None
    else:
        key_values = tuple(itertools.product(*(fields[k]["categories"] for k in keys)))
    bits = 0
    if value is not None and edges is None:
        bits = fixed_point_bits(max_rows, value.low, value.high, noise_scale)
    return ExactPlan(consent=consent_column(purpose), filters=tuple(spec.filters), keys=keys,
                     key_values=key_values, edges=edges, value=value, bits=bits,
                     excluded=frozenset(excluded))
