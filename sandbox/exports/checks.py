"""Automated checks on an export bundle, before any person reviews it.

A bundle is the files a researcher wants to take out (code, figures, tables, text) and
the gateway receipts of the releases they come from. Every check ends in ``pass``,
``fail`` or ``review``, with its reason. The adversary is the researcher: anything that
carries rows out past these checks must at least reach a reviewer's eyes.

- **receipts**: each one verifies against the gateway's key and belongs to this project;
- **files**: allowed names, sizes and count;
- **content**: what each file *is*, by its bytes, matches what its name claims — a
  figure parses as that figure with nothing after its end marker, a PDF carries no
  attachments, text is text (``content``, ``images``, ``pdf``, ``documents``, ``svg``);
- **identifiers**: ID numbers (with a valid check digit) and mobile numbers fail,
  however their digits are written; a person's name from the name dictionary goes to
  review — in every text a file holds (notebook outputs and metadata, JSON string values,
  PDF pages and document information, SVG text, image text chunks, decoded runs)
  (``identifiers``);
- **row-level tables** and **traceable numbers**: every table, in whatever form
  (``tables``), has no more records than the cited releases and only released numbers;
- **encoded data**: long base64 or hex runs go to review, and are decoded and checked in
  turn — one that hides a table, an identifier or a data file fails (``encoded``).

Thresholds are one ``ExportPolicy``. Nothing here talks to a network or a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sandbox import receipts
from sandbox.errors import InputError
from sandbox.exports import content, documents, encoded, identifiers, images, pdf, svg, tables
from sandbox.exports.model import (
    Check,
    Contents,
    Embedded,
    ExportFile,
    ExportPolicy,
    Outcome,
    Text,
)

__all__ = ["Check", "ExportFile", "ExportPolicy", "Outcome", "check_bundle", "verdict"]

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
CODE_SUFFIXES = frozenset({".py", ".r"})


DEFAULT_POLICY = ExportPolicy()
# What an embedded part's type means for the checks that read it.
EMBEDDED_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "application/pdf": ".pdf",
                   "image/svg+xml": ".svg"}


def check_bundle(files: list[ExportFile], bundle_receipts: list[dict], project: str,
                 public_key: bytes, policy: ExportPolicy = DEFAULT_POLICY) -> list[Check]:
    """Every check on the bundle, in a stable order."""
    checks = list(_receipts(bundle_receipts, project, public_key))
    payloads = [r["payload"] for r, c in zip(bundle_receipts, checks, strict=True)
                if c.outcome == Outcome.PASS]
    admitted = []
    for file, check in _files(files, policy):
        checks.append(check)
        if file is not None and check.outcome == Outcome.PASS:
            admitted.append(file)
    for file in admitted:
        checks += check_file(file, payloads, policy)
    return checks


def verdict(checks: Iterable[Check]) -> Outcome:
    """The bundle's outcome: fail if any check fails, review if any asks for it."""
    outcomes = {c.outcome for c in checks}
    if Outcome.FAIL in outcomes:
        return Outcome.FAIL
    return Outcome.REVIEW if Outcome.REVIEW in outcomes else Outcome.PASS


def check_file(file: ExportFile, payloads: list[dict], policy: ExportPolicy = DEFAULT_POLICY
               ) -> list[Check]:
    """The content, identifier, table and encoded-data checks of one admitted file."""
    try:
        found = _read(file.suffix, file.content, file.name, policy)
        _unwrap(found, file.name, policy, depth=1)
    except Exception as exc:  # hostile bytes: whatever breaks a parser
        # A file that cannot be checked does not leave, and does not stop the checks of
        # the other files and requests (the portal collects them in one pass).
        return [Check("content", Outcome.FAIL, f"could not be checked "
                      f"({type(exc).__name__}): it does not leave", file.name)]
    checks = found.checks
    checks += identifiers.check(found.texts, file.name)
    for table in found.tables:
        checks += tables.judge(table, payloads, policy, file.name)
    return checks


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

def _files(files: list[ExportFile], policy: ExportPolicy
           ) -> Iterator[tuple[ExportFile | None, Check]]:
    if not files:
        yield None, Check("files", Outcome.FAIL, "the bundle has no files")
        return
    if len(files) > policy.max_files:
        yield None, Check("files", Outcome.FAIL, f"{len(files)} files; at most "
                          f"{policy.max_files} may leave in one request")
    total = sum(len(f.content) for f in files)
    if total > policy.max_total_bytes:
        yield None, Check("files", Outcome.FAIL, f"{total:,} bytes in all; the limit is "
                          f"{policy.max_total_bytes:,}")
    for file in files:
        if file.suffix not in policy.allowed_suffixes:
            yield file, Check("file type", Outcome.FAIL, f"{file.suffix or 'no suffix'} "
                              "files may not leave (data files stay in the sandbox)",
                              file.name)
        elif len(file.content) > policy.max_file_bytes:
            yield file, Check("file size", Outcome.FAIL, f"{len(file.content):,} bytes; "
                              f"the limit is {policy.max_file_bytes:,}", file.name)
        else:
            yield file, Check("file type", Outcome.PASS, f"{file.suffix}, "
                              f"{len(file.content):,} bytes", file.name)


# -- content ----------------------------------------------------------------------------

def _read(suffix: str, data: bytes, name: str, policy: ExportPolicy) -> Contents:
    """Parse ``data`` as what ``suffix`` says it is; a mismatch fails."""
    if suffix == ".png":
        return images.check_png(data, name, policy)
    if suffix in (".jpg", ".jpeg"):
        return images.check_jpeg(data, name, policy)
    if suffix == ".pdf":
        return pdf.check_pdf(data, name, policy)
    found = Contents()
    text = content.decode_text(data)
    if text is None:
        found.checks.append(Check("content", Outcome.FAIL, f"binary data in a {suffix} "
                                  f"file: {content.describe(data)}", name))
        return found
    if suffix == ".json":
        return documents.read_json(text, name)
    if suffix == ".ipynb":
        return documents.read_notebook(text, name)
    if suffix == ".svg":
        return svg.read_svg(text, name)
    if suffix in TABLE_SUFFIXES:
        table, comments = tables.from_csv(text, TABLE_SUFFIXES[suffix])
        found.tables.append(table)
        found.texts.append(Text("comment lines", comments))
    found.texts.append(Text("", text, code=suffix in CODE_SUFFIXES,
                            parsed=suffix in TABLE_SUFFIXES))
    found.checks.append(Check("content", Outcome.PASS, "text", name))
    return found


def _unwrap(found: Contents, name: str, policy: ExportPolicy, depth: int) -> None:
    """Follow what the file's texts and embedded parts hold: text tables, data: URIs,
    base64 and hex runs, figures inside — each checked as what it is."""
    texts = list(found.texts)
    for text in texts:
        if not text.parsed:
            found.tables += tables.from_text(text.text, text.origin, code=text.code)
        for mime, data in encoded.data_uris(text.text):
            if data is not None:  # a figure declared as one is read as one; else a run
                declared = mime if mime in EMBEDDED_SUFFIX else None
                found.embedded.append(Embedded(f"{text.origin} data: URI".strip(), data,
                                               claimed=declared, encoded=not declared))
        for run in encoded.runs(text.text, policy):
            data = run.decode()
            line = text.text.count("\n", 0, run.start) + 1
            origin = f"{text.origin}, line {line}".lstrip(", ")
            if data is None:
                found.checks.append(Check("encoded data", Outcome.REVIEW, f"a {len(run.text)}"
                                          f"-character {run.kind}-like run that does not "
                                          f"decode ({origin})", name))
            else:
                found.embedded.append(Embedded(f"{run.kind} run at {origin}", data,
                                               encoded=True))
    embedded, found.embedded = found.embedded, []
    for item in embedded:
        _embedded(found, item, name, policy, depth)


def _embedded(found: Contents, item: Embedded, name: str, policy: ExportPolicy,
              depth: int) -> None:
    where = item.origin
    mime = content.sniff(item.content)
    text = content.decode_text(item.content) if mime is None else None
    if item.claimed in EMBEDDED_SUFFIX and item.claimed != "image/svg+xml" \
            and mime != item.claimed:
        found.checks.append(Check("content", Outcome.FAIL, f"{where}: declared "
                                  f"{item.claimed} but holds {content.describe(item.content)}",
                                  name))
        return
    if content.is_data_format(mime):
        found.checks.append(Check("encoded data" if item.encoded else "content", Outcome.FAIL,
                                  f"{where} holds {mime} data", name))
        return
    if depth > policy.max_depth:
        found.checks.append(Check("encoded data", Outcome.REVIEW, f"{where}: nested too deep "
                                  "to check", name))
        return
    suffix = EMBEDDED_SUFFIX.get(item.claimed or mime or "")
    if suffix is not None:
        inner = _read(suffix, item.content, name, policy)
        inner.checks = [Check(c.check, c.outcome, f"{where}: {c.reason}", name)
                        for c in inner.checks if c.outcome != Outcome.PASS]
    elif text is not None:
        inner = Contents(texts=[Text(where, text)])
    else:
        inner = Contents()
        found.checks.append(Check("encoded data", Outcome.REVIEW, f"{where}: "
                                  f"{len(item.content):,} bytes of binary data", name))
    if item.encoded and (mime or text is not None):
        found.checks.append(Check("encoded data", Outcome.REVIEW, f"{where} decodes to "
                                  f"{content.describe(item.content)}, which the reviewer "
                                  "cannot read as it stands", name))
    _unwrap(inner, name, policy, depth + 1)
    found.add(inner)
