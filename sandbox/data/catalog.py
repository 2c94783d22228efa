"""The catalog metadata document of a restricted dataset: everything a researcher may know
before access (fields, types, public bounds and categories, sample size, years, grade,
conditions) and everything the gateway needs to answer queries (patient key, contribution
bound, consent purposes). It is public: nothing in it may single out a patient, so
category lists contain only values covering at least k patients."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sandbox.data.hierarchy import icd10_label
from sandbox.data.spec import EventTable, Icd10Hierarchy, Spec
from sandbox.purposes import PURPOSES

METADATA_VERSION = 1
RECORDS = "records"
CONSENT = "consent"
AGGREGATES = "aggregates"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RecordStats:
    """What the catalog says about the published records, counted as they were written."""

    patients: int
    records: int
    nullable: dict[str, bool]
    frequent: dict[str, list[str]]  # per ``listed_fields``: values covering ≥ k patients


def listed_fields(spec: Spec) -> list[str]:
    """Fields whose catalog entry lists the values found in the data."""
    return [f.name for f in spec.fields
            if f.hierarchy is not None
            or (f.type == "string" and f.role == "attribute" and not f.categories)]


def table_fields(spec: Spec, stats: RecordStats) -> list[dict]:
    """The catalog's description of a patient-level table's columns: the patient key, then
    each field with its public categories or bounds."""
    patient = spec.pseudonym.column
    fields: list[dict] = [{
        "name": patient,
        "type": "string",
        "role": "patient_key",
        "description": {"zh": "患者假名（密钥化 HMAC-SHA256，不可逆）",
                        "en": "patient pseudonym (keyed HMAC-SHA256, not reversible)"},
    }]
    for field in spec.fields:
        entry: dict = {
            "name": field.name,
            "role": field.role,
            "description": field.description.model_dump(),
            "nullable": stats.nullable[field.name],
        }
        if field.hierarchy is not None:
            entry["type"] = "string"
            entry["categories"] = stats.frequent[field.name]
            entry["hierarchy"] = field.hierarchy.kind
        elif field.type in ("integer", "float"):
            entry["type"] = field.type
            entry["bounds"] = list(field.bounds) if field.bounds else None
        else:
            entry["type"] = field.type
            if field.type == "string":
                entry["categories"] = field.categories or stats.frequent[field.name]
        fields.append(entry)
        if isinstance(field.hierarchy, Icd10Hierarchy) and field.hierarchy.label:
            fields.append({
                "name": field.hierarchy.label,
                "type": "string",
                "role": "label",
                "label_of": field.name,
                "description": {"zh": f"{field.description.zh}（名称）",
                                "en": f"{field.description.en} (name)"},
                "nullable": False,
                "labels": {c: icd10_label(c) for c in entry["categories"]},
            })
    return fields


def event_table(event: EventTable, spec: Spec, stats: RecordStats) -> dict:
    """The catalog entry of an event table (``spec``: the one it was onboarded by)."""
    return {"description": event.description.model_dump(),
            "sample_size": {"patients": stats.patients, "records": stats.records},
            "contribution_bound": spec.privacy.contribution_bound,
            "fields": table_fields(spec, stats)}


def build(spec: Spec, stats: RecordStats, consented_by: list[str], years: tuple[int, int] | None,
          spec_sha256: str) -> dict:
    """The metadata document (without file digests, which are added once files exist)."""
    patient = spec.pseudonym.column
    k = spec.privacy.k
    fields = table_fields(spec, stats)
    labels = {p.id: {"zh": p.zh, "en": p.en} for p in PURPOSES}
    return {
        "metadata_version": METADATA_VERSION,
        "id": spec.dataset.id,
        "version": spec.dataset.version,
        "grade": spec.dataset.grade,
        "title": spec.dataset.title.model_dump(),
        "description": spec.dataset.description.model_dump(),
        "application_conditions": spec.dataset.conditions.model_dump(),
        "unit": spec.dataset.unit.model_dump(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec_sha256": spec_sha256,
        "sample_size": {"patients": stats.patients, "records": stats.records},
        "years": list(years) if years else [],
        "patient_key": patient,
        "contribution_bound": spec.privacy.contribution_bound,
        "minimum_count": k,
        "tables": {
            RECORDS: {"fields": fields},
            CONSENT: {
                "fields": [
                    {"name": patient, "type": "string", "role": "patient_key"},
                    *({"name": p, "type": "boolean", "role": "consent",
                       "description": labels[p]} for p in spec.consent.purposes),
                    {"name": "consented_by", "type": "string", "role": "consent",
                     "categories": consented_by,
                     "description": {"zh": "同意人（本人或监护人）",
                                     "en": "who consented (the patient or a guardian)"}},
                    {"name": "withdrawn_at", "type": "date", "role": "consent",
                     "nullable": True,
                     "description": {"zh": "撤回同意日期", "en": "date consent was withdrawn"}},
                ],
            },
        },
        "purposes": [{"id": p, **labels[p]} for p in spec.consent.purposes],
        "files": {},
    }


def public_aggregates(metadata: dict) -> dict:
    """Turn the metadata of a patient-level table into that of a public aggregate table:
    the generalised columns plus patient and record counts; no patient key, no consent."""
    fields = [f for f in metadata["tables"][RECORDS]["fields"]
              if f["role"] in ("quasi_identifier", "sensitive", "label")]
    counts = [
        {"name": "patients", "type": "integer", "role": "count",
         "description": {"zh": "患者数", "en": "number of patients"}},
        {"name": "records", "type": "integer", "role": "count",
         "description": {"zh": "记录数", "en": "number of records"}},
    ]
    public = {k: v for k, v in metadata.items() if k not in ("patient_key", "purposes")}
    public["tables"] = {AGGREGATES: {"fields": fields + counts}}
    return public
