"""The bounded, consented view of a dataset: what every query — central or federated —
reads. At most ``contribution_bound`` rows per patient (a seeded sample, so one patient
changes at most that many rows — the privacy unit OpenDP accounts for), the patient's
consent for each purpose as given in the extract (boolean columns), the patient's pseudonym
(so that withdrawals recorded since apply to every query, ``without``, with no rebuild),
and text columns encoded against the public category lists. The view is an Arrow IPC file
that OpenDP's Polars plugin scans directly, so no rows are copied through Python per query."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema

from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.data.metadata import load as load_metadata
from sandbox.errors import InputError

# The view's patient column: kept so that withdrawals apply per query; a query never names
# it (it is no field of the catalog).
PATIENT = "_patient"
VIEW_FORMAT = "v2"  # bumped when a view's columns change, so an old cached view is not reused


def consent_column(purpose: str) -> str:
    return f"_consent_{purpose}"


@dataclass
class Dataset:
    """A dataset the gateway serves: its public metadata and its prepared view."""

    id: str
    directory: Path
    metadata: dict
    view: Path
    schema: pl.Schema
    fields: dict[str, dict]
    purposes: list[str]
    domain: object = None

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def contribution_bound(self) -> int:
        return int(self.metadata["contribution_bound"])

    def placeholder(self) -> pl.LazyFrame:
        return pl.LazyFrame(schema=self.schema)

    def scan(self) -> pl.LazyFrame:
        return pl.scan_ipc(self.view, memory_map=True)


def contains(dataset: Dataset, pseudonym: str) -> bool:
    """Whether any restricted record of ``dataset`` belongs to ``pseudonym``."""
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    return records.filter(pl.col("pseudonym") == pseudonym).select(pl.len()).collect(
    ).item() > 0


def holding(dataset: Dataset, pseudonyms: list[str]) -> int:
    """How many of ``pseudonyms`` have a restricted record in ``dataset``."""
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    wanted = pl.LazyFrame({"pseudonym": pseudonyms}, schema={"pseudonym": pl.String})
    return records.select("pseudonym").unique().join(wanted, on="pseudonym", how="semi"
                                                     ).select(pl.len()).collect().item()


def patients(dataset: Dataset) -> list[str]:
    """The pseudonyms of every patient with a restricted record in ``dataset``."""
    key = dataset.metadata["patient_key"]
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    return records.select(pl.col(key).unique()).collect()[key].to_list()


def prepare(directory: Path, cache: Path) -> Dataset:
    """The view of the dataset in ``directory``, built once per dataset version (a view
    already in ``cache`` is reused: nothing in it changes while the version lives — consent
    withdrawals are applied per query, ``without``)."""
    directory = Path(directory)
    metadata = load_metadata(directory).document()
    if metadata["grade"] == "public":
        raise InputError(f"{metadata['id']} is a public aggregate dataset; nothing to serve")
    fields = {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]}
    purposes = [p["id"] for p in metadata["purposes"]]
    target = cache / f"{metadata['id']}-{metadata['version']}.{VIEW_FORMAT}.arrow"
    if not target.is_file():
        _build(directory, metadata, fields, purposes, target)
    schema = pl.Schema(pl.scan_ipc(target).collect_schema())
    return Dataset(metadata["id"], directory, metadata, target, schema,
                   fields, purposes, _domain(schema, metadata))


def _build(directory: Path, metadata: dict, fields: dict[str, dict], purposes: list[str],
           target: Path) -> None:
    patient = metadata["patient_key"]
    records = pl.scan_parquet(directory / "restricted" / f"{RECORDS}.parquet")
    consent = pl.scan_parquet(directory / "restricted" / f"{CONSENT}.parquet").select(
        patient, *((pl.col(p).fill_null(False) & pl.col("withdrawn_at").is_null())
                   .alias(consent_column(p)) for p in purposes))
    encode = []
    for name, f in fields.items():
        if f["type"] == "string" and f.get("categories") is not None and f["role"] != "label":
            encode.append(pl.col(name).cast(pl.Enum(f["categories"]), strict=False))
    bound = int(metadata["contribution_bound"])
    # Keep at most `bound` rows per patient, chosen by a seeded shuffle: which rows is a
    # matter of utility, how many is the privacy unit.
    seed = int(metadata.get("spec_sha256", "0" * 8)[:8], 16)
    view = (
        records
        .filter(pl.int_range(pl.len()).shuffle(seed=seed).over(patient) < bound)
        .join(consent, on=patient, how="left")
        .with_columns(*(pl.col(consent_column(p)).fill_null(False) for p in purposes))
        .with_columns(encode)
        .drop(*(n for n, f in fields.items() if f["role"] == "label"))
        .rename({patient: PATIENT})
        .collect(engine="streaming")
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".arrow.tmp")
    view.write_ipc(tmp)
    tmp.replace(target)


def without(frame: pl.LazyFrame, excluded: frozenset[str]) -> pl.LazyFrame:
    """The view's rows less those of the patients in ``excluded`` (their withdrawals):
    applied to the rows before a measurement reads them — removing rows never adds to a
    patient's influence, so the measurement's accounting is unchanged."""
    if not excluded:
        return frame
    gone = pl.LazyFrame({PATIENT: sorted(excluded)}, schema={PATIENT: pl.String})
    return frame.join(gone, on=PATIENT, how="anti")


def _domain(schema: pl.Schema, metadata: dict) -> object:
    records = metadata["sample_size"]["records"]
    max_length = 10 ** math.ceil(math.log10(max(records, 1) * 1.5 + 1))
    return with_margin(_lazyframe_domain_from_schema(schema),
                       Margin(by=(), max_length=max_length))
