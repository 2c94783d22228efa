"""Onboarding: a raw identifiable extract → a restricted dataset, as the spec declares.

Order matters and each step guards the next: the spec is validated before data is read;
columns, types and join keys are checked before anything is computed; direct identifiers
are searched for by value before generalisation; the minimum count is verified again on the
final rows; and the output directory appears only when everything is written. A refusal
writes nothing. The pseudonymisation key is read but never written anywhere.

Memory does not grow with the extract: rows stream through in buckets of ``bucket_rows``
(``sandbox.data.spill``), spilled under the output's temporary directory, and only facts
per distinct value, per bucket or per suppressed combination are held.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sandbox.data import catalog, dummy, risk
from sandbox.data.anonymize import Column, Outcome, generalise, maps
from sandbox.data.atomic import atomic_directory
from sandbox.data.catalog import AGGREGATES, CONSENT, RECORDS
from sandbox.data.codes import Rows, class_partials, encode, records_per_code
from sandbox.data.extract import ROW, Extract, in_parquet, open_extract, rows
from sandbox.data.pseudonym import load_key
from sandbox.data.publish import Published, consent_by_patient, publish, write_sorted
from sandbox.data.report import render_markdown
from sandbox.data.screening import Screened, screen
from sandbox.data.spec import Hierarchy, Spec, load_spec
from sandbox.data.spill import BUCKET_ROWS, Spill, Workspace, bucket_count
from sandbox.errors import InputError, PolicyRefusal, SpecError


@dataclass(frozen=True)
class OnboardResult:
    """Where the dataset went and its report."""

    out: Path
    metadata: dict
    report: dict


def onboard(raw: Path, spec_path: Path, key_file: Path, out: Path, *, replace: bool = False,
            dummy_rows: int = 2000, dummy_seed: int = 0,
            bucket_rows: int = BUCKET_ROWS) -> OnboardResult:
    """Produce the restricted dataset described by ``spec_path`` from the extract in ``raw``.
    ``bucket_rows`` bounds the rows held at once (memory), never the result."""
    spec = load_spec(spec_path)
    key = load_key(key_file)
    if dummy_rows < 1:
        raise InputError("--dummy-rows must be at least 1")
    if bucket_rows < 1:
        raise InputError("bucket_rows must be at least 1")
    extract = open_extract(Path(raw), spec)
    events = [(event, spec.event_spec(event)) for event in spec.events]
    opened = [_open_event(Path(raw), event.name, sub) for event, sub in events]
    spec_bytes = Path(spec_path).read_bytes()
    patient = spec.pseudonym.column

    with atomic_directory(Path(out), replace=replace) as tmp:
        work = Workspace(tmp / ".work", bucket_count(extract.largest, bucket_rows), bucket_rows)
        try:
            extract = in_parquet(extract, work)
            main = _table(spec, extract, key, work, records=True)
            if main.screened.years is None and spec.dataset.year_column is not None:
                raise SpecError(f"dataset.year_column {spec.dataset.year_column!r} "
                                "holds no date")
            public = spec.dataset.grade == "public"
            published = main.published
            metadata = catalog.build(spec, published.stats, published.consented_by,
                                     main.screened.years,
                                     hashlib.sha256(spec_bytes).hexdigest())
            report = _report(spec, _summary(main))
            if public:
                metadata = catalog.public_aggregates(metadata)
                (tmp / "public").mkdir()
                path = tmp / "public" / f"{AGGREGATES}.parquet"
                published.aggregates.write_parquet(path, compression="zstd")
                metadata["files"][f"public/{AGGREGATES}.parquet"] = catalog.sha256_file(path)
            else:
                (tmp / "restricted").mkdir()
                files = {RECORDS: (published.records, ROW, [ROW]),
                         CONSENT: (published.consent, patient, [])}
                for name, (spill, by, drop) in files.items():
                    _write(spill, by, tmp / "restricted" / f"{name}.parquet", metadata, drop)
                for (event, sub), raw_event in zip(events, opened, strict=True):
                    shutil.rmtree(work.root, ignore_errors=True)
                    work = Workspace(tmp / ".work", bucket_count(raw_event.largest,
                                                                 bucket_rows), bucket_rows)
                    part = _table(sub, in_parquet(raw_event, work), key, work, records=False)
                    _write(part.published.records, ROW,
                           tmp / "restricted" / f"{event.name}.parquet", metadata, [ROW])
                    metadata["tables"][event.name] = catalog.event_table(
                        event, sub, part.published.stats)
                    report.setdefault("events", {})[event.name] = {
                        "rule": {"quasi_identifiers": [f.name for f in sub.quasi_identifiers],
                                 "sensitive": sub.sensitive.name if sub.sensitive else None},
                        **_summary(part)}
        finally:
            shutil.rmtree(work.root, ignore_errors=True)
        if not public:
            (tmp / "dummy").mkdir()
            for name, frame in dummy.make(metadata, dummy_rows, dummy_seed).items():
                frame.write_parquet(tmp / "dummy" / f"{name}.parquet")
        (tmp / "spec.toml").write_bytes(spec_bytes)
        _write_json(tmp / "metadata.json", metadata)
        _write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return OnboardResult(Path(out), metadata, report)


def _open_event(raw: Path, name: str, spec: Spec) -> Extract:
    """An event table's extract, checked like the records table's, before anything is read;
    its problems name the table."""
    try:
        return open_extract(raw, spec)
    except SpecError as exc:
        raise SpecError(f"event table {name}: {exc}") from None


def _column(name: str, hierarchy: Hierarchy, screened: Screened) -> Column:
    return Column.build(name, hierarchy, screened.distinct[name], name in screened.nulls)


@dataclass
class _Part:
    """One table of the dataset, screened, generalised and published (in spills)."""

    screened: Screened
    rows: Rows
    before: dict
    after: dict
    outcome: Outcome
    published: Published


def _table(spec: Spec, extract: Extract, key: bytes, work: Workspace, *, records: bool
           ) -> _Part:
    """Screen, generalise and publish one table; ``records``: the dataset's records table,
    which brings the patients' consent (an event table does not)."""
    k = spec.privacy.k
    screened = screen(rows(extract, work), spec, work)
    quasi = [_column(f.name, f.hierarchy, screened) for f in spec.quasi_identifiers]
    sens = (_column(spec.sensitive.name, spec.sensitive.hierarchy, screened)
            if spec.sensitive else None)
    generalised = [*quasi, *([sens] if sens else [])]
    table = encode(screened.published, {c.name: screened.distinct[c.name]
                                        for c in generalised}, work)
    if table.patients < k:
        raise PolicyRefusal(f"the dataset covers {table.patients} patients, fewer "
                            f"than the minimum count {k}")
    before = _measure(table, quasi, sens, work, after=False, k=k)
    outcome = generalise(table, quasi, sens, k, spec.privacy.max_suppression, work)
    after = _measure(table, quasi, sens, work, after=True, k=k,
                     patients=table.patients - outcome.suppressed_patients)
    if after["k_patients"] < k:  # defensive: generalise() guarantees this
        raise PolicyRefusal(f"minimum count not met (k = {after['k_patients']})")
    consent = consent_by_patient(extract.consent, screened, work) if records else None
    public = spec.dataset.grade == "public"
    published = publish(spec, key, screened, outcome, consent, work,
                        aggregates=_generalised_columns(spec) if public else None)
    return _Part(screened, table, before, after, outcome, published)


def _write(spill: Spill, by: str, path: Path, metadata: dict, drop: list[str]) -> None:
    write_sorted(spill, by, path, drop=drop)
    metadata["files"][f"restricted/{path.name}"] = catalog.sha256_file(path)


def _measure(table: Rows, quasi: list[Column], sens: Column | None, work: Workspace, *,
             after: bool, k: int, patients: int | None = None) -> dict:
    """Risk over the classes of raw values (before) or of the final labels (after)."""
    def identity(column: Column) -> np.ndarray:
        return np.arange(len(column.values) + 1)

    qi = maps(quasi) if after else {c.name: identity(c) for c in quasi}
    sensitive = None
    if sens is not None:
        sensitive = (sens.name, maps([sens])[sens.name] if after else identity(sens))
    partials = class_partials(table, qi, sensitive, work, kept_only=after)
    try:
        return risk.measure(partials, sens.name if sens else None,
                            table.kept if after else table.records,
                            patients if after else table.patients, k)
    finally:
        partials.remove()


def _generalised_columns(spec: Spec) -> list[str]:
    """The columns a public dataset counts by: generalised ones and their labels."""
    columns = []
    for f in spec.fields:
        if f.hierarchy is not None:
            columns.append(f.name)
            label = getattr(f.hierarchy, "label", None)
            if label:
                columns.append(label)
    return columns


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _report(spec: Spec, summary: dict) -> dict:
    """The risk report of the records table, from its ``_part_report`` (event tables are
    added under ``events``)."""
    return {
        "dataset": {"id": spec.dataset.id, "version": spec.dataset.version,
                    "grade": spec.dataset.grade},
        "rule": {"minimum_count": spec.privacy.k,
                 "max_suppression": spec.privacy.max_suppression,
                 "quasi_identifiers": [f.name for f in spec.quasi_identifiers],
                 "sensitive": spec.sensitive.name if spec.sensitive else None},
        "direct_identifiers": {
            "dropped": spec.identifiers.columns,
            "scanned_columns": [f.name for f in spec.fields if f.name != spec.pseudonym.column],
            "found": [],
        },
        **summary,
        "verdict": "published",
    }


def _summary(part: _Part) -> dict:
    records = records_per_code(part.rows, {name: len(c.values) + 1
                                           for name, c in part.outcome.columns.items()})
    return _part_report(part.before, part.after, part.outcome, records)


def _part_report(before: dict, after: dict, outcome: Outcome, records: dict[str, np.ndarray]
                 ) -> dict:
    """One table's risk before and after, its generalisation and suppression
    (``records``: kept records per code of each generalised column)."""
    return {
        "before": before,
        "after": after,
        "generalisation": {name: col.describe(records[name])
                           for name, col in outcome.columns.items()},
        "suppression": {"records": outcome.suppressed_records,
                        "patients": outcome.suppressed_patients,
                        "share_of_records": round(outcome.suppressed_records
                                                  / max(before["records"], 1), 6),
                        "datafly_rounds": outcome.rounds},
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
