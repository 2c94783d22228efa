"""An independent computation of a cohort's patient-level frame over the raw extract, in
plain Python: patients linked by their keyed pseudonym (HMAC-SHA256 of the raw ID number),
consent from the raw consent table, values from the raw rows.

Only what onboarding generalises on purpose is taken from the published table, row by row
(the event tables keep the raw order and, at this size, every row): the date's published
label (a day, month, quarter or year) and the published diagnosis code (rare codes shown
as their category or block). Everything a cohort definition does with them — periods,
windows, codelists, first and last, counts, bands, consent — is computed here again.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import itertools
import re
import statistics
from collections import defaultdict
from datetime import date
from pathlib import Path

import polars as pl

# published table → (raw table, the raw date's source, published date column, raw columns)
TABLES = {
    "visits": ("visits", "admission_date", "admitted_on", ["visit_type", "department"]),
    "diagnoses": ("diagnoses", "admission_date", "diagnosed_on",
                  ["is_primary"]),
    "labs": ("labs", "sampled_at", "sampled_on",
             ["test_code", "test_name", "value", "unit", "ref_low", "ref_high"]),
    "prescriptions": ("prescriptions", "admission_date", "prescribed_on",
                      ["drug_name", "dose", "dose_unit", "frequency", "days", "quantity",
                       "amount"]),
}


def pseudonyms(raw: Path, key_file: Path) -> dict[str, str]:
    key = bytes.fromhex(key_file.read_text().strip())
    patients = pl.read_parquet(raw / "patients.parquet", columns=["patient_id", "id_number"])
    return {pid: hmac.new(key, number.encode(), hashlib.sha256).hexdigest()
            for pid, number in patients.iter_rows()}


def consenting(raw: Path, names: dict[str, str], purpose: str, dataset: Path) -> set[str]:
    """The patients whose every raw consent row grants ``purpose`` and is not withdrawn —
    among those with a published record: onboarding publishes a patient's consent with
    their records, so a patient none of whose records survived it is in no cohort."""
    published = set(pl.read_parquet(dataset / "restricted" / "records.parquet",
                                    columns=["pseudonym"])["pseudonym"])
    consents = pl.read_parquet(raw / "consents.parquet")
    ok: dict[str, bool] = {}
    for row in consents.iter_rows(named=True):
        p = names[row["patient_id"]]
        ok[p] = ok.get(p, True) and bool(row[purpose]) and row["withdrawn_at"] is None
    return {p for p, yes in ok.items() if yes and p in published}


def period(label: str | None) -> tuple[date, date] | None:
    if label is None:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", label):
        day = date.fromisoformat(label)
        return day, day
    if re.fullmatch(r"\d{4}-\d{2}", label):
        year, month = int(label[:4]), int(label[5:])
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    if re.fullmatch(r"\d{4}-Q[1-4]", label):
        year, quarter = int(label[:4]), int(label[6])
        last = quarter * 3
        return (date(year, last - 2, 1),
                date(year, last, calendar.monthrange(year, last)[1]))
    if re.fullmatch(r"\d{4}", label):
        return date(int(label), 1, 1), date(int(label), 12, 31)
    return None


def events(raw: Path, dataset: Path, names: dict[str, str]) -> dict[str, list[dict]]:
    """Each event table's rows: the raw values, the published date label and code."""
    visits = pl.read_parquet(raw / "visits.parquet", columns=["visit_id", "admission_date"])
    out = {}
    for table, (source, when, label, columns) in TABLES.items():
        rows = pl.read_parquet(raw / f"{source}.parquet")
        if when not in rows.columns:
            rows = rows.join(visits, on="visit_id", how="left", maintain_order="left")
        published = pl.read_parquet(dataset / "restricted" / f"{table}.parquet").to_dicts()
        kept = []
        at = 0  # the published rows are the raw rows in order, less the suppressed ones
        for row in rows.iter_rows(named=True):
            patient = names[row["patient_id"]]
            shown = published[at] if at < len(published) else None
            if shown is None or not _shows(shown, row, patient, label, when):
                continue  # suppressed at onboarding
            at += 1
            event = {c: row[c] for c in columns}
            event["patient"] = patient
            event["period"] = period(shown[label])
            if table == "diagnoses":
                event["diagnosis_code"] = shown["diagnosis_code"]
            kept.append(event)
        assert at == len(published), f"{table}: published rows not found in the extract"
        out[table] = kept
    return out


def _shows(shown: dict, row: dict, patient: str, label: str, when: str) -> bool:
    """Whether the published row ``shown`` is the raw ``row`` (generalised)."""
    day = row[when]
    labels = {day.strftime("%Y-%m-%d"), day.strftime("%Y-%m"),
              f"{day.year}-Q{(day.month - 1) // 3 + 1}", str(day.year), "*"}
    if shown["pseudonym"] != patient or shown[label] not in labels:
        return False
    if "icd10_code" in row:
        code = shown["diagnosis_code"]
        return (code in ("*", row["icd10_code"]) or row["icd10_code"].startswith(code)
                or "-" in code or code.startswith("Chapter"))
    return all(shown[c] == row[c] for c in ("test_code", "value", "drug_name", "dose",
                                            "visit_type")
               if c in row)


def _code_in(entries: list[str], code: str | None) -> bool:
    if code is None:
        return False
    block = re.fullmatch(r"([A-Z]\d\d)-([A-Z]\d\d)", code)
    for entry in entries:
        wanted = re.fullmatch(r"([A-Z]\d\d)-([A-Z]\d\d)", entry)
        if block:
            if wanted and wanted[1] <= block[1] and block[2] <= wanted[2]:
                return True
        elif re.fullmatch(r"[A-Z]\d\d(\.\w+)?", code):
            if wanted and wanted[1] <= code[:3] <= wanted[2]:
                return True
            if not wanted and (code.startswith(entry) if "." in entry
                               else code == entry or code.startswith(entry + ".")):
                return True
    return False


def _passes(value, op: str, target) -> bool:
    if value is None:
        return False
    return {"eq": lambda: value == target, "ne": lambda: value != target,
            "in": lambda: value in target, "lt": lambda: value < target,
            "le": lambda: value <= target, "gt": lambda: value > target,
            "ge": lambda: value >= target,
            "between": lambda: target[0] <= value <= target[1]}[op]()


def _select(selection: dict, rows: list[dict], index: dict | None) -> dict[str, list[dict]]:
    by_patient: dict[str, list[dict]] = defaultdict(list)
    window = selection.get("window") or {}
    for row in rows:
        if "codes" in selection and not _code_in(selection["codes"]["codelist"],
                                                 row[selection["codes"]["field"]]):
            continue
        if not all(_passes(row[f["field"]], f["op"], f["value"])
                   for f in selection.get("where", [])):
            continue
        span = row["period"]
        if window.get("start") and (span is None or span[0] < date.fromisoformat(
                window["start"])):
            continue
        if window.get("end") and (span is None or span[1] > date.fromisoformat(
                window["end"])):
            continue
        if window.get("after_index"):
            low, high = window["after_index"]
            at = (index or {}).get(row["patient"])
            if at is None or span is None:
                continue
            if (span[0] - at[1]).days < low or (span[1] - at[0]).days > high:
                continue
        by_patient[row["patient"]].append(row)
    return by_patient


def _key(*parts):
    """Sort key with None after every value (as the builder's nulls last)."""
    return tuple((p is None, p if p is not None else 0) for p in parts)


def frame(definition: dict, tables: dict[str, list[dict]], consent: set[str],
          categories: dict[tuple[str, str], list[str]]) -> dict[str, dict]:
    """Patient → variables, for a definition over event tables only."""
    index_spec = definition["index"]
    chosen = _select(index_spec, tables[index_spec["table"]], None)
    index = {}
    for patient, rows in chosen.items():
        spans = [r["period"] or (None, None) for r in rows]
        if index_spec.get("which", "first") == "first":
            index[patient] = min(spans, key=lambda s: _key(s[0], s[1]))
        else:  # the last by end, then start, nulls first
            index[patient] = max(spans, key=lambda s: ((s[1] is not None, s[1] or 0),
                                                       (s[0] is not None, s[0] or 0)))
        if index[patient] == (None, None):
            index[patient] = None
    population = {p: {} for p in index if p in consent}
    for name, var in definition.get("variables", {}).items():
        kind = var["kind"]
        if kind == "bands":
            edges = var["edges"]
            for values in population.values():
                values[name] = _band(values[var["of"]], edges)
            continue
        if kind == "index_period":
            for patient, values in population.items():
                values[name] = _period_label(index.get(patient), var["level"])
            continue
        selected = _select(var["events"], tables[var["events"]["table"]], index)
        if kind == "survival":
            follow = _select(var["followup"], tables[var["followup"]["table"]], index)
            for patient, values in population.items():
                values[name], values[f"{name}_event"] = _survival(
                    index.get(patient), selected.get(patient, []), follow.get(patient, []),
                    var["horizon"])
            continue
        for patient, values in population.items():
            rows = selected.get(patient, [])
            values[name] = _value(kind, var, rows, index.get(patient),
                                  categories.get((var["events"]["table"], var.get("field"))))
    return {p: v for p, v in population.items()
            if all(_passes(v[f["field"]], f["op"], f["value"])
                   for f in definition.get("where", []))}


def _value(kind: str, var: dict, rows: list[dict], at, categories):
    field = var.get("field")
    if kind == "exists":
        return "yes" if rows else "no"
    if kind == "count":
        return len(rows)
    if kind in ("min", "max", "mean"):
        values = [float(r[field]) for r in rows if r[field] is not None]
        if not values:
            return None
        return {"min": min, "max": max, "mean": statistics.fmean}[kind](values)
    if kind in ("first_value", "last_value"):
        if not rows:
            return None
        spans = [(r["period"] or (None, None), r[field]) for r in rows]
        if kind == "first_value":
            value = min(spans, key=lambda s: _key(s[0][0], s[0][1], s[1]))[1]
        else:
            value = max(spans, key=lambda s: ((s[0][1] is not None, s[0][1] or 0),
                                              (s[0][0] is not None, s[0][0] or 0),
                                              (s[1] is not None, s[1] or 0)))[1]
        return value if value in (categories or []) else None
    # days_to_first
    if at is None:
        return None
    after = [r["period"] for r in rows if r["period"] is not None and r["period"][0] >= at[1]]
    if not after:
        return None
    first = min(after)
    return (first[0] - at[0]).days if first[0] == first[1] and at[0] == at[1] else None


def _band(value, edges: list[float]) -> str | None:
    if value is None or not edges[0] <= value <= edges[-1]:
        return None
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        if low <= value < high or (last and value == high):
            high_mark = "]" if last else ")"
            return f"[{low:g}, {high:g}{high_mark}"
    return None


def _period_label(at, level: str) -> str | None:
    if at is None:
        return None
    labels = [{"month": f"{d.year}-{d.month:02d}",
               "quarter": f"{d.year}-Q{(d.month - 1) // 3 + 1}",
               "year": str(d.year)}[level] for d in at]
    return labels[0] if labels[0] == labels[1] else None


def _survival(at, outcomes: list[dict], followups: list[dict], horizon: int):
    if at is None or at[0] != at[1]:
        return None, None
    after = sorted(r["period"] for r in outcomes
                   if r["period"] is not None and r["period"][0] >= at[1])
    if after and (after[0][0] - at[0]).days <= horizon:
        first = after[0]
        return ((first[0] - at[0]).days, "yes") if first[0] == first[1] else (None, None)
    if after:  # the outcome came after the horizon: followed all of it
        return horizon, "no"
    seen = [r["period"][0] for r in followups
            if r["period"] is not None and r["period"][0] >= at[1]]
    return min((max(seen) - at[0]).days if seen else 0, horizon), "no"
