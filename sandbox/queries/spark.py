"""Exact-aggregate plans and bounded views on Apache Spark, over Spark Connect.

Only the thin client (``pyspark[connect]``, the ``[spark]`` extra) runs here; the Spark
server runs where sandboxes cannot reach it and reads the views where the gateway wrote
them (a path both see). Every plan is built with the DataFrame API: column names come from
the plan — that is, from the catalogue — and values travel as typed literals; no SQL text
is ever made from a request. A failure of the server or of the plan surfaces as
``Unavailable`` with a reason, never as a half answer.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from polars.exceptions import PanicException

from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.errors import Unavailable
from sandbox.queries import bounded
from sandbox.queries.exact import complete
from sandbox.queries.plan import BIN, COUNT, PATIENT, SUM, ExactPlan, consent_column
from sandbox.queries.spec import Filter

# Excluded pseudonyms up to this many travel as literals; more go as a small table that
# the rows are anti-joined against.
INLINE_EXCLUSIONS = 256
RETRIES = 3  # the client's own retries of a lost connection (then the query fails)


def _spark() -> tuple[Any, Any, Any]:
    try:
        from pyspark.sql import SparkSession, Window
        from pyspark.sql import functions as F
    except ImportError:  # pragma: no cover - the [spark] extra is installed for tests
        raise Unavailable("the Spark engine needs the [spark] extra "
                          "(pip install 'med-sandbox[spark]')") from None
    return SparkSession, F, Window


def functions() -> Any:
    """``pyspark.sql.functions`` (the ``[spark]`` extra)."""
    return _spark()[1]


class SparkExecutor:
    """Runs plans and builds views on the Spark Connect server at ``remote``."""

    name = "spark"

    def __init__(self, remote: str) -> None:
        self.remote = remote
        self._session = None
        self._lock = threading.Lock()

    # -- the session ----------------------------------------------------------------------
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                session_type, _, _ = _spark()
                from pyspark.sql.connect.client.retries import DefaultPolicy
                session = session_type.builder.remote(self.remote).create()
                # A lost server fails the query within seconds rather than after the
                # client's default ten minutes of retries.
                session.client.set_retry_policies(
                    [DefaultPolicy(max_retries=RETRIES, max_backoff=1000)])
                self._session = session
            return self._session

    def _failed(self, action: str, exc: Exception) -> Unavailable:
        # The next call opens a new session: a restarted server does not know the old one.
        with self._lock:
            self._session = None
        kind = type(exc).__name__
        return Unavailable(f"the query engine (Spark) failed to {action} ({kind}); "
                           "nothing was released. A charged query stays charged: sending "
                           "the identical query again releases it under that same charge")

    def stop(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):  # closing a dead session is no error
                session.stop()

    # -- running a plan --------------------------------------------------------------------
    def aggregate(self, plan: ExactPlan, view: str) -> pl.DataFrame:
        return self.aggregate_rows(
            plan, lambda session: session.read.parquet(str(view)))

    def aggregate_rows(self, plan: ExactPlan, rows: Callable[[Any], Any]) -> pl.DataFrame:
        """``aggregate`` over the rows ``rows(session)`` makes — a view read, or a cohort's
        frame built (``sandbox.cohorts.spark``) — with the plan's consent column."""
        try:
            table = self._aggregate(plan, rows(self.session())).toArrow()
        except Unavailable:
            raise
        except (Exception, PanicException) as exc:
            raise self._failed("answer the query", exc) from None
        return complete(plan, pl.from_arrow(table))

    def _aggregate(self, plan: ExactPlan, rows: Any) -> Any:
        _, F, _ = _spark()
        session = self.session()
        rows = rows.filter(F.col(plan.consent))
        if plan.excluded:
            excluded = sorted(plan.excluded)
            if len(excluded) <= INLINE_EXCLUSIONS:
                rows = rows.filter(~F.col(PATIENT).isin(excluded))
            else:
                table = session.createDataFrame([(p,) for p in excluded], [PATIENT])
                rows = rows.join(table, on=PATIENT, how="left_anti")
        for flt in plan.filters:
            rows = rows.filter(predicate(F, flt))
        # A row without the value is in no count, sum or bin of it. Not as a filter: Spark
        # pushes `IS NOT NULL` down to Parquet's statistics, which for a float column
        # holding NaN (no min/max written) skip every row group.
        present = F.col(plan.value.column).isNotNull() if plan.value is not None else None
        counted = F.col(plan.value.column) if plan.value is not None else F.lit(1)
        aggs = [F.count(counted).cast("long").alias(COUNT)]
        if plan.sums:
            aggs.append(F.sum(F.when(present, fixed(F, plan))).alias(SUM))
        if plan.edges is not None:
            rows = rows.withColumn(BIN, F.when(present, bin_label(F, plan)))
        if plan.grouped:
            return rows.groupBy(*plan.group_columns).agg(*aggs)
        return rows.agg(*aggs)

    # -- building a view -------------------------------------------------------------------
    def build(self, directory: Path, metadata: dict, secret: bytes, target: Path) -> int:
        try:
            return self._build(directory, metadata, secret, target)
        except Unavailable:
            raise
        except Exception as exc:
            raise self._failed("build the view", exc) from None

    def _build(self, directory: Path, metadata: dict, secret: bytes, target: Path) -> int:
        _, F, Window = _spark()
        session = self.session()
        patient = metadata["patient_key"]
        bound = int(metadata["contribution_bound"])
        fields = bounded.served_fields(metadata)
        purposes = [p["id"] for p in metadata["purposes"]]
        restricted = Path(directory).resolve() / "restricted"
        records = session.read.parquet(str(restricted / f"{RECORDS}.parquet")).select(
            *fields, F.col("_metadata.row_index").alias(bounded.ROW))
        message = F.encode(F.concat(F.col(patient), F.lit(bounded.SEPARATOR),
                                    F.col(bounded.ROW).cast("string")), "UTF-8")
        rank = F.lower(F.hex(F.hmac(F.lit(bytearray(secret)), message)))
        by_patient = Window.partitionBy(patient).orderBy(bounded.RANK)
        kept = (records.withColumn(bounded.RANK, rank)
                .withColumn("_n", F.row_number().over(by_patient))
                .filter(F.col("_n") <= bound).drop("_n", bounded.ROW))
        # One row per patient, as Polars builds it (bounded._bounded): consenting only if
        # every consent row of theirs does, so a patient listed twice is not joined twice.
        consent = session.read.parquet(str(restricted / f"{CONSENT}.parquet")).groupBy(
            patient).agg(*(F.bool_and(F.coalesce(F.col(p), F.lit(False))
                                      & F.col("withdrawn_at").isNull())
                           .alias(consent_column(p)) for p in purposes))
        view = kept.join(consent, on=patient, how="left")
        columns = []
        for name, f in fields.items():
            if f["type"] == "string" and f.get("categories") is not None:
                columns.append(F.when(F.col(name).isin(list(f["categories"])), F.col(name))
                               .alias(name))
            else:
                columns.append(F.col(name))
        view = view.select(
            *columns, *(F.coalesce(F.col(consent_column(p)), F.lit(False))
                        .alias(consent_column(p)) for p in purposes),
            F.col(bounded.RANK),
            F.concat(F.lit("p"), F.substring(bounded.RANK, 1, 1)).alias(bounded.PART))
        if patient != PATIENT:
            view = view.withColumnRenamed(patient, PATIENT)
        view.write.partitionBy(bounded.PART).option("compression", "lz4_raw").parquet(
            str(Path(target).resolve()))
        return session.read.parquet(str(Path(target).resolve())).count()


# -- the plan's pieces as Spark columns -------------------------------------------------------
def predicate(F: Any, flt: Filter) -> Any:
    """``checks.predicate`` in Spark: the same comparisons, values as literals."""
    col = F.col(flt.field)
    match flt.op:
        case "eq":
            return col == F.lit(flt.value)
        case "ne":
            return col != F.lit(flt.value)
        case "in":  # one expression, not a chain of ORs (Spark Connect caps plan depth)
            return col.isin(list(flt.value))
        case "lt":
            return col < F.lit(flt.value)
        case "le":
            return col <= F.lit(flt.value)
        case "gt":
            return col > F.lit(flt.value)
        case "ge":
            return col >= F.lit(flt.value)
    return (col >= F.lit(flt.value[0])) & (col <= F.lit(flt.value[1]))


def value(F: Any, plan: ExactPlan) -> Any:
    v = plan.value
    assert v is not None
    low, high = F.lit(float(v.low)), F.lit(float(v.high))
    filled = F.coalesce(F.nanvl(F.col(v.column).cast("double"), low), low)
    return F.least(F.greatest(filled, low), high)


def fixed(F: Any, plan: ExactPlan) -> Any:
    return F.floor(value(F, plan) * F.lit(2.0 ** plan.bits)).cast("long")


def bin_label(F: Any, plan: ExactPlan) -> Any:
    assert plan.edges is not None
    return label_of(F, value(F, plan), plan.edges, plan.labels)


def label_of(F: Any, x: Any, edges: Sequence[float], labels: list[str]) -> Any:
    """The label of the bin of ``edges`` that ``x`` falls in (left-closed; the last bin
    takes everything from its left edge up): one plus the number of inner edges ≤ ``x``,
    those comparisons added as a balanced tree — Spark Connect caps an expression's depth
    at about a hundred, which a chain over 100 bins would pass."""
    terms = [(x >= F.lit(float(e))).cast("int") for e in edges[1:-1]] or [F.lit(0)]
    while len(terms) > 1:
        terms = [functools.reduce(operator.add, terms[i:i + 2])
                 for i in range(0, len(terms), 2)]
    return F.element_at(F.array(*(F.lit(label) for label in labels)), terms[0] + 1)
