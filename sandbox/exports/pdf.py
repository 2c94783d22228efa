"""PDFs: a file passes as a PDF only when pypdf reads it and it carries nothing beside its
pages. Against a researcher hiding data in a report:

- after the last ``%%EOF`` only a line end may follow. Incremental updates (a signature, an
  edit) legitimately add objects and a new ``%%EOF`` after the first one, so the *last*
  marker counts and each update is shown to the reviewer — the earlier versions of the
  pages travel with the file, unseen;
- no attached files (the ``EmbeddedFiles`` tree, file-attachment annotations), no
  scripts or launch actions, no media, no encryption (content that cannot be read cannot
  be checked);
- no archive, database or data-frame file anywhere in its bytes or its decoded streams,
  referenced or not;
- the text of every page, and the document information (``/Info``: title, subject,
  keywords …) and XMP metadata, are handed on to the text checks (identifiers, tables,
  encoded runs). The released copy carries neither (``reviewed``), but what a file
  carries is checked all the same.
"""

from __future__ import annotations

import io
import logging
import re
import zlib

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pypdf import PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import DictionaryObject, IndirectObject, StreamObject

from sandbox.exports.content import decode_text, describe, is_data_format, sniff
from sandbox.exports.model import Check, Contents, ExportPolicy, Outcome, Text

# Line ends and padding a writer may put after %%EOF (more is data).
EOF_PADDING = b"\r\n\t \x00\x0c"
MAX_EOF_PADDING = 32
# Signatures of at least four bytes (shorter ones turn up by chance in compressed data).
HIDDEN = (b"PK\x03\x04", b"PK\x05\x06", b"PAR1", b"SQLite format 3\x00", b"\x1f\x8b\x08\x00",
          b"\x1f\x8b\x08\x08", b"7z\xbc\xaf\x27\x1c", b"\x89HDF\r\n\x1a\n", b"ARROW1",
          b"\x93NUMPY", b"Rar!\x1a\x07", b"\xfd7zXZ\x00", b"BZh91AY&SY")
STREAM = re.compile(rb"stream\r?\n")
MAX_INFLATED = 32 * 1024 * 1024
# What a figure or a report does not need: scripts, actions that open other things, media,
# attached files (by the key that holds them, or by the kind a value declares).
RISKY_KEYS = frozenset({"/JS", "/JavaScript", "/XFA", "/EmbeddedFiles"})
RISKY_VALUES = {"/S": frozenset({"/JavaScript", "/Launch", "/ImportData", "/Rendition",
                                 "/RichMediaExecute"}),
                "/Subtype": frozenset({"/FileAttachment", "/RichMedia", "/Movie", "/Sound",
                                       "/Screen", "/3D"}),
                "/Type": frozenset({"/EmbeddedFile"})}

# pypdf reports recoverable oddities as warnings; they are not the reviewer's business.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def _fail(reason: str, name: str) -> Check:
    return Check("content", Outcome.FAIL, reason, name)


def check_pdf(content: bytes, name: str, policy: ExportPolicy) -> Contents:
    found = Contents()
    if not content.startswith(b"%PDF-"):
        found.checks.append(_fail(f"not a PDF: {describe(content)}", name))
        return found
    last = content.rfind(b"%%EOF")
    if last < 0:
        found.checks.append(_fail("the PDF has no end marker (%%EOF)", name))
        return found
    after = content[last + len(b"%%EOF"):]
    if after.strip(EOF_PADDING) or len(after) > MAX_EOF_PADDING:
        found.checks.append(_fail(f"{len(after):,} bytes after the PDF's last end marker "
                                  f"(%%EOF): {describe(after.strip(EOF_PADDING))}", name))
    updates = content.count(b"%%EOF") - 1 - (b"/Linearized" in content[:1024])
    if updates > 0:
        found.checks.append(Check("content", Outcome.REVIEW, f"the PDF was updated "
                                  f"{updates} time(s) after it was made: earlier versions "
                                  "of its pages travel with it, unseen", name))
    _hidden_files(found, content, name)
    try:
        pages = _read(found, content, name, policy)
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError,
            RecursionError) as exc:
        found.checks.append(_fail(f"not a readable PDF: {exc}", name))
        return found
    if not found.checks:
        found.checks.append(Check("content", Outcome.PASS, f"a PDF of {pages} page(s)",
                                  name))
    return found


def _hidden_files(found: Contents, content: bytes, name: str) -> None:
    """Archives and data files in the raw bytes or in any Flate stream, referenced or not
    (an unreferenced object is invisible to every viewer)."""
    for signature in HIDDEN:
        at = content.find(signature)
        if at >= 0:
            found.checks.append(_fail(f"{describe(content[at:at + 4096])} inside the PDF at "
                                      f"byte {at:,}", name))
            return
    budget = MAX_INFLATED
    for match in STREAM.finditer(content):
        end = content.find(b"endstream", match.end())
        if end < 0 or budget <= 0:
            return
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(content[match.end():end], budget)
        except zlib.error:
            continue
        budget -= len(data)
        mime = sniff(data)
        if is_data_format(mime):
            found.checks.append(_fail(f"a stream at byte {match.start():,} of the PDF holds "
                                      f"{mime} data", name))
            return


def _read(found: Contents, content: bytes, name: str, policy: ExportPolicy) -> int:
    reader = PdfReader(io.BytesIO(content), strict=False)
    if reader.is_encrypted:
        found.checks.append(_fail("the PDF is encrypted: its content cannot be checked",
                                  name))
        return 0
    attached = list(reader.attachments)
    if attached:
        found.checks.append(_fail(f"the PDF carries {len(attached)} attached file(s): "
                                  f"{', '.join(attached[:5])}", name))
    actions = sorted(_actions(reader))
    if actions:
        found.checks.append(_fail(f"the PDF holds {', '.join(actions)} (scripts, media or "
                                  "attachments a figure or report does not need)", name))
    pages = len(reader.pages)
    if pages > policy.max_pdf_pages:
        found.checks.append(_fail(f"{pages} pages; at most {policy.max_pdf_pages}", name))
        return pages
    for number, page in enumerate(reader.pages, 1):
        text = page.extract_text(extraction_mode="layout")
        if text.strip():
            found.texts.append(Text(f"page {number}", text))
    _metadata(found, reader)
    for number, stream in _streams(reader):
        data = stream.get_data()
        mime = sniff(data)
        if is_data_format(mime):
            found.checks.append(_fail(f"PDF object {number} holds {mime} data", name))
    return pages


def _metadata(found: Contents, reader: PdfReader) -> None:
    """The document information's values, each as text of its own (a CSV in /Subject is
    a table), and the XMP packet's text and attribute values."""
    info = reader.trailer.get("/Info")
    info = info.get_object() if info is not None else None
    if isinstance(info, DictionaryObject):
        for key, value in info.items():
            value = value.get_object() if isinstance(value, IndirectObject) else value
            if not isinstance(value, DictionaryObject | StreamObject | list):
                found.texts.append(Text(f"document information {key}", str(value)))
    packet = reader.root_object.get("/Metadata")
    packet = packet.get_object() if packet is not None else None
    if not isinstance(packet, StreamObject):
        return
    data = packet.get_data()
    try:
        root = fromstring(data, forbid_dtd=True)
        values = [t for e in root.iter() for t in (e.text, *e.attrib.values()) if t]
        text = "\n".join(v.strip() for v in values if v.strip())
    except (ValueError, SyntaxError, DefusedXmlException):
        text = decode_text(data) or ""  # unparseable: read as it is
    if text.strip():
        found.texts.append(Text("XMP metadata", text))


def _streams(reader: PdfReader):
    """Every stream object the cross-reference tables list."""
    for generation, objects in reader.xref.items():
        for number in objects:
            try:
                value = IndirectObject(number, generation, reader).get_object()
            except (PyPdfError, ValueError, KeyError, TypeError, OSError):
                continue
            if isinstance(value, StreamObject):
                yield number, value


def _actions(reader: PdfReader) -> set[str]:
    """Names of script, launch, media and attachment keys anywhere in the document."""
    seen, found = set(), set()
    stack = [reader.trailer]
    while stack:
        value = stack.pop()
        if isinstance(value, IndirectObject):
            key = (value.idnum, value.generation)
            if key in seen:
                continue
            seen.add(key)
            value = value.get_object()
        if isinstance(value, DictionaryObject):
            for key, item in value.items():
                if key in RISKY_KEYS:
                    found.add(str(key).lstrip("/"))
                if key in RISKY_VALUES and item in RISKY_VALUES[key]:
                    found.add(str(item).lstrip("/"))
                if key != "/Parent":
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
    return found
