"""Onboarding: a raw identifiable extract → a restricted dataset, as the spec declares.

Order matters and each step guards the next: the spec is validated before data is read;
columns and types are checked before anything is computed; direct identifiers are searched
for by value before generalisation; the minimum count is verified again on the final rows;
and the output directory appears only when everything is written. A refusal writes
nothing. The pseudonymisation key is read but never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from sandbox.data import catalog, dummy, identifiers, risk
from sandbox.data.anonymize import Outcome, generalise
from sandbox.data.atomic import atomic_directory
from sandbox.data.catalog import AGGREGATES, CONSENT, RECORDS
from sandbox.data.hierarchy import icd10_label
from sandbox.data.pseudonym import load_key, pseudonymise
from sandbox.data.report import render_markdown
from sandbox.data.spec import FieldSpec, Icd10Hierarchy, Spec, load_spec
from sandbox.errors import InputError, PolicyRefusal, SpecError

_TYPES: dict[str, tuple[type[pl.DataType], ...]] = {
    "string": (pl.String,),
    "integer": (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                pl.UInt64),
    "float": (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64),
    "date": (pl.Date, pl.Datetime),
    "boolean": (pl.Boolean,),
}


@dataclass(frozen=True)
class OnboardResult:
    """Where the dataset went and its report."""

    out: Path
    metadata: dict
    report: dict


def onboard(raw: Path, spec_path: Path, key_file: Path, out: Path, *, replace: bool = False,
            dummy_rows: int = 2000, dummy_seed: int = 0) -> OnboardResult:
    """Produce the restricted dataset described by ``spec_path`` from the extract in ``raw``."""
    spec = load_spec(spec_path)
    key = load_key(key_file)
    if dummy_rows < 1:
        raise InputError("--dummy-rows must be at least 1")
    frame, names, consent_raw = _read(Path(raw), spec)

    pseudonyms = pseudonymise(frame[spec.pseudonym.source], key)
    missing = pseudonyms.null_count()
    if missing:
        raise PolicyRefusal(f"{missing} rows have no {spec.pseudonym.source!r} to key the "
                            "pseudonym on; fix the extract first")
    patient = spec.pseudonym.column
    published = frame.select(
        pseudonyms.alias(patient),
        *(pl.col(f.source_column).alias(f.name) for f in spec.fields),
    )

    findings = identifiers.scan(published.drop(patient), names)
    if findings:
        raise PolicyRefusal("direct identifiers found; nothing was published:\n"
                            + "\n".join(f"  - {f.describe()}" for f in findings))

    quasi = [f.name for f in spec.quasi_identifiers]
    sensitive = spec.sensitive.name if spec.sensitive else None
    before = risk.measure(published, quasi, sensitive, patient, spec.privacy.k)
    outcome = generalise(
        published,
        {f.name: f.hierarchy for f in spec.quasi_identifiers},
        (spec.sensitive.name, spec.sensitive.hierarchy) if spec.sensitive else None,
        patient, spec.privacy.k, spec.privacy.max_suppression,
    )
    records = _records(spec, published, outcome)
    after = risk.measure(records, quasi, sensitive, patient, spec.privacy.k)
    if after["k_patients"] < spec.privacy.k:  # defensive: generalise() guarantees this
        raise PolicyRefusal(f"minimum count not met (k = {after['k_patients']})")

    mapping = frame.select(pl.col(spec.source.patient_column).alias("_pid"),
                           pseudonyms.alias(patient)).unique()
    consent = _consent(spec, consent_raw, mapping, records[patient].unique())
    year = frame[spec.dataset.year_column]
    years = (int(year.dt.year().min()), int(year.dt.year().max()))
    spec_bytes = Path(spec_path).read_bytes()
    metadata = catalog.build(spec, records, consent, years, hashlib.sha256(spec_bytes).hexdigest())
    report = _report(spec, before, after, outcome, published.columns)
    records = records.select(f["name"] for f in metadata["tables"][RECORDS]["fields"])
    if spec.dataset.grade == "public":
        metadata = catalog.public_aggregates(metadata)
        tables = {AGGREGATES: _aggregates(metadata, records, consent, patient, spec.privacy.k)}
        folder = "public"
    else:
        tables = {RECORDS: records, CONSENT: consent}
        folder = "restricted"

    with atomic_directory(Path(out), replace=replace) as tmp:
        (tmp / folder).mkdir()
        for name, table in tables.items():
            path = tmp / folder / f"{name}.parquet"
            table.write_parquet(path, compression="zstd")
            metadata["files"][f"{folder}/{name}.parquet"] = catalog.sha256_file(path)
        if folder == "restricted":
            (tmp / "dummy").mkdir()
            for name, table in dummy.make(metadata, dummy_rows, dummy_seed).items():
                table.write_parquet(tmp / "dummy" / f"{name}.parquet")
        (tmp / "spec.toml").write_bytes(spec_bytes)
        _write_json(tmp / "metadata.json", metadata)
        _write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return OnboardResult(Path(out), metadata, report)


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _scan_table(raw: Path, table: str) -> pl.LazyFrame:
    path = raw / f"{table}.parquet"
    if not path.is_file():
        raise InputError(f"raw table {table!r} not found: {path} is missing")
    try:
        lazy = pl.scan_parquet(path)
        lazy.collect_schema()
    except (OSError, pl.exceptions.PolarsError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read raw table {path}: {first_line}") from None
    return lazy


def _require(table: str, schema: pl.Schema, columns: list[str], why: str) -> None:
    missing = [c for c in columns if c not in schema]
    if missing:
        raise SpecError(f"{why}: column(s) {', '.join(missing)} missing from {table} "
                        f"(it has: {', '.join(schema.names())})")


def _read(raw: Path, spec: Spec) -> tuple[pl.DataFrame, pl.Series, pl.LazyFrame]:
    """The joined, derived frame holding exactly the columns onboarding needs, the names to
    search for, and the raw consent table."""
    if not raw.is_dir():
        raise InputError(f"raw extract directory {raw} not found")
    base = _scan_table(raw, spec.source.table)
    schema = base.collect_schema()
    _require(spec.source.table, schema, [spec.source.patient_column], "source.patient_column")
    joined = base
    for join in spec.source.joins:
        right = _scan_table(raw, join.table)
        right_schema = right.collect_schema()
        _require(join.table, right_schema, [join.on, *join.where], f"join with {join.table}")
        _require(spec.source.table, joined.collect_schema(), [join.on], f"join on {join.on}")
        for column, value in join.where.items():
            right = right.filter(pl.col(column) == value)
        dupes = right.group_by(join.on).len().filter(pl.col("len") > 1).select(pl.len())
        if dupes.collect().item():
            raise SpecError(f"join with {join.table} on {join.on!r} is not one-to-one; "
                            f"narrow it with a 'where' filter")
        present = set(joined.collect_schema().names())
        right = right.select(join.on, *(c for c in right_schema.names() if c not in present))
        joined = joined.join(right, on=join.on, how="left")
    schema = joined.collect_schema()
    for derive in spec.derive:
        _require("the joined extract", schema, derive.args, f"derive {derive.name}")
        joined = joined.with_columns(_derive(derive.op, derive.args, schema, derive.name))
        schema = joined.collect_schema()

    needed = {spec.source.patient_column, spec.pseudonym.source, spec.dataset.year_column}
    needed |= {f.source_column for f in spec.fields}
    _require("the joined extract", schema, sorted(needed), "spec")
    _require("the joined extract", schema, spec.identifiers.name_columns,
             "identifiers.name_columns")
    for field in spec.fields:
        _check_type(field, schema[field.source_column])
    if not isinstance(schema[spec.dataset.year_column], pl.Date | pl.Datetime):
        raise SpecError(f"dataset.year_column {spec.dataset.year_column!r} must be a date")

    frame = joined.select(sorted(needed)).collect(engine="streaming")
    names = (joined.select(pl.concat_list(spec.identifiers.name_columns).alias("n"))
             .explode("n").drop_nulls().unique().collect(engine="streaming")["n"]
             if spec.identifiers.name_columns else pl.Series("n", [], dtype=pl.String))
    for field in spec.fields:
        if isinstance(field.hierarchy, Icd10Hierarchy):
            _check_icd10(frame[field.source_column], field.name)

    consent = _scan_table(raw, spec.consent.table)
    _require(spec.consent.table, consent.collect_schema(),
             [spec.consent.on, *spec.consent.purposes, spec.consent.consented_by,
              spec.consent.withdrawn_at], "consent")
    return frame, names, consent


def _derive(op: str, args: list[str], schema: pl.Schema, name: str) -> pl.Expr:
    if op in ("age_years", "days_between"):
        for arg in args:
            if not isinstance(schema[arg], pl.Date | pl.Datetime):
                raise SpecError(f"derive {name}: {op} needs date columns, "
                                f"but {arg} is {schema[arg]}")
        a, b = (pl.col(x).cast(pl.Date) for x in args)
        if op == "days_between":
            return (b - a).dt.total_days().alias(name)
        def month_day(d: pl.Expr) -> pl.Expr:
            return d.dt.month().cast(pl.Int32) * 100 + d.dt.day().cast(pl.Int32)

        before_birthday = month_day(b) < month_day(a)
        return (b.dt.year() - a.dt.year() - before_birthday.cast(pl.Int32)).alias(name)
    for arg in args:
        if schema[arg] != pl.String:
            raise SpecError(f"derive {name}: path needs text columns, but {arg} is {schema[arg]}")
    return pl.concat_str([pl.col(a) for a in args], separator="/").alias(name)


def _check_type(field: FieldSpec, dtype: pl.DataType) -> None:
    if not isinstance(dtype, _TYPES[field.type]):
        raise SpecError(f"field {field.name}: the spec says {field.type}, but column "
                        f"{field.source_column!r} in the extract is {dtype}")


def _check_icd10(values: pl.Series, name: str) -> None:
    bad = values.drop_nulls().unique().filter(~values.drop_nulls().unique().str.contains(
        r"^[A-Z]\d{2}(\.\d{1,2})?$"))
    if len(bad):
        raise SpecError(f"field {name}: {len(bad)} values are not ICD-10 codes "
                        f"(e.g. {bad[0]!r})")


def _records(spec: Spec, published: pl.DataFrame, outcome: Outcome) -> pl.DataFrame:
    rows = outcome.keep.nonzero()[0]
    kept = published[rows]
    replaced = [outcome.columns[name].output(rows) for name in outcome.columns]
    kept = kept.with_columns(replaced)
    for field in spec.fields:
        if isinstance(field.hierarchy, Icd10Hierarchy) and field.hierarchy.label:
            codes = kept[field.name].unique()
            names = pl.Series([icd10_label(c) for c in codes.to_list()], dtype=pl.String)
            kept = kept.with_columns(
                pl.col(field.name).replace_strict(codes, names).alias(field.hierarchy.label)
            )
    return kept


def _consent(spec: Spec, consent_raw: pl.LazyFrame, mapping: pl.DataFrame,
             kept: pl.Series) -> pl.DataFrame:
    patient = spec.pseudonym.column
    c = spec.consent
    table = (
        consent_raw.select(
            pl.col(c.on).alias("_pid"), *c.purposes,
            pl.col(c.consented_by).alias("consented_by"),
            pl.col(c.withdrawn_at).cast(pl.Date).alias("withdrawn_at"),
        )
        .join(mapping.lazy(), on="_pid", how="inner")
        .filter(pl.col(patient).is_in(kept.implode()))
        .select(patient, *c.purposes, "consented_by", "withdrawn_at")
        .unique(patient, keep="first", maintain_order=True)
        .collect()
    )
    # A patient with no consent record has consented to nothing.
    missing = kept.filter(~kept.is_in(table[patient].implode()))
    if len(missing):
        table = pl.concat([table, pl.DataFrame({patient: missing}).with_columns(
            *(pl.lit(False).alias(p) for p in c.purposes),
            pl.lit(None, dtype=pl.String).alias("consented_by"),
            pl.lit(None, dtype=pl.Date).alias("withdrawn_at"),
        )])
    return table.sort(patient)


def _aggregates(metadata: dict, records: pl.DataFrame, consent: pl.DataFrame, patient: str,
                k: int) -> pl.DataFrame:
    """Counts per combination of the generalised columns, for a public dataset. Patients
    who withdrew consent are left out; cells covering fewer than k patients are dropped."""
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


def _report(spec: Spec, before: dict, after: dict, outcome: Outcome, scanned: list[str]
            ) -> dict:
    return {
        "dataset": {"id": spec.dataset.id, "version": spec.dataset.version,
                    "grade": spec.dataset.grade},
        "rule": {"minimum_count": spec.privacy.k,
                 "max_suppression": spec.privacy.max_suppression,
                 "quasi_identifiers": [f.name for f in spec.quasi_identifiers],
                 "sensitive": spec.sensitive.name if spec.sensitive else None},
        "direct_identifiers": {
            "dropped": spec.identifiers.columns,
            "scanned_columns": [c for c in scanned if c != spec.pseudonym.column],
            "found": [],
        },
        "before": before,
        "after": after,
        "generalisation": {name: col.describe() for name, col in outcome.columns.items()},
        "suppression": {"records": outcome.suppressed_records,
                        "patients": outcome.suppressed_patients,
                        "share_of_records": round(outcome.suppressed_records
                                                  / max(before["records"], 1), 6),
                        "datafly_rounds": outcome.rounds},
        "verdict": "published",
    }


def read_report(directory: Path) -> dict:
    """The report of an onboarded dataset directory."""
    path = Path(directory) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{directory} is not an onboarded dataset (no report.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
