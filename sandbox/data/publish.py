"""Writing the published tables a bucket at a time: the kept records with their labels and
pseudonyms, each kept patient's consent, and (for a public dataset) counts per class — while
counting what the catalog says about them.

Records keep the order of the extract's base table and consent is sorted by pseudonym, as
if each table had been sorted whole: rows go to buckets by *ranges* of the sort key, so
writing the buckets in turn, each sorted, gives one sorted file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from sandbox.data import identifiers
from sandbox.data.anonymize import Column, Outcome
from sandbox.data.catalog import RecordStats, listed_fields
from sandbox.data.codes import P
from sandbox.data.extract import ROW
from sandbox.data.hierarchy import icd10_label
from sandbox.data.pseudonym import pseudonymise
from sandbox.data.screening import ID, PID, Screened
from sandbox.data.spec import Icd10Hierarchy, Spec
from sandbox.data.spill import GroupTotals, Spill, Workspace, hashed, ranged
from sandbox.data.tables import Source
from sandbox.errors import PolicyRefusal

_PREFIX = 8  # hex digits of a pseudonym that pick its consent bucket


@dataclass
class Published:
    """What was written, and the facts the catalog and the report need."""

    stats: RecordStats
    consented_by: list[str]
    records: Spill | None = None  # ordered buckets of the records table
    consent: Spill | None = None  # ordered buckets of the consent table
    aggregates: pl.DataFrame | None = None


def consent_by_patient(consent: Source, screened: Screened, work: Workspace) -> Spill:
    """The raw consent rows under the ID the pseudonym is keyed on, bucketed like the
    published rows."""
    by_pid = work.spill("consent-by-pid", schema=consent.schema())
    for batch in consent.chunks(work.limit):
        by_pid.add(batch, hashed(pl.col(PID), work.count))
    by_pid.close()
    by_id = work.spill("consent-by-id")
    for index in range(work.count):
        mapping = screened.mapping.read(index).unique()
        rows = by_pid.read(index).join(mapping, on=PID, how="inner").drop(PID)
        by_id.add(rows, hashed(pl.col(ID), work.count))
    by_id.close()
    by_pid.remove()
    screened.mapping.remove()
    return by_id


def publish(spec: Spec, key: bytes, screened: Screened, outcome: Outcome,
            consent: Spill | None, work: Workspace, *, aggregates: list[str] | None = None
            ) -> Published:
    """Label, pseudonymise and bucket every kept record and its patient's consent (none for
    an event table: ``consent`` None); with ``aggregates`` (a public dataset), count
    patients and records per combination of those columns instead of keeping rows."""
    patient = spec.pseudonym.column
    c = spec.consent
    listed = listed_fields(spec)
    labels = {f.name: f.hierarchy.label for f in spec.fields
              if isinstance(f.hierarchy, Icd10Hierarchy) and f.hierarchy.label}
    names = {label: _names(outcome.columns[code]) for code, label in labels.items()}
    frequent: dict[str, dict[str, int]] = {name: defaultdict(int) for name in listed}
    nulls = dict.fromkeys([f.name for f in spec.fields], 0)
    consented_by: dict[str, int] = defaultdict(int)  # patients per signer
    signer_hits: list[identifiers.Hit] = []
    records_out = work.spill("records-out") if aggregates is None else None
    consent_out = (work.spill("consent-out") if aggregates is None and consent is not None
                   else None)
    counts = work.totals("aggregates", aggregates) if aggregates is not None else None
    kept_records = kept_patients = 0
    # numbers as the catalog types them (what dummy data has): 64-bit, whatever the extract
    widths = {f.name: pl.Int64 if f.type == "integer" else pl.Float64 for f in spec.fields
              if f.hierarchy is None and f.type in ("integer", "float")}
    rows = outcome.rows
    for index in range(work.count):
        keep = rows.keep(index)
        if not keep.any():
            continue
        codes = rows.codes.read(index)
        kept = screened.published.read(index).filter(pl.Series(keep)).with_columns(
            codes[P].filter(pl.Series(keep)).alias(P),
            *(column.output(codes[name].to_numpy()[keep])
              for name, column in outcome.columns.items()),
        )
        for code, label in labels.items():
            kept = kept.with_columns(pl.col(code).replace_strict(names[label]).alias(label))
        ids = kept[ID].unique()
        pseudonyms = pl.DataFrame({ID: ids, patient: pseudonymise(ids, key)})
        kept = kept.join(pseudonyms, on=ID, how="left", maintain_order="left")
        kept_records += kept.height
        kept_patients += len(ids)
        for name in nulls:
            nulls[name] += kept[name].null_count()
        for name in listed:
            for value, n in (kept.group_by(name).agg(pl.col(P).n_unique()).drop_nulls(name)
                             .iter_rows()):
                frequent[name][str(value)] += n

        if consent is None:
            records_out.add(kept.select(ROW, patient, *_record_columns(spec)).cast(widths),
                            ranged(pl.col(ROW), screened.rows, work.count))
            continue
        mine = consent.read(index).filter(pl.col(ID).is_in(ids.implode()))
        mine = (mine.sort("_crow").unique(ID, keep="first", maintain_order=True)
                .select(ID, *c.purposes, "consented_by", "withdrawn_at"))
        missing = ids.filter(~ids.is_in(mine[ID].implode()))
        # A patient with no consent record has consented to nothing.
        table = pl.concat([mine, pl.DataFrame({ID: missing}).with_columns(
            *(pl.lit(False).alias(p) for p in c.purposes),
            pl.lit(None, dtype=pl.String).alias("consented_by"),
            pl.lit(None, dtype=pl.Date).alias("withdrawn_at"),
        )], how="vertical_relaxed").join(pseudonyms, on=ID)
        for value, n in table["consented_by"].drop_nulls().value_counts().iter_rows():
            consented_by[value] += n
        signer_hits += identifiers.number_hits(
            table.select(pl.int_range(pl.len()).alias(ROW), "consented_by"), ["consented_by"])

        if counts is not None:
            withdrawn = table.filter(pl.col("withdrawn_at").is_not_null())[ID]
            counts.add(kept.filter(~pl.col(ID).is_in(withdrawn.implode())).group_by(aggregates)
                       .agg(pl.col(P).n_unique().alias("patients"), pl.len().alias("records")))
        else:
            records_out.add(kept.select(ROW, patient, *_record_columns(spec)).cast(widths),
                            ranged(pl.col(ROW), screened.rows, work.count))
            consent_out.add(table.select(patient, *c.purposes, "consented_by", "withdrawn_at"),
                            ranged(pl.col(patient).str.slice(0, _PREFIX).str.to_integer(base=16),
                                   16 ** _PREFIX, work.count))
    k = spec.privacy.k
    findings = identifiers.combine(signer_hits, ["consented_by"])
    if findings:
        raise PolicyRefusal("direct identifiers found; nothing was published:\n"
                            + "\n".join(f"  - consent {f.describe()}" for f in findings))
    stats = RecordStats(
        patients=kept_patients, records=kept_records,
        nullable={name: n > 0 for name, n in nulls.items()},
        frequent={name: sorted(v for v, n in values.items() if n >= k)
                  for name, values in frequent.items()},
    )
    # the catalog names only signers ("本人", "监护人") that cover k patients
    published = Published(stats, sorted(v for v, n in consented_by.items() if n >= k),
                          records_out, consent_out)
    if counts is not None:
        published.aggregates = _aggregates(counts, aggregates, k)
    else:
        records_out.close()
        if consent_out is not None:
            consent_out.close()
    return published


def write_sorted(spill: Spill, by: str, path: Path, *, drop: list[str] = ()) -> None:
    """Write the buckets of ``spill`` in turn, each sorted by ``by``, as one Parquet file."""
    writer = None
    try:
        for part in spill:
            if not part.height:
                continue
            table = part.sort(by).drop(drop).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    spill.remove()


def _record_columns(spec: Spec) -> list[str]:
    columns = []
    for f in spec.fields:
        columns.append(f.name)
        if isinstance(f.hierarchy, Icd10Hierarchy) and f.hierarchy.label:
            columns.append(f.hierarchy.label)
    return columns


def _names(column: Column) -> dict[str, str]:
    """Chinese name of every label the column can have now."""
    return {label: icd10_label(label) for label in np.unique(column.current().astype(str))}


def _aggregates(counts: GroupTotals, by: list[str], k: int) -> pl.DataFrame:
    groups = list(counts.groups([pl.col("patients").sum().cast(pl.Int64),
                                 pl.col("records").sum().cast(pl.Int64)]))
    counts.remove()
    return pl.concat(groups).filter(pl.col("patients") >= k).sort(by)
