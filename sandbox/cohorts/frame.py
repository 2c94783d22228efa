"""The one-row-per-patient frame of a cohort definition, built with Polars from the
dataset's tables — restricted ones at the gateway, dummy ones in a sandbox: the same
code either way. The order of the steps is ``sandbox.cohorts.plan``'s; each step in
Polars is here (``PolarsSteps``).

Each patient of the population (an index event; consent for the purpose, where the
gateway gives it; the definition's ``where``) is one row: the patient key, then one column
per variable. Nothing here is private: the frame is what OpenDP's measurements read, each
patient one row, so one patient's records — however many — change one row.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from sandbox.cohorts import checks, codes, plan
from sandbox.cohorts.plan import END, INDEX_END, INDEX_START, PATIENT, START
from sandbox.cohorts.spec import CohortSpec, Events, Variable
from sandbox.queries.checks import bin_labels, predicate
from sandbox.queries.spec import Filter

__all__ = ["END", "INDEX_END", "INDEX_START", "PATIENT", "START", "build", "consenting"]

TableReader = Callable[[str], pl.LazyFrame]


def build(spec: CohortSpec, metadata: dict, read: TableReader,
          consenting: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The cohort's frame (``plan.build``) on Polars: ``read(table)`` gives a published
    table; ``consenting`` (a frame of ``PATIENT``) the patients who may be counted — None:
    all (dummy data). Text columns are ``Enum``s of their categories."""
    return plan.build(spec, metadata, PolarsSteps(read), consenting)


def consenting(consent: pl.LazyFrame, key: str, purpose: str,
               excluded: frozenset[str] = frozenset()) -> pl.LazyFrame:
    """The patients whose every consent row grants ``purpose`` and is not withdrawn, less
    ``excluded`` (withdrawals recorded since onboarding)."""
    agreed = (pl.col(purpose).fill_null(False) & pl.col("withdrawn_at").is_null()).all()
    frame = consent.group_by(key).agg(agreed.alias("_ok")).filter(pl.col("_ok"))
    frame = frame.select(pl.col(key).alias(PATIENT))
    if excluded:
        frame = frame.filter(~pl.col(PATIENT).is_in(sorted(excluded)))
    return frame


class PolarsSteps:
    """The plan's steps in Polars (``plan.Steps``)."""

    def __init__(self, read: TableReader) -> None:
        self.read = read

    def events(self, selection: Events, table: checks.Table, key: str,
               index: pl.LazyFrame | None) -> pl.LazyFrame:
        return _events(selection, table, self.read, key, index)

    def index(self, events: pl.LazyFrame, which: str) -> pl.LazyFrame:
        return _index(events, which)

    def among(self, frame: pl.LazyFrame, patients: pl.LazyFrame) -> pl.LazyFrame:
        return frame.join(patients, on=PATIENT, how="semi")

    def bands(self, frame: pl.LazyFrame, name: str, variable: Variable) -> pl.LazyFrame:
        return frame.with_columns(_bands(variable, name))

    def square(self, frame: pl.LazyFrame, name: str, of: str) -> pl.LazyFrame:
        return frame.with_columns((pl.col(of).cast(pl.Float64) ** 2).alias(name))

    def period(self, frame: pl.LazyFrame, name: str, level: str) -> pl.LazyFrame:
        return frame.with_columns(codes.period_label(
            pl.col(INDEX_START), pl.col(INDEX_END), level).alias(name))

    def per_patient(self, frame: pl.LazyFrame, name: str, variable: Variable,
                    selected: pl.LazyFrame, index: pl.LazyFrame) -> pl.LazyFrame:
        frame = frame.join(_per_patient(variable, name, selected, index), on=PATIENT,
                           how="left")
        if variable.kind in ("exists", "count"):  # a patient without matching events: 0
            frame = frame.with_columns(pl.col(name).fill_null(0))
        if variable.kind == "exists":
            frame = frame.with_columns(
                pl.when(pl.col(name) > 0).then(pl.lit("yes")).otherwise(pl.lit("no"))
                .alias(name))
        return frame

    def survival(self, frame: pl.LazyFrame, name: str, horizon: int, outcome: pl.LazyFrame,
                 followup: pl.LazyFrame, index: pl.LazyFrame) -> pl.LazyFrame:
        return _survival(frame, name, horizon, outcome, followup, index)

    def typed(self, frame: pl.LazyFrame, fields: list[tuple[str, dict]]) -> pl.LazyFrame:
        return frame.select(PATIENT, *(_typed(name, field) for name, field in fields))

    def where(self, frame: pl.LazyFrame, flt: Filter) -> pl.LazyFrame:
        return frame.filter(predicate(flt))


def _events(selection: Events, table: checks.Table, read: TableReader, key: str,
            index: pl.LazyFrame | None) -> pl.LazyFrame:
    """The rows of ``selection``: patient, period of the table's date, the fields read."""
    frame = read(table.name).rename({key: PATIENT})
    if table.date is not None:
        first, last = codes.periods(table.date, table.fields[table.date].get("categories"))
        frame = frame.with_columns(first.alias(START), last.alias(END))
    else:
        frame = frame.with_columns(pl.lit(None, pl.Date).alias(START),
                                   pl.lit(None, pl.Date).alias(END))
    if selection.codes is not None:
        categories = table.fields[selection.codes.field].get("categories") or []
        wanted = codes.matching(selection.codes.codelist, categories)
        frame = frame.filter(pl.col(selection.codes.field).cast(pl.String).is_in(wanted))
    for flt in selection.where:
        frame = frame.filter(predicate(flt))
    window = selection.window
    if window is not None:
        if window.start is not None:
            frame = frame.filter(pl.col(START) >= window.start)
        if window.end is not None:
            frame = frame.filter(pl.col(END) <= window.end)
        if window.after_index is not None:
            assert index is not None
            low, high = window.after_index
            # certainly within: for every day of the event's period and the index's
            frame = frame.join(index, on=PATIENT, how="inner").filter(
                ((pl.col(START) - pl.col(INDEX_END)).dt.total_days() >= low)
                & ((pl.col(END) - pl.col(INDEX_START)).dt.total_days() <= high))
    return frame


def _index(frame: pl.LazyFrame, which: str) -> pl.LazyFrame:
    """Each patient's index event: the first (by the start of its period) or the last (by
    its end); its period."""
    if which == "first":
        order = [START, END]
        pick = [pl.col(c).sort_by(order, nulls_last=True).first() for c in (START, END)]
    else:
        order = [END, START]
        pick = [pl.col(c).sort_by(order, nulls_last=False).last() for c in (START, END)]
    return frame.group_by(PATIENT).agg(
        pick[0].alias(INDEX_START), pick[1].alias(INDEX_END))


def _per_patient(variable: Variable, name: str, frame: pl.LazyFrame,
                 index: pl.LazyFrame) -> pl.LazyFrame:
    """One row per patient with matching events: the variable's value."""
    kind, field = variable.kind, variable.field
    if kind in ("exists", "count"):
        value = pl.len()
    elif kind in ("min", "max", "mean"):
        value = getattr(pl.col(field).cast(pl.Float64), kind)()
    elif kind == "first_value":
        value = pl.col(field).sort_by([START, END, field], nulls_last=True).first()
    elif kind == "last_value":
        value = pl.col(field).sort_by([END, START, field], nulls_last=False).last()
    else:  # days_to_first: exact only when both the event and the index are days
        frame = frame.join(index, on=PATIENT, how="inner").filter(
            pl.col(START) >= pl.col(INDEX_END))
        first = pl.struct(START, END).sort_by([START, END]).first()
        return frame.group_by(PATIENT).agg(
            first.alias("_first"), pl.col(INDEX_START).first(), pl.col(INDEX_END).first(),
        ).select(PATIENT, pl.when(
            (pl.col("_first").struct.field(START) == pl.col("_first").struct.field(END))
            & (pl.col(INDEX_START) == pl.col(INDEX_END)))
            .then((pl.col("_first").struct.field(START) - pl.col(INDEX_START))
                  .dt.total_days()).alias(name))
    return frame.group_by(PATIENT).agg(value.alias(name))


def _bands(variable: Variable, name: str) -> pl.Expr:
    edges = variable.edges
    labels = bin_labels(edges)
    source = pl.col(variable.of).cast(pl.Float64)
    cut = source.cut(edges[1:-1], labels=labels, left_closed=True).cast(pl.String)
    return pl.when(source.is_between(edges[0], edges[-1])).then(cut).alias(name)


def _typed(name: str, field: dict) -> pl.Expr:
    column = pl.col(name)
    if field["type"] == "string":
        categories = field["categories"]
        text = column.cast(pl.String)
        return pl.when(text.is_in(categories)).then(text).cast(
            pl.Enum(categories)).alias(name)
    if field["type"] == "integer":
        return column.cast(pl.Int64).alias(name)
    return column.cast(pl.Float64).alias(name)


def _survival(frame: pl.LazyFrame, name: str, horizon: int, outcome: pl.LazyFrame,
              followup: pl.LazyFrame, index: pl.LazyFrame) -> pl.LazyFrame:
    """``name``: days from the index date to the first outcome on or after it, within
    ``horizon``; else to the last follow-up event on or after it (at most ``horizon``; an
    outcome after the horizon shows the patient followed through it), censored.
    ``<name>_event``: "yes" for an outcome, "no" when censored. Both null where the index
    date, or an outcome within the horizon, is not a single day."""
    def after(events: pl.LazyFrame) -> pl.LazyFrame:
        return events.join(index, on=PATIENT, how="inner").filter(
            pl.col(START) >= pl.col(INDEX_END))
    first = after(outcome).group_by(PATIENT).agg(
        pl.struct(START, END).sort_by([START, END]).first().alias("_outcome"))
    last = after(followup).group_by(PATIENT).agg(pl.col(START).max().alias("_last"))
    frame = frame.join(first, on=PATIENT, how="left").join(last, on=PATIENT, how="left")
    seen = pl.col("_outcome").struct.field(START)
    exact = seen == pl.col("_outcome").struct.field(END)
    day = (pl.col(INDEX_START) == pl.col(INDEX_END)).fill_null(False)
    to_outcome = (seen - pl.col(INDEX_START)).dt.total_days()
    within = seen.is_not_null() & (to_outcome <= horizon)
    followed = (pl.col("_last") - pl.col(INDEX_START)).dt.total_days().fill_null(0)
    days = (pl.when(~day).then(None)
            .when(within & exact).then(to_outcome)
            .when(within).then(None)
            .when(seen.is_not_null()).then(pl.lit(horizon))  # seen after: followed through
            .otherwise(pl.min_horizontal(followed, pl.lit(horizon))))
    status = (pl.when(~day | (within & ~exact)).then(None)
              .when(within).then(pl.lit("yes")).otherwise(pl.lit("no")))
    return frame.with_columns(days.alias(name), status.alias(f"{name}_event")).drop(
        "_outcome", "_last")
