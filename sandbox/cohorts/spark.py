"""The steps of a cohort's plan (``sandbox.cohorts.plan``) in Spark's DataFrame API, for the
gateway's Spark engine: the same definition, checked by the same ``checks.check``, gives
the same one row per patient as the Polars steps (``sandbox.cohorts.frame``), each step's
ordering and null rules spelled out for Spark (``tests/gateway/test_cohorts_spark.py``
holds the two equal on random definitions).

Everything that depends only on public metadata is worked out once, here, with the
Polars code itself — the codes a codelist matches, the period each published date label
stands for, the labels of bands — and reaches Spark as literals or a small table of
literals. Column names come from the checked definition and the catalogue; no SQL text is
made from a request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from sandbox.cohorts import checks, codes, plan
from sandbox.cohorts.plan import END, INDEX_END, INDEX_START, PATIENT, START
from sandbox.cohorts.spec import CohortSpec, Events, Variable
from sandbox.data.catalog import CONSENT
from sandbox.queries.checks import bin_labels
from sandbox.queries.plan import consent_column
from sandbox.queries.spark import INLINE_EXCLUSIONS, functions, label_of, predicate
from sandbox.queries.spec import Filter

SparkReader = Callable[[str], Any]  # a published table's name → its Spark DataFrame
_LABEL = "_label"


class Lowering:
    """The plan's steps in Spark (``plan.Steps``): Spark's functions, the session (for the
    small tables of public values) and the reader of the restricted tables."""

    def __init__(self, session: Any, functions: Any, read: SparkReader) -> None:
        self.session, self.F, self.read = session, functions, read

    def events(self, selection: Events, table: checks.Table, key: str, index: Any) -> Any:
        return _events(self, selection, table, key, index)

    def index(self, events: Any, which: str) -> Any:
        return _index(self.F, events, which)

    def among(self, frame: Any, patients: Any) -> Any:
        return frame.join(patients, on=PATIENT, how="left_semi")

    def bands(self, frame: Any, name: str, variable: Variable) -> Any:
        return frame.withColumn(name, _bands(self.F, variable))

    def square(self, frame: Any, name: str, of: str) -> Any:
        source = self.F.col(of).cast("double")
        return frame.withColumn(name, source * source)

    def period(self, frame: Any, name: str, level: str) -> Any:
        return frame.withColumn(name, _period_label(self.F, level))

    def per_patient(self, frame: Any, name: str, variable: Variable, selected: Any,
                    index: Any) -> Any:
        F = self.F
        frame = frame.join(_per_patient(F, variable, name, selected, index), on=PATIENT,
                           how="left")
        if variable.kind in ("exists", "count"):  # a patient without matching events: 0
            frame = frame.withColumn(name, F.coalesce(F.col(name), F.lit(0)))
        if variable.kind == "exists":
            frame = frame.withColumn(name, F.when(F.col(name) > 0, F.lit("yes"))
                                     .otherwise(F.lit("no")))
        return frame

    def survival(self, frame: Any, name: str, horizon: int, outcome: Any, followup: Any,
                 index: Any) -> Any:
        return _survival(self.F, frame, name, horizon, outcome, followup, index)

    def typed(self, frame: Any, fields: list[tuple[str, dict]]) -> Any:
        return frame.select(self.F.col(PATIENT),
                            *(_typed(self.F, name, field) for name, field in fields))

    def where(self, frame: Any, flt: Filter) -> Any:
        return frame.filter(predicate(self.F, flt))


def patients(spec: CohortSpec, metadata: dict, directory: Path, purpose: str,
             excluded: frozenset[str]) -> Callable[[Any], Any]:
    """The rows a Spark session reads for a cohort of the dataset in ``directory``: the
    cohort's frame over its restricted tables, of the patients who consent to ``purpose``
    less ``excluded``, each with the plan's consent column set (``sandbox.queries.plan``).
    """
    restricted = Path(directory).resolve() / "restricted"

    def rows(session: Any) -> Any:
        F = functions()
        on = Lowering(session, F,
                      lambda table: session.read.parquet(str(restricted / f"{table}.parquet")))
        agreed = consenting(on, on.read(CONSENT), metadata["patient_key"], purpose, excluded)
        return build(spec, metadata, on, agreed).withColumn(consent_column(purpose),
                                                            F.lit(True))
    return rows


def build(spec: CohortSpec, metadata: dict, on: Lowering,
          consenting: Any | None = None) -> Any:
    """The cohort's frame (``plan.build``) on Spark: text columns as strings (null outside
    their categories), integers as longs, the rest doubles."""
    return plan.build(spec, metadata, on, consenting)


def consenting(on: Lowering, consent: Any, key: str, purpose: str,
               excluded: frozenset[str] = frozenset()) -> Any:
    """``frame.consenting`` on Spark."""
    F = on.F
    agreed = F.bool_and(F.coalesce(F.col(purpose), F.lit(False))
                        & F.col("withdrawn_at").isNull())
    frame = consent.groupBy(key).agg(agreed.alias("_ok")).filter(F.col("_ok"))
    frame = frame.select(F.col(key).alias(PATIENT))
    if excluded:
        out = sorted(excluded)
        if len(out) <= INLINE_EXCLUSIONS:
            return frame.filter(~F.col(PATIENT).isin(out))
        table = on.session.createDataFrame([(p,) for p in out], f"{PATIENT} string")
        frame = frame.join(table, on=PATIENT, how="left_anti")
    return frame


def _events(on: Lowering, selection: Events, table: checks.Table, key: str,
            index: Any) -> Any:
    F = on.F
    frame = on.read(table.name).withColumnRenamed(key, PATIENT)
    if table.date is not None:
        frame = _with_periods(on, frame, table.date,
                              table.fields[table.date].get("categories"))
    else:
        frame = frame.withColumn(START, F.lit(None).cast("date")).withColumn(
            END, F.lit(None).cast("date"))
    if selection.codes is not None:
        categories = table.fields[selection.codes.field].get("categories") or []
        wanted = codes.matching(selection.codes.codelist, categories)
        frame = frame.filter(F.col(selection.codes.field).cast("string").isin(wanted))
    for flt in selection.where:
        frame = frame.filter(predicate(F, flt))
    window = selection.window
    if window is not None:
        if window.start is not None:
            frame = frame.filter(F.col(START) >= F.lit(window.start))
        if window.end is not None:
            frame = frame.filter(F.col(END) <= F.lit(window.end))
        if window.after_index is not None:
            assert index is not None
            low, high = window.after_index
            frame = frame.join(index, on=PATIENT, how="inner").filter(
                (F.datediff(F.col(START), F.col(INDEX_END)) >= F.lit(low))
                & (F.datediff(F.col(END), F.col(INDEX_START)) <= F.lit(high)))
    return frame


def _with_periods(on: Lowering, frame: Any, column: str, labels: list[str] | None) -> Any:
    """``START``/``END``: the period of each published date, looked up in a small table of
    the labels' periods that ``codes.period`` works out (the column's distinct values
    where the catalogue lists none)."""
    F = on.F
    if not labels:
        labels = [r[0] for r in frame.select(F.col(column).cast("string")).distinct()
                  .collect() if r[0] is not None]
    first, last = codes.period(_LABEL)
    periods = pl.DataFrame({_LABEL: labels}, schema={_LABEL: pl.String}).select(
        _LABEL, first.alias(START), last.alias(END))
    table = on.session.createDataFrame(periods.rows(),
                                       f"{_LABEL} string, {START} date, {END} date")
    return frame.withColumn(_LABEL, F.col(column).cast("string")).join(
        F.broadcast(table), on=_LABEL, how="left").drop(_LABEL)


def _index(F: Any, frame: Any, which: str) -> Any:
    """``frame._index``: the first event (least start, then least end, nulls last) or the
    last (greatest end, then greatest start, nulls least) — Spark orders a struct field by
    field, a null before any value."""
    if which == "first":
        pick = F.min(F.struct(F.col(START).isNull(), F.col(START).alias("s"),
                              F.col(END).isNull(), F.col(END).alias("e")))
    else:
        pick = F.max(F.struct(F.col(END).alias("e"), F.col(START).alias("s")))
    return frame.groupBy(PATIENT).agg(pick.alias("_pick")).select(
        F.col(PATIENT), F.col("_pick.s").alias(INDEX_START),
        F.col("_pick.e").alias(INDEX_END))


def _per_patient(F: Any, variable: Variable, name: str, frame: Any, index: Any) -> Any:
    kind, field = variable.kind, variable.field
    if kind in ("exists", "count"):
        value = F.count(F.lit(1))
    elif kind in ("min", "max", "mean"):
        numeric = F.col(field).cast("double")
        value = {"min": F.min, "max": F.max, "mean": F.avg}[kind](numeric)
        if kind == "max":  # Polars' max passes over NaN (NaN only when nothing else)
            value = F.coalesce(F.max(F.when(~F.isnan(numeric), numeric)), value)
    elif kind == "first_value":
        value = F.min(F.struct(F.col(START).isNull(), F.col(START), F.col(END).isNull(),
                               F.col(END), F.col(field).isNull(),
                               F.col(field).alias("v"))).getField("v")
    elif kind == "last_value":
        value = F.max(F.struct(F.col(END), F.col(START), F.col(field).alias("v"))
                      ).getField("v")
    else:  # days_to_first: exact only when both the event and the index are days
        after = frame.drop(INDEX_START, INDEX_END).join(index, on=PATIENT, how="inner").filter(
            F.col(START) >= F.col(INDEX_END))
        first = after.groupBy(PATIENT, INDEX_START, INDEX_END).agg(
            F.min(F.struct(F.col(START).alias("s"), F.col(END).alias("e"))).alias("_f"))
        single = ((F.col("_f.s") == F.col("_f.e"))
                  & (F.col(INDEX_START) == F.col(INDEX_END)))
        return first.select(F.col(PATIENT), F.when(
            single, F.datediff(F.col("_f.s"), F.col(INDEX_START))).alias(name))
    return frame.groupBy(PATIENT).agg(value.alias(name))


def _bands(F: Any, variable: Variable) -> Any:
    edges = [float(e) for e in variable.edges]
    source = F.col(variable.of).cast("double")
    label = label_of(F, source, edges, bin_labels(variable.edges))
    return F.when(source.between(F.lit(edges[0]), F.lit(edges[-1])), label)


def _period_label(F: Any, level: str) -> Any:
    def label(day: Any) -> Any:
        if level == "month":
            return F.date_format(day, "yyyy-MM")
        if level == "quarter":
            return F.concat(F.year(day).cast("string"), F.lit("-Q"),
                            F.quarter(day).cast("string"))
        return F.year(day).cast("string")
    first, last = label(F.col(INDEX_START)), label(F.col(INDEX_END))
    return F.when(first == last, first)


def _typed(F: Any, name: str, field: dict) -> Any:
    column = F.col(name)
    if field["type"] == "string":
        text = column.cast("string")
        return F.when(text.isin(list(field["categories"])), text).alias(name)
    if field["type"] == "integer":
        return column.cast("long").alias(name)
    return column.cast("double").alias(name)


def _survival(F: Any, frame: Any, name: str, horizon: int, outcome: Any, followup: Any,
              index: Any) -> Any:
    """``frame._survival`` on Spark: the same cases in the same order."""
    def after(events: Any) -> Any:
        return events.drop(INDEX_START, INDEX_END).join(
            index.select(PATIENT, INDEX_END), on=PATIENT, how="inner").filter(
            F.col(START) >= F.col(INDEX_END))
    first = after(outcome).groupBy(PATIENT).agg(
        F.min(F.struct(F.col(START).alias("s"), F.col(END).alias("e"))).alias("_outcome"))
    last = after(followup).groupBy(PATIENT).agg(F.max(F.col(START)).alias("_last"))
    frame = frame.join(first, on=PATIENT, how="left").join(last, on=PATIENT, how="left")
    seen = F.col("_outcome.s")
    exact = seen == F.col("_outcome.e")
    day = F.coalesce(F.col(INDEX_START) == F.col(INDEX_END), F.lit(False))
    to_outcome = F.datediff(seen, F.col(INDEX_START))
    within = seen.isNotNull() & (to_outcome <= F.lit(horizon))
    followed = F.coalesce(F.datediff(F.col("_last"), F.col(INDEX_START)), F.lit(0))
    days = (F.when(~day, F.lit(None))
            .when(within & exact, to_outcome)
            .when(within, F.lit(None))
            .when(seen.isNotNull(), F.lit(horizon))  # seen after: followed through
            .otherwise(F.least(followed, F.lit(horizon))))
    status = (F.when(~day | (within & ~exact), F.lit(None))
              .when(within, F.lit("yes")).otherwise(F.lit("no")))
    return frame.withColumn(name, days).withColumn(f"{name}_event", status).drop(
        "_outcome", "_last")
