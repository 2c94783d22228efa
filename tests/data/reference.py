"""Onboarding as it ran before it streamed: the whole joined extract collected into one
frame and every step computed on it in memory. The oracle that bucketed onboarding must
match on small extracts — the same records, consent, catalog metadata and risk report —
whatever the number of buckets. Valid inputs only (refusals have their own tests)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sandbox.data import catalog
from sandbox.data.catalog import AGGREGATES, RecordStats, listed_fields
from sandbox.data.extract import _derive
from sandbox.data.hierarchy import icd10_label
from sandbox.data.onboard import _part_report, _report
from sandbox.data.pseudonym import load_key, pseudonymise
from sandbox.data.spec import Icd10Hierarchy, Spec, load_spec
from tests.data.reference_anonymize import Outcome, generalise


@dataclass(frozen=True)
class Reference:
    records: pl.DataFrame | None
    consent: pl.DataFrame
    aggregates: pl.DataFrame | None
    metadata: dict
    report: dict


def onboard_in_memory(raw: Path, spec_path: Path, key_file: Path) -> Reference:
    spec = load_spec(spec_path)
    key = load_key(key_file)
    frame = _read(Path(raw), spec)
    patient = spec.pseudonym.column
    pseudonyms = pseudonymise(frame[spec.pseudonym.source], key)
    published = frame.select(pseudonyms.alias(patient),
                             *(pl.col(f.source_column).alias(f.name) for f in spec.fields))
    quasi = [f.name for f in spec.quasi_identifiers]
    sensitive = spec.sensitive.name if spec.sensitive else None
    before = measure(published, quasi, sensitive, patient, spec.privacy.k)
    outcome = generalise(
        published, {f.name: f.hierarchy for f in spec.quasi_identifiers},
        (spec.sensitive.name, spec.sensitive.hierarchy) if spec.sensitive else None,
        patient, spec.privacy.k, spec.privacy.max_suppression)
    records = _records(spec, published, outcome)
    after = measure(records, quasi, sensitive, patient, spec.privacy.k)
    mapping = frame.select(pl.col(spec.source.patient_column).alias("_pid"),
                           pseudonyms.alias(patient)).unique()
    consent = _consent(spec, Path(raw), mapping, records[patient].unique())
    year = frame[spec.dataset.year_column]
    years = (int(year.dt.year().min()), int(year.dt.year().max()))
    stats = RecordStats(
        patients=records[patient].n_unique(), records=records.height,
        nullable={f.name: bool(records[f.name].null_count()) for f in spec.fields},
        frequent={name: _frequent(records, name, patient, spec.privacy.k)
                  for name in listed_fields(spec)})
    metadata = catalog.build(spec, stats,
                             sorted(consent["consented_by"].drop_nulls().value_counts()
                                    .filter(pl.col("count") >= spec.privacy.k)
                                    ["consented_by"].to_list()),
                             years, hashlib.sha256(Path(spec_path).read_bytes()).hexdigest())
    report = _report(spec, _part_report(
        before, after, outcome,
        {name: np.bincount(c.codes[outcome.keep], minlength=len(c.values) + 1)
         for name, c in outcome.columns.items()}))
    records = records.select(f["name"] for f in metadata["tables"]["records"]["fields"])
    if spec.dataset.grade == "public":
        metadata = catalog.public_aggregates(metadata)
        aggregates = _aggregates(metadata, records, consent, patient, spec.privacy.k)
        return Reference(None, consent, aggregates, metadata, report)
    return Reference(records, consent, None, metadata, report)


def measure(frame: pl.DataFrame, quasi: list[str], sensitive: str | None, patient: str,
            k: int) -> dict:
    aggs = [pl.len().alias("records"), pl.col(patient).n_unique().alias("patients")]
    if sensitive is not None:
        aggs.append(pl.col(sensitive).n_unique().alias("l"))
    classes = frame.group_by(quasi).agg(aggs)
    records = frame.height
    in_small = classes.filter(pl.col("patients") < k)["records"].sum()
    unique = classes.filter(pl.col("records") == 1)["records"].sum()
    return {
        "records": records,
        "patients": frame[patient].n_unique(),
        "classes": classes.height,
        "k_patients": int(classes["patients"].min()),
        "k_records": int(classes["records"].min()),
        "records_in_small_classes": round(in_small / records, 6),
        "unique_records": round(unique / records, 6),
        "patient_unique_classes": classes.filter(pl.col("patients") == 1).height,
        "l_diversity": int(classes["l"].min()) if sensitive is not None else None,
    }


def _read(raw: Path, spec: Spec) -> pl.DataFrame:
    joined = pl.scan_parquet(raw / f"{spec.source.table}.parquet")
    for join in spec.source.joins:
        right = pl.scan_parquet(raw / f"{join.table}.parquet")
        for column, value in join.where.items():
            right = right.filter(pl.col(column) == value)
        present = set(joined.collect_schema().names())
        right = right.select(join.on, *(c for c in right.collect_schema().names()
                                        if c not in present))
        joined = joined.join(right, on=join.on, how="left")
    for derive in spec.derive:
        joined = joined.with_columns(_derive(derive.op, derive.args, joined.collect_schema(),
                                             derive.name))
    needed = {spec.source.patient_column, spec.pseudonym.source, spec.dataset.year_column}
    needed |= {f.source_column for f in spec.fields}
    return joined.select(sorted(needed)).collect()


def _records(spec: Spec, published: pl.DataFrame, outcome: Outcome) -> pl.DataFrame:
    rows = outcome.keep.nonzero()[0]
    kept = published[rows].with_columns(
        [outcome.columns[name].output(rows) for name in outcome.columns])
    for field in spec.fields:
        if isinstance(field.hierarchy, Icd10Hierarchy) and field.hierarchy.label:
            codes = kept[field.name].unique()
            names = pl.Series([icd10_label(c) for c in codes.to_list()], dtype=pl.String)
            kept = kept.with_columns(
                pl.col(field.name).replace_strict(codes, names).alias(field.hierarchy.label))
    return kept


def _consent(spec: Spec, raw: Path, mapping: pl.DataFrame, kept: pl.Series) -> pl.DataFrame:
    patient = spec.pseudonym.column
    c = spec.consent
    table = (
        pl.scan_parquet(raw / f"{c.table}.parquet").select(
            pl.col(c.on).alias("_pid"), *c.purposes,
            pl.col(c.consented_by).alias("consented_by"),
            pl.col(c.withdrawn_at).cast(pl.Date).alias("withdrawn_at"))
        .join(mapping.lazy(), on="_pid", how="inner")
        .filter(pl.col(patient).is_in(kept.implode()))
        .select(patient, *c.purposes, "consented_by", "withdrawn_at")
        .unique(patient, keep="first", maintain_order=True)
        .collect()
    )
    missing = kept.filter(~kept.is_in(table[patient].implode()))
    if len(missing):
        table = pl.concat([table, pl.DataFrame({patient: missing}).with_columns(
            *(pl.lit(False).alias(p) for p in c.purposes),
            pl.lit(None, dtype=pl.String).alias("consented_by"),
            pl.lit(None, dtype=pl.Date).alias("withdrawn_at"),
        )])
    return table.sort(patient)


def _frequent(records: pl.DataFrame, column: str, patient: str, k: int) -> list[str]:
    counts = (records.group_by(column).agg(pl.col(patient).n_unique().alias("n"))
              .filter(pl.col("n") >= k).drop_nulls(column).sort(column))
    return [str(v) for v in counts[column].to_list()]


def _aggregates(metadata: dict, records: pl.DataFrame, consent: pl.DataFrame, patient: str,
                k: int) -> pl.DataFrame:
    by = [f["name"] for f in metadata["tables"][AGGREGATES]["fields"] if f["role"] != "count"]
    withdrawn = consent.filter(pl.col("withdrawn_at").is_not_null())[patient]
    return (
        records.filter(~pl.col(patient).is_in(withdrawn.implode()))
        .group_by(by)
        .agg(pl.col(patient).n_unique().cast(pl.Int64).alias("patients"),
             pl.len().cast(pl.Int64).alias("records"))
        .filter(pl.col("patients") >= k)
        .sort(by)
    )
