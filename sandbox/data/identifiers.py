"""Find direct identifiers by their values, whatever the column is called: ID numbers (with
a valid check digit), mainland mobile phone numbers, and patients' names. A column a spec
calls ``remark`` that holds phone numbers is found here and the dataset is refused.

The search works on one bucket of rows at a time: each bucket yields partial hits (how many
rows, and the earliest row's value as the example), and ``combine`` adds them up, so the
verdict and its message do not depend on how the rows were split. Names are matched as whole
values by joining distinct published values with distinct names, both split by a hash of
the value, so neither list is ever held whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from sandbox.data.idcard import valid_expr

DIGIT_RUN = r"\d{11,}[Xx]?"
PHONE = r"^1[3-9]\d{9}$"
BIRTH = r"^\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
KINDS = ("id_number", "phone", "name")
ROW = "_row"


@dataclass(frozen=True)
class Finding:
    """A column holding values that look like a direct identifier."""

    column: str
    kind: str  # "id_number" | "phone" | "name"
    rows: int
    example: str  # masked

    def describe(self) -> str:
        what = {"id_number": "ID numbers", "phone": "mobile phone numbers",
                "name": "patient names"}[self.kind]
        return f"column {self.column!r} holds {what} in {self.rows} rows (e.g. {self.example})"


@dataclass(frozen=True)
class Hit:
    """Part of a finding, from some of the rows: how many hit, and the first one."""

    column: str
    kind: str
    rows: int
    first_row: int
    value: str


def scannable(schema: pl.Schema) -> list[str]:
    """The columns searched: text and integers (a phone number may be stored as one)."""
    return [c for c, t in schema.items() if t == pl.String or t.is_integer()]


def number_hits(frame: pl.DataFrame, columns: list[str]) -> list[Hit]:
    """ID numbers and phone numbers in ``columns`` of ``frame`` (which has ``_row``)."""
    hits: list[Hit] = []
    for column in columns:
        text = pl.col(column)
        if frame.schema[column] != pl.String:
            text = text.cast(pl.String)
        runs = (
            frame.lazy()
            .select(ROW, text.str.extract_all(DIGIT_RUN).alias("_r"))
            .explode("_r")
            .drop_nulls("_r")
            .with_columns(
                is_id=(pl.col("_r").str.len_chars() == 18) & pl.col("_r").str.contains(BIRTH)
                & valid_expr(pl.col("_r")),
                is_phone=pl.col("_r").str.contains(PHONE),
            )
            .collect()
        )
        for kind, flag in (("id_number", "is_id"), ("phone", "is_phone")):
            found = runs.filter(pl.col(flag))
            if found.height:
                first = found.row(int(found[ROW].arg_min()), named=True)
                hits.append(Hit(column, kind, found[ROW].n_unique(), first[ROW], first["_r"]))
    return hits


def text_values(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Distinct values of the text ``columns``, with how many rows hold each and the first."""
    parts = [
        frame.group_by(column).agg(pl.len().alias("rows"), pl.col(ROW).min().alias("first"))
        .select(pl.lit(column).alias("column"), pl.col(column).alias("value"), "rows", "first")
        for column in columns if frame.schema[column] == pl.String
    ]
    return pl.concat(parts).drop_nulls("value") if parts else _EMPTY_VALUES


def name_hits(values: pl.DataFrame, names: pl.Series) -> list[Hit]:
    """Which of ``values`` (from ``text_values``) are patients' names."""
    if not len(names) or not values.height:
        return []
    found = values.filter(pl.col("value").is_in(names.implode()))
    hits = []
    for (column,), rows in found.group_by("column"):
        first = rows.row(int(rows["first"].arg_min()), named=True)
        hits.append(Hit(str(column), "name", int(rows["rows"].sum()), first["first"],
                        first["value"]))
    return hits


def combine(hits: Iterable[Hit], columns: list[str]) -> list[Finding]:
    """Findings from partial hits, in column order then kind order."""
    total: dict[tuple[str, str], tuple[int, int, str]] = {}
    for hit in hits:
        rows, first, value = total.get((hit.column, hit.kind), (0, hit.first_row, hit.value))
        if hit.first_row < first:
            first, value = hit.first_row, hit.value
        total[(hit.column, hit.kind)] = (rows + hit.rows, first, value)
    return [Finding(column, kind, total[(column, kind)][0], _mask(total[(column, kind)][2]))
            for column in columns for kind in KINDS if (column, kind) in total]


def scan(frame: pl.DataFrame, names: pl.Series) -> list[Finding]:
    """Every column of ``frame`` with string or integer values that look like direct
    identifiers. ``names`` are the patients' names to look for as whole values."""
    columns = scannable(frame.schema)
    frame = frame.with_row_index(ROW)
    hits = number_hits(frame, columns)
    hits += name_hits(text_values(frame, columns), names.drop_nulls().unique())
    return combine(hits, columns)


def _mask(value: str) -> str:
    value = str(value)
    if len(value) <= 6:
        return value[0] + "*" * (len(value) - 1)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


_EMPTY_VALUES = pl.DataFrame(schema={"column": pl.String, "value": pl.String,
                                     "rows": pl.UInt32, "first": pl.UInt32})
