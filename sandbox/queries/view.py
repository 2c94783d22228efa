"""The bounded, consented view of a dataset: what every query — central or federated —
reads. At most ``contribution_bound`` rows per patient (chosen by a stored rank key, so one
patient changes at most that many rows — the privacy unit OpenDP accounts for; built once
per dataset version by either engine, see ``bounded``), the patient's consent for each
purpose as boolean columns, and text columns against the public category lists.
Withdrawals recorded after onboarding (``withdrawals``) are applied per query, never by a
rebuild: an exact-aggregate plan anti-joins a purpose's withdrawn pseudonyms, and ``scan``
applies them to the consent columns for OpenDP's own plans."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema

from sandbox.data.catalog import RECORDS
from sandbox.data.metadata import load as load_metadata
from sandbox.errors import InputError
from sandbox.queries import bounded
from sandbox.queries.exact import PolarsExecutor
from sandbox.queries.plan import PATIENT, consent_column
from sandbox.queries.withdrawals import Withdrawn
from sandbox.secretfile import read_or_create

__all__ = ["Dataset", "consent_column", "contains", "holding", "patients", "prepare"]

RANK_KEY = "rank.key"


@dataclass
class Dataset:
    """A dataset the gateway serves: its public metadata and its prepared view."""

    id: str
    directory: Path
    metadata: dict
    view: Path  # the bounded view's directory of Parquet files
    schema: pl.Schema
    fields: dict[str, dict]
    purposes: list[str]
    domain: object = None
    built: dict = field(default_factory=dict)  # the view's manifest
    _patients: pl.Series | None = field(default=None, repr=False)

    def patient_index(self) -> pl.Series:
        """Every patient with a restricted record, sorted (read once: a dataset version
        never changes), so that asking for one patient is a binary search, not a scan."""
        if self._patients is None:
            key = self.metadata["patient_key"]
            records = pl.scan_parquet(self.directory / "restricted" / f"{RECORDS}.parquet")
            self._patients = records.select(pl.col(key).unique().sort()).collect()[key]
        return self._patients

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def contribution_bound(self) -> int:
        return int(self.metadata["contribution_bound"])

    @property
    def max_rows(self) -> int:
        """The most rows a query may read, as OpenDP's margin states it."""
        return _max_length(self.metadata)

    def placeholder(self) -> pl.LazyFrame:
        return pl.LazyFrame(schema=self.schema)

    def scan(self, withdrawals: Withdrawn | None = None) -> pl.LazyFrame:
        """The view as OpenDP's plans read it: text as Enum, ``withdrawals`` applied to the
        consent columns (removing rows from a purpose never adds to a patient's influence,
        so a measurement's accounting is unchanged)."""
        frame = pl.scan_parquet(f"{self.view}/**/*.parquet", hive_partitioning=False)
        withdrawals = withdrawals or Withdrawn()
        withdrawn = [
            (pl.col(consent_column(p)) & ~pl.col(PATIENT).is_in(sorted(gone)))
            .alias(consent_column(p))
            for p in self.purposes if (gone := withdrawals.excluded(p))]
        return frame.with_columns(withdrawn).select(
            [pl.col(n).cast(t) for n, t in self.schema.items()])


def contains(dataset: Dataset, pseudonym: str) -> bool:
    """Whether any restricted record of ``dataset`` belongs to ``pseudonym``."""
    index = dataset.patient_index()
    at = index.search_sorted(pseudonym)
    return at < index.len() and index[at] == pseudonym


def holding(dataset: Dataset, pseudonyms: list[str]) -> int:
    """How many of ``pseudonyms`` have a restricted record in ``dataset``."""
    wanted = pl.Series(pseudonyms, dtype=pl.String).unique()
    return int(wanted.is_in(dataset.patient_index()).sum())


def patients(dataset: Dataset) -> list[str]:
    """The pseudonyms of every patient with a restricted record in ``dataset``."""
    return dataset.patient_index().to_list()


def prepare(directory: Path, cache: Path, engine: bounded.Builder | None = None) -> Dataset:
    """The dataset in ``directory`` with its bounded view (built by ``engine``, Polars by
    default, if this version has none in ``cache`` yet: a view never changes once built)."""
    directory = Path(directory)
    metadata = load_metadata(directory).document()
    if metadata["grade"] == "public":
        raise InputError(f"{metadata['id']} is a public aggregate dataset; nothing to serve")
    cache = Path(cache)
    # The rank key's secret lives with the views it chose rows for.
    secret = read_or_create(cache / RANK_KEY, lambda: os.urandom(32))
    target, built = bounded.ensure(directory, metadata, secret, cache,
                                   engine or PolarsExecutor())
    fields = {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]}
    purposes = [p["id"] for p in metadata["purposes"]]
    schema = _schema(bounded.served_fields(metadata), purposes, metadata["patient_key"])
    dataset = Dataset(metadata["id"], directory, metadata, target, schema, fields, purposes,
                      _domain(schema, metadata), built)
    dataset.patient_index()  # now, not in the first withdrawal's answer
    return dataset


_TYPES = {"string": pl.String, "integer": pl.Int64, "float": pl.Float64,
          "boolean": pl.Boolean}


def _schema(fields: dict[str, dict], purposes: list[str], patient: str) -> pl.Schema:
    """The columns OpenDP's plans see: public fields (text as Enum of its categories),
    then one consent column per purpose — never the patient key."""
    columns: dict[str, pl.DataType] = {}
    for name, f in fields.items():
        if name == patient:
            continue
        if f["type"] == "string" and f.get("categories") is not None:
            columns[name] = pl.Enum(f["categories"])
        else:
            columns[name] = _TYPES.get(f["type"], pl.String)
    columns.update({consent_column(p): pl.Boolean for p in purposes})
    return pl.Schema(columns)


def _max_length(metadata: dict) -> int:
    return longest(metadata["sample_size"]["records"])


def longest(rows: int) -> int:
    """The margin's bound on a frame of about ``rows`` rows: the power of ten above 1.5×
    (public: it depends on the published sample size only)."""
    return 10 ** math.ceil(math.log10(max(rows, 1) * 1.5 + 1))


def domain(schema: pl.Schema, rows: int) -> object:
    """OpenDP's input domain of a frame of ``schema`` with at most ``longest(rows)`` rows."""
    return with_margin(_lazyframe_domain_from_schema(schema),
                       Margin(by=(), max_length=longest(rows)))


def _domain(schema: pl.Schema, metadata: dict) -> object:
    return domain(schema, metadata["sample_size"]["records"])
