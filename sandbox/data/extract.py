"""The raw extract as the spec describes it: tables opened and checked against the spec
without reading a row, then streamed through the spec's joins and derived columns in buckets.

Every column, type and join key is checked before any data is read. A join needs all rows
of one key together, so both sides are first written to buckets by a hash of the key and
joined one bucket at a time: no side of a join is ever held whole, however large the
extract. Only the columns onboarding uses are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from sandbox.data.spec import FieldSpec, Spec
from sandbox.data.spill import Spill, Workspace, hashed
from sandbox.data.tables import Source, csv_types, open_table
from sandbox.errors import InputError, SpecError

ROW = "_row"  # position of a row in the base table: the published order

_TYPES: dict[str, tuple[type[pl.DataType], ...]] = {
    "string": (pl.String,),
    "integer": (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                pl.UInt64),
    "float": (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64),
    "date": (pl.Date, pl.Datetime),
    "boolean": (pl.Boolean,),
}


@dataclass(frozen=True)
class JoinPlan:
    """One raw table joined one-to-one onto the rows, with only the columns it adds."""

    table: str
    on: str
    right: Source


@dataclass(frozen=True)
class Extract:
    """A checked extract: the base table, its joins and derived columns, and consent."""

    base: Source  # with ROW
    rows: int  # in the base table
    largest: int  # rows of the largest table read
    joins: list[JoinPlan]
    derive: list[pl.Expr]
    consent: Source  # with "_crow", its row number


def open_extract(raw: Path, spec: Spec) -> Extract:
    """Check the extract in ``raw`` against ``spec`` from table schemas alone."""
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(f"raw extract directory {raw} not found")
    needed, types = _needed(spec), csv_types(spec)
    base_table = open_table(raw, spec.source.table, types)
    base = base_table.scan()
    schema = base.collect_schema()
    _require(spec.source.table, schema, [spec.source.patient_column], "source.patient_column")
    joined = dict(schema)
    joins = []
    sizes = [base_table.count()]
    for join in spec.source.joins:
        right_table = open_table(raw, join.table, types)
        right = right_table.scan()
        right_schema = right.collect_schema()
        sizes.append(right_table.count())
        _require(join.table, right_schema, [join.on, *join.where], f"join with {join.table}")
        _require(spec.source.table, pl.Schema(joined), [join.on], f"join on {join.on}")
        if right_schema[join.on] != joined[join.on]:
            raise SpecError(f"join with {join.table} on {join.on!r}: the key is "
                            f"{joined[join.on]} in the extract but {right_schema[join.on]} "
                            f"in {join.table}")
        adds = [c for c in right_schema.names() if c not in joined]
        joined.update((c, right_schema[c]) for c in adds)
        joins.append(JoinPlan(join.table, join.on, Source(
            right_table, _where(join.where, [join.on, *(c for c in adds
                                                                   if c in needed)]))))
    schema = pl.Schema(joined)
    derive = []
    for step in spec.derive:
        _require("the joined extract", schema, step.args, f"derive {step.name}")
        expr = _derive(step.op, step.args, schema, step.name)
        derive.append(expr)
        schema = pl.LazyFrame(schema=schema).with_columns(expr).collect_schema()

    final = {spec.source.patient_column, spec.pseudonym.source, spec.dataset.year_column}
    final |= {f.source_column for f in spec.fields}
    _require("the joined extract", schema, sorted(final - {None}), "spec")
    _require("the joined extract", schema, spec.identifiers.name_columns,
             "identifiers.name_columns")
    for field in spec.fields:
        _check_type(field, schema[field.source_column])
    if spec.dataset.year_column is not None and not isinstance(
            schema[spec.dataset.year_column], pl.Date | pl.Datetime):
        raise SpecError(f"dataset.year_column {spec.dataset.year_column!r} must be a date")

    c = spec.consent
    consent_table = open_table(raw, c.table, types)
    consent = consent_table.scan()
    consent_schema = consent.collect_schema()
    sizes.append(consent_table.count())
    optional = [name for name in (c.consented_by, c.withdrawn_at) if name is not None]
    _require(c.table, consent_schema, [c.on, *c.purposes, *optional], "consent")
    if consent_schema[c.on] != schema[spec.source.patient_column]:
        raise SpecError(f"consent.on {c.on!r} is {consent_schema[c.on]} but "
                        f"source.patient_column is {schema[spec.source.patient_column]}")
    columns = [pl.col(c.on).alias("_pid"), *c.purposes,
               (pl.col(c.consented_by) if c.consented_by else pl.lit(None, pl.String))
               .alias("consented_by"),
               (pl.col(c.withdrawn_at) if c.withdrawn_at else pl.lit(None)).cast(pl.Date)
               .alias("withdrawn_at"), "_crow"]
    consent_source = Source(consent_table, lambda piece, start: (
        piece.with_row_index("_crow", offset=start).select(columns)))
    kept = [c for c in base.collect_schema().names() if c in needed]
    base_source = Source(base_table, lambda piece, start: (
        piece.select(kept).with_row_index(ROW, offset=start)))
    return Extract(base_source, sizes[0], max(sizes), joins, derive, consent_source)


def in_parquet(extract: Extract, work: Workspace) -> Extract:
    """The extract with its CSV tables converted to Parquet in the run's workspace."""
    def convert(source: Source) -> Source:
        return source.in_parquet(work.root / "raw", work.limit)

    return replace(extract, base=convert(extract.base), consent=convert(extract.consent),
                   joins=[replace(j, right=convert(j.right)) for j in extract.joins])


def rows(extract: Extract, work: Workspace) -> Iterator[pl.DataFrame]:
    """The joined, derived rows, a bucket at a time (each row exactly once, in no order;
    ``_row`` says where it came from)."""
    rights = [(join, _partition(join, work)) for join in extract.joins]
    batches = extract.base.chunks(work.limit)
    schema = extract.base.schema()
    start = 0
    while start < len(rights):
        # consecutive joins on one key share one partitioning of the rows
        key = rights[start][0].on
        stop = start
        while stop < len(rights) and rights[stop][0].on == key:
            stop += 1
        left = work.spill(f"rows-by-{key}", schema=schema)
        for batch in batches:
            left.add(batch, hashed(pl.col(key), work.count))
        left.close()
        batches = _joined(left, rights[start:stop])
        for _, right in rights[start:stop]:
            schema = pl.Schema({**schema, **right.schema})
        start = stop
    for batch in batches:
        for expr in extract.derive:  # in order: a derived column may use an earlier one
            batch = batch.with_columns(expr)
        yield batch


def _joined(left: Spill, rights: list[tuple[JoinPlan, Spill]]) -> Iterator[pl.DataFrame]:
    for index in range(left.count):
        frame = left.read(index)
        for join, right in rights:
            frame = frame.join(right.read(index), on=join.on, how="left")
        yield frame
    left.remove()
    for _, right in rights:
        right.remove()


def _partition(join: JoinPlan, work: Workspace) -> Spill:
    """The right side of a join in buckets; refused unless each key occurs once."""
    right = work.spill(f"{join.table}-by-{join.on}", schema=join.right.schema())
    for batch in join.right.chunks(work.limit):
        right.add(batch, hashed(pl.col(join.on), work.count))
    right.close()
    for index in range(right.count):
        if right.read(index, [join.on]).get_column(join.on).is_duplicated().any():
            right.remove()
            raise SpecError(f"join with {join.table} on {join.on!r} is not one-to-one; "
                            f"narrow it with a 'where' filter")
    return right


def _needed(spec: Spec) -> set[str]:
    """Every raw column onboarding reads (a superset is harmless: it only costs reading)."""
    needed = {spec.source.patient_column, spec.pseudonym.source, spec.dataset.year_column}
    needed |= {f.source_column for f in spec.fields}
    needed |= set(spec.identifiers.name_columns)
    needed |= {join.on for join in spec.source.joins}
    needed |= {arg for step in spec.derive for arg in step.args}
    return needed - {None}


def _where(where: dict, columns: list[str]) -> Callable[[pl.LazyFrame, int], pl.LazyFrame]:
    def shape(piece: pl.LazyFrame, start: int) -> pl.LazyFrame:
        for column, value in where.items():
            piece = piece.filter(pl.col(column) == value)
        return piece.select(columns)
    return shape


def _require(table: str, schema: pl.Schema, columns: list[str], why: str) -> None:
    missing = [c for c in columns if c not in schema]
    if missing:
        raise SpecError(f"{why}: column(s) {', '.join(missing)} missing from {table} "
                        f"(it has: {', '.join(schema.names())})")


def _derive(op: str, args: list[str], schema: pl.Schema, name: str) -> pl.Expr:
    if op in ("age_years", "days_between"):
        for arg in args:
            if not isinstance(schema[arg], pl.Date | pl.Datetime):
                raise SpecError(f"derive {name}: {op} needs date columns, "
                                f"but {arg} is {schema[arg]}")
        a, b = (pl.col(x).cast(pl.Date) for x in args)
        if op == "days_between":
            return (b - a).dt.total_days().alias(name)

        def month_day(d: pl.Expr) -> pl.Expr:
            return d.dt.month().cast(pl.Int32) * 100 + d.dt.day().cast(pl.Int32)

        before_birthday = month_day(b) < month_day(a)
        return (b.dt.year() - a.dt.year() - before_birthday.cast(pl.Int32)).alias(name)
    for arg in args:
        if schema[arg] != pl.String:
            raise SpecError(f"derive {name}: path needs text columns, but {arg} is {schema[arg]}")
    return pl.concat_str([pl.col(a) for a in args], separator="/").alias(name)


def _check_type(field: FieldSpec, dtype: pl.DataType) -> None:
    if not isinstance(dtype, _TYPES[field.type]):
        raise SpecError(f"field {field.name}: the spec says {field.type}, but column "
                        f"{field.source_column!r} in the extract is {dtype}")
