"""Statistics of a cohort: the cohort's one-row-per-patient frame built from the restricted
tables (``sandbox.cohorts.frame``), read by OpenDP with each patient one row.

The frame's catalogue — one field per variable, with the public bounds and categories
``sandbox.cohorts.checks`` derives — is the input domain OpenDP accounts over: adding or
removing one patient, whatever their number of visits, diagnoses, labs or prescriptions,
adds or removes one row (``CONTRIBUTION``), so a patient-level count carries the noise of
one patient, not of their visits. The frame is built only after the charge, with the
patient's consent for the grant's purpose and every withdrawal recorded before the
question began.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.mod import Measurement

from sandbox.cohorts import checks, frame
from sandbox.cohorts import spark as lowered
from sandbox.cohorts.spec import CohortQuery
from sandbox.data.catalog import CONSENT
from sandbox.gateway import noise
from sandbox.gateway.engine import Engine, Release, post_process, rows_of
from sandbox.gateway.execution import Compiled, check_served, compile_query
from sandbox.gateway.federation import Federation
from sandbox.gateway.grants import Grant
from sandbox.gateway.questions import served_dataset
from sandbox.queries import view
from sandbox.queries.checks import check_spec
from sandbox.queries.plan import consent_column
from sandbox.queries.spark import SparkExecutor
from sandbox.queries.view import Dataset
from sandbox.queries.withdrawals import WithdrawalLog, Withdrawn

CONTRIBUTION = 1  # rows per patient in a cohort's frame


@dataclass
class CohortFrame:
    """What OpenDP is told of a cohort's frame before it is built: its catalogue, schema
    and domain (the engine's view of a dataset, for one cohort)."""

    id: str
    version: str
    fields: dict[str, dict]
    schema: pl.Schema
    domain: object = field(repr=False)
    max_rows: int = 0  # the margin's bound on the frame's rows (sizes a fixed-point sum)
    contribution_bound: int = CONTRIBUTION

    def placeholder(self) -> pl.LazyFrame:
        return pl.LazyFrame(schema=self.schema)


def describe(query: CohortQuery, dataset: Dataset, allowed: set[str],
             purpose: str) -> CohortFrame:
    """The checked catalogue of ``query``'s cohort over ``dataset``; refuses (nothing
    spent) what the dataset, the grant's fields or the frame's catalogue do not allow."""
    fields = checks.check(query.cohort, dataset.metadata, allowed)
    check_spec(query.query, fields, set(fields))
    columns: dict[str, pl.DataType] = {}
    for name, f in fields.items():
        if f["type"] == "string":
            columns[name] = pl.Enum(f["categories"])
        else:
            columns[name] = pl.Int64 if f["type"] == "integer" else pl.Float64
    columns[consent_column(purpose)] = pl.Boolean
    schema = pl.Schema(columns)
    patients = int(dataset.metadata["sample_size"]["patients"])
    return CohortFrame(f"{dataset.id}#cohort-{query.cohort.fingerprint()[:16]}",
                       dataset.version, fields, schema, view.domain(schema, patients),
                       view.longest(patients))


def patients(query: CohortQuery, dataset: Dataset, purpose: str,
             withdrawn: Withdrawn) -> pl.LazyFrame:
    """The cohort's frame over ``dataset``'s restricted tables, keyed by patient: the
    patients who consent to ``purpose`` and have not withdrawn from it, one row each."""
    restricted = dataset.directory / "restricted"
    key = dataset.metadata["patient_key"]
    consenting = frame.consenting(pl.scan_parquet(restricted / f"{CONSENT}.parquet"), key,
                                  purpose, withdrawn.excluded(purpose))
    return frame.build(query.cohort, dataset.metadata,
                       lambda table: pl.scan_parquet(restricted / f"{table}.parquet"),
                       consenting)


def build(query: CohortQuery, dataset: Dataset, described: CohortFrame, purpose: str,
          withdrawn: Withdrawn) -> pl.LazyFrame:
    """What OpenDP reads: ``patients`` without the key, in ``described``'s schema."""
    return patients(query, dataset, purpose, withdrawn).with_columns(
        pl.lit(True).alias(consent_column(purpose))).select(
        [pl.col(n).cast(t) for n, t in described.schema.items()])


def preview(query: CohortQuery, dataset: Dataset, grant: Grant, engine: Engine,
            alpha: float) -> list[dict]:
    """Noise scale and (1 − alpha) error bound of each statistic; nothing read."""
    check_served(query.query, engine.executor)
    described = describe(query, dataset, set(grant.fields), grant.purpose)
    measurement = engine.measurement(query.query, described, grant.purpose)
    return rows_of(summarize_polars_measurement(measurement, alpha))


class CohortQuestion:
    """A statistic of a cohort over a dataset this gateway serves (``ledger.Question``)."""

    def __init__(self, grant: Grant, spec: CohortQuery, datasets: dict[str, Dataset],
                 federation: Federation, engine: Engine, withdrawals: WithdrawalLog) -> None:
        self.grant, self.spec = grant, spec
        self._datasets, self._federation = datasets, federation
        self._engine, self._withdrawals = engine, withdrawals
        self._withdrawn: Withdrawn | None = None

    def resolve(self) -> Dataset:
        # checked and calibrated before the charge: a refusal spends nothing
        self._dataset = served_dataset(self.grant, self.spec.dataset, self._datasets,
                                       self._federation)
        self._described = describe(self.spec, self._dataset, set(self.grant.fields),
                                   self.grant.purpose)
        self._measurement: Measurement = self._engine.measurement(
            self.spec.query, self._described, self.grant.purpose)
        self._compiled: Compiled | None = None
        if isinstance(self._engine.executor, SparkExecutor):
            # Spark builds the frame and its exact aggregates; OpenDP's noise is added
            # here (docs/adr/0013), at the measurement's scales
            self._compiled = compile_query(self.spec.query, self._described,
                                           self.grant.purpose, self._measurement,
                                           self._engine.executor)
        return self._dataset

    def begin(self) -> None:
        # the withdrawals recorded before this line are in the answer
        self._withdrawn = self._withdrawals.current()

    def abandon(self) -> None:
        """Nothing was read ahead."""

    def run(self, claim: dict) -> Release:
        if self._withdrawn is None:
            self.begin()
        assert self._withdrawn is not None
        if self._compiled is not None:
            released = self._external(self._compiled)
        else:
            rows = build(self.spec, self._dataset, self._described, self.grant.purpose,
                         self._withdrawn)
            released = self._measurement(rows).collect()
        query = self.spec.query
        bounds = None
        if query.field:
            low, high = query.bounds or self._described.fields[query.field]["bounds"]
            bounds = (float(low), float(high))
        released = post_process(query, released, bounds)
        epsilon, delta = self._measurement.map(CONTRIBUTION)
        return Release(rows_of(released), float(epsilon), float(delta), released.columns,
                       withdrawals=self._withdrawn.version)

    def _external(self, compiled: Compiled) -> pl.DataFrame:
        """OpenDP's noise on the exact aggregates the engine computed over the frame it
        built (``sandbox.cohorts.spark``)."""
        assert compiled.plan is not None and compiled.noise is not None
        assert self._withdrawn is not None
        rows = lowered.patients(self.spec.cohort, self._dataset.metadata,
                                self._dataset.directory, self.grant.purpose,
                                self._withdrawn.excluded(self.grant.purpose))
        assert isinstance(self._engine.executor, SparkExecutor)
        exact = self._engine.executor.aggregate_rows(compiled.plan, rows)
        return noise.release(compiled.plan, compiled.noise, exact)

