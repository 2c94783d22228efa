"""The raw tables of an extract: ``<table>.parquet`` or ``<table>.csv`` in the extract's
directory, read a piece at a time.

Parquet keeps its own types. A CSV file is read with every column as text, and only the
columns the spec gives a type (fields, dates it derives from, the year column, consent
flags and dates, join filters) are converted — strictly: a value that is not what the spec
says stops onboarding with the table and the value's column named. Nothing is guessed
from the data, so an identifier column is never taken for a number and left unscanned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from sandbox.data.spec import Spec
from sandbox.errors import InputError, SpecError

FORMATS = ("parquet", "csv")
TRUE, FALSE = ("true", "1", "yes", "y", "t", "是"), ("false", "0", "no", "n", "f", "否")


def _as(kind: str, name: str) -> pl.Expr:
    """Text column ``name`` as the spec's ``kind``, strictly."""
    text = pl.col(name).str.strip_chars()
    match kind:
        case "integer":
            return text.cast(pl.Int64, strict=True).alias(name)
        case "float":
            return text.cast(pl.Float64, strict=True).alias(name)
        case "date":
            return text.str.to_date(strict=True).alias(name)
        case "boolean":
            words = {w: True for w in TRUE} | {w: False for w in FALSE}
            return (text.str.to_lowercase().replace_strict(words, return_dtype=pl.Boolean)
                    .alias(name))
    return pl.col(name)


def csv_types(spec: Spec) -> dict[str, str]:
    """The type of every raw column the spec gives one (column → kind)."""
    types = {f.source_column: f.type for f in spec.fields}
    for step in spec.derive:
        if step.op in ("age_years", "days_between"):
            types.update((arg, "date") for arg in step.args)
    for join in spec.source.joins:
        for column, value in join.where.items():
            types[column] = ("boolean" if isinstance(value, bool) else
                             "integer" if isinstance(value, int) else "string")
    if spec.dataset.year_column:
        types[spec.dataset.year_column] = "date"
    c = spec.consent
    types.update((purpose, "boolean") for purpose in c.purposes)
    if c.withdrawn_at:
        types[c.withdrawn_at] = "date"
    return types


@dataclass(frozen=True)
class Table:
    """One raw table: its file, and for CSV the conversions the spec asks for."""

    path: Path
    types: dict[str, str] = field(default_factory=dict)

    @property
    def csv(self) -> bool:
        return self.path.suffix == ".csv"

    def scan(self) -> pl.LazyFrame:
        if not self.csv:
            return pl.scan_parquet(self.path)
        lazy = self._text()
        present = lazy.collect_schema().names()
        return lazy.with_columns(_as(kind, name) for name, kind in self.types.items()
                                 if name in present and kind != "string")

    def _text(self) -> pl.LazyFrame:
        """A CSV file as it is: every column text."""
        return pl.scan_csv(self.path, infer_schema=False, encoding="utf8")

    def count(self) -> int:
        """How many rows the table has (a CSV file is read through once)."""
        try:
            return self.scan().select(pl.len()).collect().item()
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"cannot read raw table {self.path}: {self.problem(exc)}") from None

    def problem(self, exc: Exception) -> str:
        """What is wrong with the table, in words that repeat none of its values."""
        if not self.csv:
            return _first_line(exc)
        return self.diagnose() or ("it is not UTF-8 CSV text with a header row and the same "
                                   "number of columns on every line")

    def diagnose(self) -> str | None:
        """Which column of a CSV file holds a value that is not of its type (the value
        itself is not repeated: it may be anything, an identifier too)."""
        lazy = self._text()
        try:
            present = lazy.collect_schema().names()
            lazy.select(pl.len()).collect()
        except pl.exceptions.PolarsError:
            return None  # the file itself, not one column's values
        for name, kind in self.types.items():
            if name in present and kind != "string":
                try:
                    lazy.select(pl.col(name)).collect()
                except pl.exceptions.PolarsError:
                    return None  # the file itself
                try:
                    lazy.select(_as(kind, name)).collect()
                except pl.exceptions.PolarsError:
                    return f"column {name!r} holds a value that is not of type {kind}"
        return None


def open_table(raw: Path, name: str, types: dict[str, str]) -> Table:
    """The table ``name`` of the extract in ``raw``, its columns checked readable."""
    found = [raw / f"{name}.{suffix}" for suffix in FORMATS if (raw / f"{name}.{suffix}").is_file()]
    if not found:
        raise InputError(f"raw table {name!r} not found: {raw / name}.parquet (or .csv) "
                         "is missing")
    if len(found) > 1:
        raise SpecError(f"raw table {name!r} is both {found[0].name} and {found[1].name}; "
                        "keep one")
    table = Table(found[0], types)
    try:
        table.scan().collect_schema()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"cannot read raw table {table.path}: {table.problem(exc)}") from None
    return table


@dataclass(frozen=True)
class Source:
    """A raw table read a piece at a time — whole Parquet row groups, the least Parquet can
    decode — each piece shaped by ``shape`` (filters, renames, projection)."""

    table: Table
    shape: Callable[[pl.LazyFrame, int], pl.LazyFrame]  # (piece, offset of its first row)

    @property
    def path(self) -> Path:
        return self.table.path

    def schema(self) -> pl.Schema:
        return self.shape(self.table.scan(), 0).collect_schema()

    def in_parquet(self, directory: Path, rows: int) -> Source:
        """This source over Parquet: a CSV table is converted once (streamed, in row groups
        of ``rows``) into ``directory`` — the run's private workspace, as it holds the
        extract's values —, where a bad value stops it before anything is published."""
        if not self.table.csv:
            return self
        target = directory / f"{self.path.stem}.parquet"
        if not target.exists():
            directory.mkdir(parents=True, exist_ok=True)
            try:
                self.table.scan().sink_parquet(target, row_group_size=max(rows, 1))
            except pl.exceptions.PolarsError as exc:
                target.unlink(missing_ok=True)
                raise InputError(f"cannot read raw table {self.path}: "
                                 f"{self.table.problem(exc)}") from None
        return Source(Table(target), self.shape)

    def chunks(self, rows: int) -> Iterator[pl.DataFrame]:
        """The table in pieces of whole row groups, about ``rows`` rows each (a CSV table
        is read through ``in_parquet`` first)."""
        if self.table.csv:
            raise ValueError(f"{self.path}: convert with in_parquet() before reading")
        metadata = pq.ParquetFile(self.path).metadata
        scan = self.table.scan()
        start = size = 0
        for index in range(metadata.num_row_groups):
            size += metadata.row_group(index).num_rows
            if size >= rows or index == metadata.num_row_groups - 1:
                yield self.shape(scan.slice(start, size), start).collect()
                start, size = start + size, 0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
