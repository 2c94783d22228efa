"""The bounded, consented view of a dataset: what every query — central or federated —
reads. At most ``contribution_bound`` rows per patient (a seeded sample, so one patient
changes at most that many rows — the privacy unit OpenDP accounts for), the patient's live
consent for each purpose as boolean columns (withdrawals applied), and text columns encoded
against the public category lists. The view is an Arrow IPC file that OpenDP's Polars
plugin scans directly, so no rows are copied through Python per query."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema

from sandbox.data.catalog import CONSENT, RECORDS
from sandbox.errors import InputError
from sandbox.purposes import ALL as ALL_PURPOSES


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


def patients(dataset: Dataset) -> list[str]:
    """The pseudonyms of every patient with a restricted record in ``dataset``."""
    key = dataset.metadata["patient_key"]
    records = pl.scan_parquet(dataset.directory / "restricted" / f"{RECORDS}.parquet")
    return records.select(pl.col(key).unique()).collect()[key].to_list()


def prepare(directory: Path, cache: Path, withdrawals: dict[str, set[str]]) -> Dataset:
    """Build (or rebuild) the view of the dataset in ``directory``. ``withdrawals`` maps a
    pseudonym to the purposes withdrawn ("*" for all)."""
    directory = Path(directory)
    try:
        metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{directory} is not an onboarded dataset: {exc}") from None
    if metadata.get("grade") == "public":
        raise InputError(f"{metadata['id']} is a public aggregate dataset; nothing to serve")
    fields = {f["name"]: f for f in metadata["tables"][RECORDS]["fields"]}
    purposes = [p["id"] for p in metadata["purposes"]]
    patient = metadata["patient_key"]
    records = pl.scan_parquet(directory / "restricted" / f"{RECORDS}.parquet")
    consent = pl.scan_parquet(directory / "restricted" / f"{CONSENT}.parquet")

    withdrawn = pl.DataFrame(
        [(p, purpose) for p, purposes_ in withdrawals.items() for purpose in purposes_],
        schema={patient: pl.String, "_purpose": pl.String}, orient="row",
    )
    consent_cols = []
    for purpose in purposes:
        live = withdrawn.filter(pl.col("_purpose").is_in([purpose, ALL_PURPOSES]))[patient]
        consent_cols.append(
            (pl.col(purpose).fill_null(False) & pl.col("withdrawn_at").is_null()
             & ~pl.col(patient).is_in(live.implode())).alias(consent_column(purpose))
        )
    consent = consent.select(patient, *consent_cols)

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
        .drop(patient, *(n for n, f in fields.items() if f["role"] == "label"))
        .collect(engine="streaming")
    )
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{metadata['id']}-{metadata['version']}.arrow"
    tmp = target.with_suffix(".arrow.tmp")
    view.write_ipc(tmp)
    tmp.replace(target)
    return Dataset(metadata["id"], directory, metadata, target, view.schema,
                   fields, purposes, _domain(view.schema, metadata))


def _domain(schema: pl.Schema, metadata: dict) -> object:
    records = metadata["sample_size"]["records"]
    max_length = 10 ** math.ceil(math.log10(max(records, 1) * 1.5 + 1))
    return with_margin(_lazyframe_domain_from_schema(schema),
                       Margin(by=(), max_length=max_length))
