"""Sampling pieces of the synthetic extract: the calendar it spans, weighted choices,
dates, ID numbers with valid check characters, mobile numbers and names."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from sandbox.data.idcard import CHECK_CHARS, WEIGHTS
from sandbox.data.reference import population as ref

REFERENCE_DATE = date(2025, 12, 31)
FIRST_VISIT_DATE = date(2019, 1, 1)
MAX_AGE = 100
EPOCH = date(1970, 1, 1)
REF_DAY = (REFERENCE_DATE - EPOCH).days
FIRST_DAY = (FIRST_VISIT_DATE - EPOCH).days


class RunState:
    """Counters and the ID numbers already issued, carried across chunks."""

    def __init__(self) -> None:
        self.visits = 0
        self.inpatient = 0
        self.issued = np.empty(0, dtype=np.int64)


def choice(rng: np.random.Generator, weights: np.ndarray | list[float], size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=size, p=p / p.sum())


def choice_by_group(rng: np.random.Generator, groups: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each element, draw an index from the probability row ``table[group]``.

    Inverse-CDF per element: one searchsorted over a flattened cumulative table, so the
    cost is one vectorised pass whatever the number of groups."""
    cdf = np.cumsum(table, axis=1)
    cdf /= cdf[:, -1:]
    width = table.shape[1]
    offsets = np.arange(table.shape[0]) * 1.0
    flat = (cdf + offsets[:, None]).ravel()
    u = rng.random(len(groups)) * (1 - 1e-12) + groups
    return np.searchsorted(flat, u, side="right") - groups * width


def lookup(values: tuple | list, index: np.ndarray) -> pl.Series:
    return pl.Series(values=list(values), dtype=pl.String).gather(index)


def dates(days: np.ndarray) -> pl.Series:
    return pl.Series(days.astype(np.int32)).cast(pl.Date)


def id_numbers(rng: np.random.Generator, region: np.ndarray, birth_days: np.ndarray,
                male: np.ndarray, state: RunState) -> pl.Series:
    births = dates(birth_days).dt.strftime("%Y%m%d").cast(pl.Int64).to_numpy()
    base = region.astype(np.int64) * 10**11 + births * 1000
    seq = rng.integers(0, 500, size=len(base)) * 2 + male.astype(np.int64)
    first17 = base + seq
    # Sequence numbers are unique per (division, birth date): redraw any collision.
    for _ in range(100):
        seen = np.concatenate([state.issued, first17])
        _, first_pos, _counts = np.unique(seen, return_index=True, return_counts=True)
        dup = np.ones(len(seen), dtype=bool)
        dup[first_pos] = False
        dup = dup[len(state.issued):]
        if not dup.any():
            break
        seq[dup] = rng.integers(0, 500, size=int(dup.sum())) * 2 + male[dup]
        first17 = base + seq
    state.issued = np.concatenate([state.issued, first17])
    digits = (first17[:, None] // 10 ** np.arange(16, -1, -1)) % 10
    check = (digits @ np.array(WEIGHTS)) % 11
    return pl.Series(first17).cast(pl.String) + lookup(tuple(CHECK_CHARS), check)


def phones(rng: np.random.Generator, size: int) -> pl.Series:
    prefixes = [p for p in range(130, 200) if p // 10 in (13, 15, 17, 18, 19) and p != 154]
    head = np.asarray(prefixes)[rng.integers(0, len(prefixes), size)]
    tail = rng.integers(0, 10**8, size)
    return pl.Series(head * 10**8 + tail).cast(pl.String)


def names(rng: np.random.Generator, male: np.ndarray, surname: np.ndarray | None = None
           ) -> tuple[pl.Series, np.ndarray]:
    size = len(male)
    if surname is None:
        surname = choice(rng, [w for _, w in ref.SURNAMES], size)
    pool_m, pool_f = ref.GIVEN_MALE, ref.GIVEN_FEMALE
    first = np.where(male, rng.integers(0, len(pool_m), size), rng.integers(0, len(pool_f), size))
    second = np.where(male, rng.integers(0, len(pool_m), size), rng.integers(0, len(pool_f), size))
    given1 = pl.Series(np.where(male, np.asarray(pool_m)[first % len(pool_m)],
                                np.asarray(pool_f)[first % len(pool_f)]))
    given2 = pl.Series(np.where(male, np.asarray(pool_m)[second % len(pool_m)],
                                np.asarray(pool_f)[second % len(pool_f)]))
    two = pl.Series(rng.random(size) < 0.7)
    surnames = lookup([s for s, _ in ref.SURNAMES], surname)
    names = pl.DataFrame({"s": surnames, "g1": given1, "g2": given2, "two": two}).select(
        pl.concat_str("s", "g1", pl.when("two").then("g2").otherwise(pl.lit("")))
    ).to_series()
    return names, surname
