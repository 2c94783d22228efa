"""Where a compiled query runs: an exact-aggregate plan on the configured engine (Polars or
Spark) with OpenDP's noise added here, or — for the kinds whose exact part only OpenDP can
compute (quantiles) — OpenDP's measurement itself on the Polars view.

``compile_query`` does everything that can refuse before the ledger charges (the plan, the
noise measurements and their loss); ``exact`` only reads rows — it may run while the charge
is being made, since nothing of its result leaves unnoised —, and ``release`` draws the
noise, once the charge is made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import polars as pl
from opendp.mod import Measurement

from sandbox.errors import InputError
from sandbox.gateway import noise
from sandbox.queries.exact import Executor, PolarsExecutor
from sandbox.queries.plan import EXACT_KINDS, ExactPlan, compile_plan
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import Dataset
from sandbox.queries.withdrawals import Withdrawn


@dataclass(frozen=True)
class Compiled:
    """A query ready to run: OpenDP's measurement (the accounting) and, on the exact path,
    the plan and the noise drawn on its result."""

    measurement: Measurement
    epsilon: float  # OpenDP's loss of the measurement: what the release records
    delta: float
    plan: ExactPlan | None = None
    noise: noise.Noise | None = None

    def with_filters(self, spec: QuerySpec) -> Compiled:
        """This compiled query of one shape, for ``spec`` of the same shape: the plan with
        ``spec``'s filter values, the accounting unchanged. A filter's values never change
        a plan's stability, its noise scales or its fixed point (they are checked against
        the catalogue before this), so a shape's accounting holds for every value."""
        assert self.plan is not None
        return replace(self, plan=replace(self.plan, filters=tuple(spec.filters)))


def executor_for(engine: str, remote: str) -> Executor:
    """The configured engine: Polars here, or Spark over Spark Connect at ``remote``."""
    if engine == "spark":
        from sandbox.queries.spark import SparkExecutor
        return SparkExecutor(remote)
    return PolarsExecutor()


def check_served(spec: QuerySpec, executor: Executor) -> None:
    """Refuse a kind this engine cannot answer (docs/adr/0013)."""
    if spec.kind not in EXACT_KINDS and executor.name != "polars":
        raise InputError(
            f"{spec.kind} queries are not served by this gateway's {executor.name} "
            "engine: OpenDP scores their candidates itself, which it cannot do over "
            "an external engine's rows; ask for a histogram over the same range and "
            "read the quantile off its cumulative counts")


class Rows(Protocol):
    """What a plan is compiled against: a dataset's view, or a cohort's frame."""

    fields: dict[str, dict]

    @property
    def contribution_bound(self) -> int: ...
    @property
    def max_rows(self) -> int: ...


def compile_query(spec: QuerySpec, dataset: Rows, purpose: str, measurement: Measurement,
                  executor: Executor) -> Compiled:
    check_served(spec, executor)
    epsilon, delta = measurement.map(dataset.contribution_bound)
    if spec.kind not in EXACT_KINDS:
        return Compiled(measurement, float(epsilon), float(delta))
    stats = noise.statistics(measurement)
    plan = compile_plan(spec, dataset.fields, purpose, dataset.max_rows, frozenset(),
                        noise.sum_scale(stats))
    return Compiled(measurement, float(epsilon), float(delta), plan,
                    noise.build(plan, stats, dataset.contribution_bound, epsilon, delta))


def exact(compiled: Compiled, dataset: Dataset, executor: Executor, withdrawn: Withdrawn,
          purpose: str) -> pl.DataFrame | None:
    """The exact aggregate of ``compiled``'s plan over the view less the patients
    ``withdrawn`` from ``purpose``: nothing noised, and nothing of it ever leaves except
    through ``release``; None for the kinds OpenDP computes itself (quantiles)."""
    if compiled.plan is None:
        return None
    plan = replace(compiled.plan, excluded=withdrawn.excluded(purpose))
    return executor.aggregate(plan, str(dataset.view))


def release(compiled: Compiled, dataset: Dataset, exact_frame: pl.DataFrame | None,
            withdrawn: Withdrawn) -> pl.DataFrame:
    """The released frame (before post-processing): OpenDP's noise on ``exact_frame``, or
    OpenDP's own measurement on the view less ``withdrawn``. Call only after the charge."""
    if compiled.plan is None:
        return compiled.measurement(dataset.scan(withdrawn)).collect()
    assert exact_frame is not None and compiled.noise is not None
    return noise.release(compiled.plan, compiled.noise, exact_frame)
