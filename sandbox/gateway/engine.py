"""The DP query engine: a dataset's bounded consented view in (sandbox.queries.view),
OpenDP releases out.

A query becomes a Polars plan on an empty frame of the view's schema; OpenDP's
``make_private_lazyframe`` turns it into a measurement whose privacy loss OpenDP computes.
The noise scale comes in closed form from one evaluation of OpenDP's loss
(``calibration``), checked by ``map``; the scale found for a query *shape* (the spec
without filter values) and (ε, δ) is cached and reused, and the reused measurement's loss
is still checked by OpenDP against (ε, δ) before it runs. Noise, clamping and accounting
all come from OpenDP. The rows themselves are read by an exact-aggregate plan on the
configured engine (Polars or Spark), to whose exact result OpenDP's noise at the
measurement's own scales is added (``execution``, ``noise``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import opendp.prelude as dp
import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.measurements import make_private_lazyframe
from opendp.mod import Measurement, OpenDPException, binary_search

from sandbox.errors import InputError, PolicyRefusal
from sandbox.gateway import execution
from sandbox.gateway.calibration import scale_for
from sandbox.gateway.execution import Compiled, check_served, compile_query
from sandbox.queries.checks import bin_labels, predicate
from sandbox.queries.exact import Executor, PolarsExecutor
from sandbox.queries.spec import QUANTILE_CANDIDATES, SMALL_CELL, QuerySpec
from sandbox.queries.view import Dataset, consent_column
from sandbox.queries.withdrawals import Withdrawn

dp.enable_features("contrib")

COUNT = "count"
SUPPRESSED = "suppressed"
COMPILED_SHAPES = 4096  # shapes whose accounting is kept
READERS = 4  # exact aggregates read at once (each engine parallelises its own work)


@dataclass(frozen=True)
class Release:
    """What OpenDP released, as rows, and what it cost."""

    rows: list[dict]
    epsilon: float
    delta: float
    columns: list[str]
    refused: str | None = None  # a refusal decided from noisy values: the release itself
    withdrawals: int | None = None  # the withdrawal set's version it was computed under


class Engine:
    """Compiles query specs to OpenDP measurements and runs them on dataset views."""

    def __init__(self, executor: Executor | None = None) -> None:
        self.executor = executor or PolarsExecutor()
        # noise scales and exact plans' accounting by shape, the most recently used kept
        # (a shape is made before its charge, so a grant past its budget could otherwise
        # grow these at will); a calibration lock lives only while its shape calibrates
        self._scales: OrderedDict[tuple, tuple[float, int | None]] = OrderedDict()
        self._compiled: OrderedDict[tuple, Compiled] = OrderedDict()
        self._calibrating: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="exact-aggregate")

    # -- compilation -----------------------------------------------------------------
    def _plan(self, spec: QuerySpec, dataset: Dataset, purpose: str) -> pl.LazyFrame:
        consent = consent_column(purpose)
        frame = dataset.placeholder().filter(pl.col(consent))
        if spec.kind in ("count", "histogram"):
            # Project early: a count's plan otherwise reads every column of the view. (Not
            # for sums and means: a projection drops the margin their sensitivity needs.)
            frame = frame.select(spec.fields_used() or [consent])
        for flt in spec.filters:
            frame = frame.filter(predicate(flt))
        if spec.field:
            # a row without the value (a patient with no such lab) is in no sum, mean, bin
            # or quantile — not counted at the lower bound
            frame = frame.filter(pl.col(spec.field).is_not_null())
        if spec.kind == "histogram":
            return self._histogram(spec, frame)
        aggs = self._aggregates(spec, dataset)
        if not spec.group_by:
            return frame.select(aggs)
        grouped = frame.group_by(spec.group_by).agg(dp.len(signed=True).alias(COUNT), *aggs)
        if spec.keys == "private":
            return grouped
        keys = _public_keys(spec.group_by, dataset)
        return keys.join(grouped, on=spec.group_by, how="left", nulls_equal=True)

    def _bounds(self, spec: QuerySpec, dataset: Dataset) -> tuple[float, float]:
        low, high = spec.bounds or dataset.fields[spec.field]["bounds"]
        return float(low), float(high)

    def _aggregates(self, spec: QuerySpec, dataset: Dataset) -> list[pl.Expr]:
        if spec.kind == "count":
            return [] if spec.group_by else [dp.len(signed=True).alias(COUNT)]
        low, high = self._bounds(spec, dataset)
        value = pl.col(spec.field).cast(pl.Float64).fill_null(low).clip(low, high)
        if spec.kind == "sum":
            return [value.dp.sum((low, high)).alias("sum")]
        if spec.kind == "mean":
            return [value.dp.mean((low, high)).alias("mean")]
        step = (high - low) / (QUANTILE_CANDIDATES - 1)
        candidates = [low + i * step for i in range(QUANTILE_CANDIDATES)]
        return [value.dp.quantile(q, candidates).alias(f"q{q:g}") for q in spec.quantiles]

    def _histogram(self, spec: QuerySpec, frame: pl.LazyFrame) -> pl.LazyFrame:
        edges = spec.bins
        labels = bin_labels(edges)
        value = pl.col(spec.field).cast(pl.Float64).fill_null(edges[0]).clip(edges[0], edges[-1])
        binned = frame.with_columns(
            value.cut(edges[1:-1], labels=labels, left_closed=True).alias("bin"))
        counts = binned.group_by("bin").agg(dp.len(signed=True).alias(COUNT))
        keys = pl.LazyFrame({"bin": pl.Series(labels, dtype=pl.Categorical)})
        return keys.join(counts, on="bin", how="left", nulls_equal=True)

    def _make(self, dataset: Dataset, plan: pl.LazyFrame, scale: float,
              threshold: int | None, delta: float | None = None) -> Measurement:
        """OpenDP's measurement of ``plan`` at ``scale``: Laplace noise in (ε, δ); or, with
        ``delta`` (Gaussian noise), zero-concentrated DP that OpenDP converts to (ε, δ) at
        that δ (docs/adr/0017)."""
        measure = dp.zero_concentrated_divergence() if delta is not None else \
            dp.approximate(dp.max_divergence())
        measurement = make_private_lazyframe(
            input_domain=dataset.domain,
            input_metric=dp.symmetric_distance(),
            output_measure=measure,
            lazyframe=plan, global_scale=scale, threshold=threshold,
        )
        if delta is None:
            return measurement
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta)

    def measurement(self, spec: QuerySpec, dataset: Dataset, purpose: str) -> Measurement:
        """The OpenDP measurement answering ``spec`` within (ε, δ), scale cached by shape."""
        plan = self._plan(spec, dataset, purpose)
        d_in = dataset.contribution_bound
        key = (dataset.id, dataset.version, purpose, spec.shape())
        with self._lock:
            cached = self._scales.get(key)
            if cached is not None:
                self._scales.move_to_end(key)
            else:
                busy = self._calibrating.setdefault(key, threading.Lock())
        if cached is None:
            with busy:  # concurrent queries of a new shape calibrate once
                with self._lock:
                    cached = self._scales.get(key)
                if cached is None:
                    try:
                        cached = self._calibrate(
                            dataset, plan, d_in, spec.epsilon, spec.delta,
                            spec.keys == "private" and bool(spec.group_by), _gaussian(spec))
                        with self._lock:
                            _keep(self._scales, key, cached)
                    finally:
                        with self._lock:
                            self._calibrating.pop(key, None)
        try:  # a cached scale skips calibration, not OpenDP's checks of this query's plan
            measurement = self._make(dataset, plan, *cached, _gaussian(spec))
            eps, delta = measurement.map(d_in)
        except (OpenDPException, ValueError) as exc:
            raise InputError(f"this query cannot be answered privately: "
                             f"{_first_line(exc)}") from None
        # a Gaussian release is charged the ρ that converts to exactly its ε: no slack
        slack = 0.0 if _gaussian(spec) is not None else 1e-9
        if eps > spec.epsilon * (1 + slack) or delta > spec.delta * (1 + 1e-9) + 1e-300:
            raise PolicyRefusal("the calibrated measurement exceeds the requested budget")
        return measurement

    def _calibrate(self, dataset: Dataset, plan: pl.LazyFrame, d_in: int, epsilon: float,
                   delta: float, threshold: bool, convert_at: float | None = None
                   ) -> tuple[float, int | None]:
        try:
            if convert_at is not None:
                # ε of the converted loss is not c / s: OpenDP's search finds the scale
                return binary_search(lambda s: self._make(
                    dataset, plan, s, None, convert_at).map(d_in)[0] <= epsilon, T=float), None
            if not threshold:
                return scale_for(
                    lambda s: self._make(dataset, plan, s, None).map(d_in)[0], epsilon), None
            scale = scale_for(
                lambda s: self._make(dataset, plan, s, 2**32 - 1).map(d_in)[0], epsilon)
            cut = binary_search(
                lambda t: self._make(dataset, plan, scale, t).map(d_in)[1] <= delta, T=int)
            return scale, cut
        except (OpenDPException, ValueError) as exc:
            raise InputError(f"this query cannot be answered privately: "
                             f"{_first_line(exc)}") from None

    def compile(self, spec: QuerySpec, dataset: Dataset, purpose: str) -> Compiled:
        """The measurement and the plan that answers it on this engine; refuses (before
        anything is spent) what the engine cannot answer within (ε, δ). An exact plan's
        accounting — OpenDP's measurement, its loss, the noise measurements and their
        check — is made once per shape; a later query of the shape takes it with its own
        filter values (``Compiled.with_filters``)."""
        key = (dataset.id, dataset.version, purpose, spec.shape())
        with self._lock:
            known = self._compiled.get(key)
            if known is not None:
                self._compiled.move_to_end(key)
        if known is not None:
            return known.with_filters(spec)
        compiled = compile_query(spec, dataset, purpose,
                                 self.measurement(spec, dataset, purpose), self.executor)
        if compiled.plan is not None:
            with self._lock:
                _keep(self._compiled, key, compiled)
        return compiled

    # -- running ---------------------------------------------------------------------
    def begin(self, compiled: Compiled, dataset: Dataset, withdrawn: Withdrawn,
              purpose: str) -> Future | None:
        """Start reading the exact aggregate of ``compiled`` (from ``compile()``) over the
        view less the patients ``withdrawn`` from ``purpose``, in the background — the
        ledger charges meanwhile. Nothing is noised here and nothing of it leaves but
        through ``run``; None for the kinds OpenDP reads itself."""
        if compiled.plan is None:
            return None
        return self._readers.submit(execution.exact, compiled, dataset, self.executor,
                                    withdrawn, purpose)

    def run(self, spec: QuerySpec, dataset: Dataset, compiled: Compiled,
            withdrawn: Withdrawn, purpose: str, begun: Future | None = None) -> Release:
        """Release the answer of ``compiled`` over the view less the patients ``withdrawn``
        from ``purpose`` — read by ``begun`` (``begin()`` with the same arguments) or here.
        Call only after the budget has been charged: the noise is drawn here."""
        exact = begun.result() if begun is not None else execution.exact(
            compiled, dataset, self.executor, withdrawn, purpose)
        frame = execution.release(compiled, dataset, exact, withdrawn)
        bounds = self._bounds(spec, dataset) if spec.field else None
        frame = post_process(spec, frame, bounds)
        return Release(rows_of(frame), compiled.epsilon, compiled.delta, frame.columns,
                       withdrawals=withdrawn.version)

    def preview(self, spec: QuerySpec, dataset: Dataset, purpose: str,
                alpha: float = 0.05) -> list[dict]:
        """Noise scale and (1 − alpha) error bound of each released statistic; no data read."""
        check_served(spec, self.executor)
        measurement = self.measurement(spec, dataset, purpose)
        summary = summarize_polars_measurement(measurement, alpha)
        return rows_of(summary)


def _gaussian(spec: QuerySpec) -> float | None:
    """The δ at which a Gaussian query's zCDP loss is converted; None for Laplace."""
    return spec.delta if spec.noise == "gaussian" else None


def _keep(kept: OrderedDict, key: tuple, value: object) -> None:
    """Keep ``value`` as the most recent of ``kept``, which holds ``COMPILED_SHAPES`` at most."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > COMPILED_SHAPES:
        kept.popitem(last=False)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def _public_keys(names: list[str], dataset: Dataset) -> pl.LazyFrame:
    columns = [pl.Series(n, dataset.fields[n]["categories"], dtype=dataset.schema[n])
               for n in names]
    frame = pl.DataFrame(columns[0])
    for col in columns[1:]:
        frame = frame.join(pl.DataFrame(col), how="cross")
    return frame.lazy()


def post_process(spec: QuerySpec, frame: pl.DataFrame,
                  bounds: tuple[float, float] | None) -> pl.DataFrame:
    """Small cells: a group whose noisy count is below 5 is withheld (post-processing of
    the DP release, so it costs nothing), as the guide's minimum-count rule asks."""
    # Rows come back in no particular order; present them in category (or bin) order.
    if spec.kind == "histogram":
        labels = bin_labels(spec.bins)
        frame = frame.with_columns(pl.col("bin").cast(pl.String).cast(pl.Enum(labels)))
        frame = frame.sort("bin")
    elif spec.group_by:
        frame = frame.sort(spec.group_by, nulls_last=True)
    frame = frame.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String))
    if spec.kind == "mean" and bounds is not None:
        # A noisy mean can fall outside the clamping bounds; bringing it back is free
        # post-processing and never moves it further from the truth.
        frame = frame.with_columns(pl.col("mean").clip(*bounds))
    if COUNT in frame.columns and (spec.group_by or spec.kind == "histogram"):
        small = pl.col(COUNT).fill_null(0) < SMALL_CELL
        values = [c for c in frame.columns if c not in (*spec.group_by, "bin")]
        frame = frame.with_columns(
            *(pl.when(small).then(None).otherwise(pl.col(c)).alias(c) for c in values),
            small.alias(SUPPRESSED),
        )
    return frame


def rows_of(frame: pl.DataFrame) -> list[dict]:
    rows = frame.to_dicts()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                row[k] = None
    return rows
