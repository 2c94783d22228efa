"""Automated checks on an export bundle, before any person reviews it.

A bundle is the files a researcher wants to take out (code, figures, tables, text) and
the gateway receipts of the releases they come from. Every check ends in ``pass``,
``fail`` or ``review``, with its reason:

- **receipts**: each one verifies against the gateway's key and belongs to this project;
- **files**: allowed types, sizes and count (data files such as Parquet are refused);
- **identifiers**: ID numbers (with a valid check digit) and mobile numbers fail;
  a person's name from the name dictionary goes to review;
- **traceable numbers**: every number in a CSV/TSV table equals a released value, or a
  rounding of one; otherwise review;
- **row-level tables**: a table with more rows than the releases it cites fail (it looks
  like records, not aggregates).

Thresholds are one ``ExportPolicy``. Nothing here talks to a network or a database.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from sandbox import receipts
from sandbox.data import idcard
from sandbox.data.reference.population import GIVEN_FEMALE, GIVEN_MALE, SURNAMES
from sandbox.errors import InputError


class Outcome(StrEnum):
    PASS = "pass"
    REVIEW = "review"
    FAIL = "fail"


@dataclass(frozen=True)
class ExportPolicy:
    max_files: int = 50
    max_file_bytes: int = 5 * 1024 * 1024
    max_total_bytes: int = 20 * 1024 * 1024
    allowed_suffixes: frozenset[str] = frozenset({
        ".csv", ".tsv", ".txt", ".md", ".png", ".jpg", ".jpeg", ".svg", ".pdf", ".ipynb",
        ".py", ".r", ".json"})
    max_decimals: int = 6
    max_significant: int = 10


@dataclass(frozen=True)
class ExportFile:
    name: str
    content: bytes

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()


@dataclass(frozen=True)
class Check:
    check: str
    outcome: Outcome
    reason: str
    file: str | None = None


TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".md", ".py", ".r", ".json", ".svg",
                           ".ipynb"})
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
ID_NUMBER = re.compile(rf"(?<![0-9]){idcard.PATTERN}(?![0-9])")
MOBILE = re.compile(r"(?<![0-9])1[3-9]\d{9}(?![0-9])")
_SURNAMES = "|".join(sorted((s for s, _ in SURNAMES), key=len, reverse=True))
_GIVEN = "".join(sorted(set(GIVEN_MALE) | set(GIVEN_FEMALE)))
NAME = re.compile(rf"(?:{_SURNAMES})[{_GIVEN}]{{1,2}}")
NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")


def check_bundle(files: list[ExportFile], bundle_receipts: list[dict], project: str,
                 public_key: bytes, policy: ExportPolicy = ExportPolicy()) -> list[Check]:
    """Every check on the bundle, in a stable order."""
    checks = list(_receipts(bundle_receipts, project, public_key))
    payloads = [r["payload"] for r, c in zip(bundle_receipts, checks, strict=True)
                if c.outcome == Outcome.PASS]
    checks += _files(files, policy)
    for file in files:
        if file.suffix in TEXT_SUFFIXES:
            checks += _identifiers(file)
        if file.suffix in TABLE_SUFFIXES:
            checks += _table(file, payloads, policy)
    return checks


def verdict(checks: Iterable[Check]) -> Outcome:
    """The bundle's outcome: fail if any check fails, review if any asks for it."""
    outcomes = {c.outcome for c in checks}
    if Outcome.FAIL in outcomes:
        return Outcome.FAIL
    return Outcome.REVIEW if Outcome.REVIEW in outcomes else Outcome.PASS


# -- receipts -------------------------------------------------------------------------

def _receipts(bundle_receipts: list[dict], project: str, public_key: bytes
              ) -> Iterator[Check]:
    for number, receipt in enumerate(bundle_receipts, 1):
        try:
            payload = receipts.verify(receipt, public_key, receipts.Domain.RECEIPT)
        except InputError as exc:
            yield Check("receipt", Outcome.FAIL, f"receipt {number} does not verify: "
                        f"{exc.reason} (forged or altered)")
            continue
        if payload.get("project") != project:
            yield Check("receipt", Outcome.FAIL, f"receipt {number} (release "
                        f"{payload.get('release')}) belongs to another project")
            continue
        yield Check("receipt", Outcome.PASS, f"receipt {number}: release "
                    f"{payload.get('release')} of this project, signed by the gateway")


# -- files ------------------------------------------------------------------------------

def _files(files: list[ExportFile], policy: ExportPolicy) -> Iterator[Check]:
    if not files:
        yield Check("files", Outcome.FAIL, "the bundle has no files")
        return
    if len(files) > policy.max_files:
        yield Check("files", Outcome.FAIL, f"{len(files)} files; at most "
                    f"{policy.max_files} may leave in one request")
    total = sum(len(f.content) for f in files)
    if total > policy.max_total_bytes:
        yield Check("files", Outcome.FAIL, f"{total:,} bytes in all; the limit is "
                    f"{policy.max_total_bytes:,}")
    for file in files:
        if file.suffix not in policy.allowed_suffixes:
            yield Check("file type", Outcome.FAIL, f"{file.suffix or 'no suffix'} files may "
                        "not leave (data files stay in the sandbox)", file.name)
        elif len(file.content) > policy.max_file_bytes:
            yield Check("file size", Outcome.FAIL, f"{len(file.content):,} bytes; the limit "
                        f"is {policy.max_file_bytes:,}", file.name)
        else:
            yield Check("file type", Outcome.PASS, f"{file.suffix}, {len(file.content):,} "
                        "bytes", file.name)


# -- identifiers ----------------------------------------------------------------------

def _text_of(file: ExportFile) -> str:
    text = file.content.decode("utf-8", errors="replace")
    if file.suffix != ".ipynb":
        return text
    try:
        notebook = json.loads(text)
    except ValueError:
        return text
    parts = []
    for cell in notebook.get("cells", []):
        parts.append("".join(cell.get("source", [])))
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", [])))
            for value in (output.get("data") or {}).values():
                parts.append("".join(value) if isinstance(value, list) else str(value))
    return "\n".join(parts)


def _identifiers(file: ExportFile) -> Iterator[Check]:
    text = _text_of(file)
    ids = [m for m in ID_NUMBER.findall(text) if idcard.is_valid(m)]
    phones = MOBILE.findall(text)
    names = sorted(set(NAME.findall(text)))
    if ids:
        yield Check("identifiers", Outcome.FAIL, f"{len(ids)} resident ID number(s), e.g. "
                    f"{_mask(ids[0])}", file.name)
    if phones:
        yield Check("identifiers", Outcome.FAIL, f"{len(phones)} mobile number(s), e.g. "
                    f"{_mask(phones[0])}", file.name)
    if names:
        yield Check("identifiers", Outcome.REVIEW, f"possible personal names: "
                    f"{', '.join(names[:5])}", file.name)
    if not (ids or phones or names):
        yield Check("identifiers", Outcome.PASS, "no ID numbers, phones or names", file.name)


def _mask(value: str) -> str:
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


# -- tables ---------------------------------------------------------------------------

def _table(file: ExportFile, payloads: list[dict], policy: ExportPolicy) -> Iterator[Check]:
    try:
        rows = list(csv.reader(io.StringIO(file.content.decode("utf-8-sig")),
                               delimiter=TABLE_SUFFIXES[file.suffix]))
    except (UnicodeDecodeError, csv.Error) as exc:
        yield Check("table", Outcome.FAIL, f"not a readable table: {exc}", file.name)
        return
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    released_rows = sum(len(p.get("result") or []) for p in payloads)
    if len(body) > max(released_rows, 1):
        yield Check("row-level table", Outcome.FAIL, f"{len(body)} rows but the cited "
                    f"releases hold {released_rows}: this looks like records, not "
                    "aggregates", file.name)
    released = sorted(_released_numbers(payloads))
    untraced = [cell for row in body for cell in row
                if NUMBER.match(cell.strip()) and not _traceable(cell.strip(), released,
                                                                  policy)]
    if untraced:
        yield Check("traceable numbers", Outcome.REVIEW, f"{len(untraced)} number(s) match "
                    f"no released value, e.g. {', '.join(untraced[:3])}", file.name)
    else:
        yield Check("traceable numbers", Outcome.PASS, "every number is a released value "
                    "or a rounding of one", file.name)


def _released_numbers(payloads: list[dict]) -> Iterator[float]:
    for payload in payloads:
        for row in payload.get("result") or []:
            for value in row.values():
                if isinstance(value, int | float) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    yield float(value)


def _traceable(cell: str, released: list[float], policy: ExportPolicy) -> bool:
    text = cell.replace(",", "")
    shown = float(text)
    decimals = len(text.split(".")[1]) if "." in text else 0
    for value in released:
        if value == shown:
            return True
        if decimals <= policy.max_decimals and round(value, decimals) == shown:
            return True
        digits = len(text.lstrip("+-").replace(".", "").lstrip("0")) or 1
        if digits <= policy.max_significant and float(f"{value:.{digits}g}") == shown:
            return True
    return False
