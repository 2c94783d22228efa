"""Executing an exact-aggregate plan (``plan.ExactPlan``): Polars here — the reference —
and the pieces every executor shares (the result's layout, its public groups).

An executor returns the raw groups it found: the group columns (text), ``count`` and, for
sums and means, ``sum_fixed`` (both 64-bit integers). ``complete`` then gives every
executor's answer one layout: the public groups in catalogue order with zeros for empty
ones, or the private groups present, sorted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import polars as pl

from sandbox.queries import bounded
from sandbox.queries.checks import predicate
from sandbox.queries.plan import BIN, COUNT, PATIENT, SUM, ExactPlan

KEPT = "_kept"  # the Polars engine's mask of rows not withdrawn, for one withdrawal set
KEPT_SETS = 4  # masks kept per view (one per purpose's current set is what is used)


class Executor(Protocol):
    """Runs exact-aggregate plans over a dataset's bounded view."""

    name: str

    def aggregate(self, plan: ExactPlan, view: str) -> pl.DataFrame: ...
    def build(self, directory: Path, metadata: dict, secret: bytes, target: Path) -> int: ...


def layout(plan: ExactPlan) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {c: pl.String for c in plan.group_columns}
    schema[COUNT] = pl.Int64
    if plan.sums:
        schema[SUM] = pl.Int64
    return schema


def complete(plan: ExactPlan, raw: pl.DataFrame) -> pl.DataFrame:
    """The executor's raw groups in the plan's one layout (see the module's text)."""
    schema = layout(plan)
    raw = raw.select([pl.col(c).cast(t) for c, t in schema.items()])
    values = [c for c in schema if c not in plan.group_columns]
    if not plan.grouped:
        if raw.height == 0:
            return pl.DataFrame({c: [0] for c in values}, schema={c: schema[c] for c in values})
        return raw.with_columns(pl.col(values).fill_null(0))
    if plan.key_values is None:  # private keys: only the groups present
        return raw.sort(list(plan.group_columns), nulls_last=True)
    keys = pl.DataFrame(plan.public_rows(), schema=list(plan.group_columns), orient="row")
    if keys.width == 0:
        keys = pl.DataFrame({c: [] for c in plan.group_columns})
    keys = keys.with_columns(pl.all().cast(pl.String))
    joined = keys.join(raw, on=list(plan.group_columns), how="left", nulls_equal=True)
    return joined.with_columns(pl.col(values).fill_null(0))


# -- Polars --------------------------------------------------------------------------------
def value_expr(plan: ExactPlan, clean: frozenset[str] = frozenset()) -> pl.Expr:
    """The clamped value: NaN (and null, which ``rows_read`` leaves out) become the low
    bound, as OpenDP's plan fills. (A column in ``clean`` is known to hold neither:
    filling it would be a pass for nothing.)"""
    v = plan.value
    assert v is not None
    col = pl.col(v.column).cast(pl.Float64)
    if v.column not in clean:
        col = col.fill_nan(v.low).fill_null(v.low)
    return col.clip(v.low, v.high)


def fixed_expr(plan: ExactPlan, clean: frozenset[str] = frozenset()) -> pl.Expr:
    """The clamped value in fixed point: times 2^bits (exact in binary), floored. (Over
    bounds that are not negative, the cast's truncation is that floor: one pass fewer.)"""
    assert plan.value is not None
    scaled = value_expr(plan, clean) * (2.0 ** plan.bits)
    return (scaled if plan.value.low >= 0 else scaled.floor()).cast(pl.Int64)


def bin_expr(plan: ExactPlan, clean: frozenset[str] = frozenset()) -> pl.Expr:
    """The bin's label: the number of inner edges at or below the clamped value."""
    assert plan.edges is not None
    value = value_expr(plan, clean)
    inner = plan.edges[1:-1]
    index = pl.sum_horizontal([(value >= e).cast(pl.Int32) for e in inner]) if inner \
        else pl.lit(0, dtype=pl.Int32)
    return index.replace_strict(list(range(len(plan.labels))), plan.labels,
                                return_dtype=pl.String)


def rows_read(plan: ExactPlan, frame: pl.LazyFrame,
              clean: frozenset[str] = frozenset()) -> pl.LazyFrame:
    """The rows a query reads: consented for the purpose, not excluded, filtered — only
    the columns the plan uses (said here: Polars 1.36 does not push the projection down
    through a cast count, and would copy every column of the filtered rows)."""
    rows = frame.select(plan.columns()).filter(pl.col(plan.consent))
    if plan.excluded:
        rows = rows.filter(~pl.col(PATIENT).is_in(sorted(plan.excluded)))
    for flt in plan.filters:
        rows = rows.filter(predicate(flt))
    if plan.value is not None and plan.value.column not in clean:
        # a row without the value (a patient with no such lab) is in no sum, mean, bin or
        # quantile, as in the gateway's OpenDP plan (``sandbox.gateway.engine``)
        rows = rows.filter(pl.col(plan.value.column).is_not_null())
    return rows


def aggregate_lazy(plan: ExactPlan, frame: pl.LazyFrame,
                   clean: frozenset[str] = frozenset()) -> pl.LazyFrame:
    """``plan``'s aggregates over ``frame``; ``clean``: columns with no null and no NaN."""
    rows = rows_read(plan, frame, clean)
    aggs = [pl.len().cast(pl.Int64).alias(COUNT)]
    if plan.sums:
        aggs.append(fixed_expr(plan, clean).sum().alias(SUM))
    if plan.edges is not None:
        rows = rows.with_columns(bin_expr(plan, clean).alias(BIN))
    if plan.grouped:
        return rows.group_by(list(plan.group_columns)).agg(aggs)
    return rows.select(aggs)


class PolarsExecutor:
    """The reference executor: Polars in this process, over each view's columns read into
    memory as queries first ask for them (text as Categorical; the rank key never) — a
    view never changes once built, so a column read is kept for the life of the process,
    and a view is held only as wide as the questions asked of it. ``in_memory=False``
    scans the Parquet files on every query instead."""

    name = "polars"

    def __init__(self, in_memory: bool = True) -> None:
        self.in_memory = in_memory
        self._columns: dict[str, dict[str, pl.Series]] = {}
        self._clean: dict[str, set[str]] = {}  # held columns with no null and no NaN
        self._kept: dict[str, OrderedDict[frozenset[str], pl.Series]] = {}
        self._lock = threading.Lock()

    def frame(self, view: str, columns: list[str]) -> pl.LazyFrame:
        """``columns`` of ``view``'s rows."""
        if not self.in_memory:
            return scan(view).select(columns)
        with self._lock:
            held = self._columns.setdefault(view, {})
            missing = [c for c in columns if c not in held]
            if missing:
                read = _read(view, missing)
                if held and read.height != len(next(iter(held.values()))):
                    raise RuntimeError(f"the view {view} changed while it was served")
                held.update({c: read[c] for c in missing})
                self._clean.setdefault(view, set()).update(
                    c for c in missing if _clean(read[c]))
            return pl.DataFrame([held[c] for c in columns]).lazy()

    def held(self, view: str) -> list[str]:
        """The columns of ``view`` held in memory."""
        with self._lock:
            return sorted(self._columns.get(view, {}))

    def kept(self, view: str, excluded: frozenset[str]) -> pl.Series:
        """Which of ``view``'s rows are not of the ``excluded`` patients: worked out once
        per withdrawal set (the first question after a withdrawal pays for it), then a
        mask every question of that set filters by, as cheap as the consent column."""
        with self._lock:
            known = self._kept.setdefault(view, OrderedDict())
            if excluded in known:
                known.move_to_end(excluded)
                return known[excluded]
        patients = self.frame(view, [PATIENT]).collect()[PATIENT]
        mask = (~patients.is_in(sorted(excluded))).alias(KEPT)
        with self._lock:
            known[excluded] = mask
            known.move_to_end(excluded)
            while len(known) > KEPT_SETS:
                known.popitem(last=False)
        return mask

    def aggregate(self, plan: ExactPlan, view: str) -> pl.DataFrame:
        if not (plan.excluded and self.in_memory):
            frame = self.frame(view, plan.columns())
            return complete(plan, aggregate_lazy(plan, frame, self._known_clean(view)).collect())
        mask = self.kept(view, plan.excluded)
        kept = replace(plan, excluded=frozenset())  # the mask excludes them
        frame = self.frame(view, kept.columns()).with_columns(mask).filter(pl.col(KEPT))
        return complete(plan, aggregate_lazy(kept, frame, self._known_clean(view)).collect())

    def _known_clean(self, view: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._clean.get(view, ()))

    def build(self, directory: Path, metadata: dict, secret: bytes, target: Path) -> int:
        return bounded.build_polars(directory, metadata, secret, target)


def _read(view: str, columns: list[str]) -> pl.DataFrame:
    """``columns`` of ``view``, a file at a time in one (sorted) order — so that columns read
    apart line up row for row — with text cast to categories as each file is read: a
    column of text (64-character pseudonyms, say) is never held whole as text. Integers
    are held in the narrowest type their values fit (a length of stay in 16 bits, not 64):
    lossless, and every query reads the column in a quarter of the memory traffic.
    (Floats keep their type: a narrower float would round.)"""
    parts = []
    for path in sorted(Path(view).rglob("*.parquet")):
        part = pl.read_parquet(path, columns=columns, hive_partitioning=False)
        text = [n for n, t in part.schema.items() if t == pl.String]
        parts.append(part.with_columns(pl.col(text).cast(pl.Categorical)))
    if not parts:
        return scan(view).select(columns).collect()
    read = pl.concat(parts, how="vertical")
    return read.with_columns(read[n].shrink_dtype() for n, t in read.schema.items()
                             if t.is_integer())


def _clean(column: pl.Series) -> bool:
    """Whether ``column`` holds no null and no NaN."""
    if column.null_count():
        return False
    return not (column.dtype.is_float() and column.is_nan().any())


def scan(view: str) -> pl.LazyFrame:
    """A bounded view's rows (its partitioned Parquet files)."""
    return pl.scan_parquet(f"{view}/**/*.parquet", hive_partitioning=False)
