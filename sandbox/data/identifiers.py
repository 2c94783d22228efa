"""Find direct identifiers by their values, whatever the column is called: ID numbers (with
a valid check digit), mainland mobile phone numbers, and patients' names. A column a spec
calls ``remark`` that holds phone numbers is found here and the dataset is refused."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sandbox.data.idcard import valid_expr

DIGIT_RUN = r"\d{11,}[Xx]?"
PHONE = r"^1[3-9]\d{9}$"
BIRTH = r"^\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"


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


def scan(frame: pl.DataFrame, names: pl.Series) -> list[Finding]:
    """Every column of ``frame`` with string or integer values that look like direct
    identifiers. ``names`` are the patients' names to look for as whole values."""
    findings: list[Finding] = []
    name_set = names.drop_nulls().unique()
    for column, dtype in frame.schema.items():
        if dtype == pl.String:
            text = pl.col(column)
        elif dtype.is_integer():
            text = pl.col(column).cast(pl.String)
        else:
            continue
        findings += _numbers(frame, column, text)
        if dtype == pl.String and len(name_set):
            hits = frame.filter(text.is_in(name_set.implode()))
            if hits.height:
                findings.append(Finding(column, "name", hits.height, _mask(hits[column][0])))
    return findings


def _numbers(frame: pl.DataFrame, column: str, text: pl.Expr) -> list[Finding]:
    runs = (
        frame.lazy()
        .select(pl.int_range(pl.len()).alias("_row"), text.str.extract_all(DIGIT_RUN).alias("_r"))
        .explode("_r")
        .drop_nulls("_r")
        .with_columns(
            is_id=(pl.col("_r").str.len_chars() == 18) & pl.col("_r").str.contains(BIRTH)
            & valid_expr(pl.col("_r")),
            is_phone=pl.col("_r").str.contains(PHONE),
        )
        .collect()
    )
    found = []
    for kind, flag in (("id_number", "is_id"), ("phone", "is_phone")):
        hits = runs.filter(pl.col(flag))
        if hits.height:
            found.append(Finding(column, kind, hits["_row"].n_unique(), _mask(hits["_r"][0])))
    return found


def _mask(value: str) -> str:
    value = str(value)
    if len(value) <= 6:
        return value[0] + "*" * (len(value) - 1)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]
