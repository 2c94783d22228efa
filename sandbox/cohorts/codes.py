"""Codelists against the codes a dataset publishes, and published dates as periods.

A published code may have been generalised for privacy (a rare "E11.65" shown as its
category "E11", its block "E10-E14", its chapter or "*"). A codelist entry matches a
published value only when every code the value may stand for is in the entry: "E11"
matches "E11" and "E11.9" but not the block "E10-E14"; the range "E10-E14" matches all
three. The public categories of the field are matched once, so the data is only ever
filtered by a list of literal values.

A published date is a day ("2023-05-17"), a month ("2023-05"), a quarter ("2023-Q2") or a
year ("2023"); each becomes the period from its first to its last day. "*" (suppressed),
or a year 0, has no period.
"""

from __future__ import annotations

import polars as pl

from sandbox.cohorts.spec import CODE, CODE_RANGE


def matches(entry: str, value: str) -> bool:
    """Whether the published ``value`` lies wholly within the codelist ``entry``."""
    wanted = CODE_RANGE.fullmatch(entry)
    block = CODE_RANGE.fullmatch(value)
    if block is not None:
        return wanted is not None and wanted[1] <= block[1] and block[2] <= wanted[2]
    if CODE.fullmatch(value) is None:
        return False  # a chapter, "*" or anything else: too coarse to tell
    if wanted is not None:
        return wanted[1] <= value[:3] <= wanted[2]
    if "." in entry:
        return value.startswith(entry)
    return value == entry or value.startswith(entry + ".")


def matching(codelist: list[str], categories: list[str]) -> list[str]:
    """The published categories any entry of ``codelist`` matches."""
    return [c for c in categories if any(matches(entry, c) for entry in codelist)]


def period(column: str) -> tuple[pl.Expr, pl.Expr]:
    """The first and last day of each published date of ``column`` (null for "*" or
    anything that is not a date)."""
    text = pl.col(column).cast(pl.String)
    size = text.str.len_chars()
    year = text.str.slice(0, 4).cast(pl.Int32, strict=False)
    quarter = pl.when(text.str.contains(r"^\d{4}-Q[1-4]$")).then(
        text.str.slice(6, 1).cast(pl.Int8, strict=False))
    day = text.str.to_date("%Y-%m-%d", strict=False)
    month = pl.when(text.str.contains(r"^\d{4}-\d{2}$")).then(
        pl.concat_str(text, pl.lit("-01")).str.to_date("%Y-%m-%d", strict=False))
    first = (pl.when(size == 10).then(day)
             .when(month.is_not_null()).then(month)
             .when(quarter.is_not_null()).then(pl.date(year, (quarter - 1) * 3 + 1, 1))
             .when(text.str.contains(r"^\d{4}$")).then(pl.date(year, 1, 1)))
    last = (pl.when(size == 10).then(day)
            .when(month.is_not_null()).then(month.dt.month_end())
            .when(quarter.is_not_null()).then(pl.date(year, quarter * 3, 1).dt.month_end())
            .when(text.str.contains(r"^\d{4}$")).then(pl.date(year, 12, 31)))
    real = year >= 1  # "0000" is no date (nor one Python or Spark can hold)
    return pl.when(real).then(first), pl.when(real).then(last)


def periods(column: str, labels: list[str] | None) -> tuple[pl.Expr, pl.Expr]:
    """``period(column)`` for a column whose values are among its public ``labels``: the
    periods of the labels are worked out once and looked up (a million rows hold a few
    thousand labels); values outside them have none. Without labels: ``period``."""
    if not labels:
        return period(column)
    first, last = period("label")
    table = pl.DataFrame({"label": labels}, schema={"label": pl.String}).select(
        "label", first.alias("first"), last.alias("last"))
    text = pl.col(column).cast(pl.String)
    return tuple(text.replace_strict(table["label"], table[end], default=None,
                                     return_dtype=pl.Date) for end in ("first", "last"))


def period_label(first: pl.Expr, last: pl.Expr, level: str) -> pl.Expr:
    """The month ("2023-05"), quarter ("2023-Q2") or year ("2023") holding the whole period
    from ``first`` to ``last``; null where it spans more than one."""
    def label(day: pl.Expr) -> pl.Expr:
        if level == "month":
            return day.dt.strftime("%Y-%m")
        if level == "quarter":
            return pl.format("{}-Q{}", day.dt.year(), day.dt.quarter())
        return day.dt.year().cast(pl.String)
    return pl.when(label(first) == label(last)).then(label(first))
