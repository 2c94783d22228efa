"""What leaves is what the reviewers saw: each file rebuilt to carry only what the review
page shows. The review page previews the rebuilt file, and the release and every download
are made from it (then watermarked), so a part of a file no reviewer could see does not
leave — whatever the automated checks made of it.

- **notebooks**: cells (type, source, attachments), outputs (stream text, error name,
  value and traceback, every data bundle); of the metadata only ``kernelspec`` and
  ``language_info`` (shown on the review page). Cell and output metadata, execution
  counts, cell ids and any other key are dropped (ids are renumbered where the format
  needs them).
- **PDFs**: rebuilt from their pages — each page's content, resources, boxes and
  rotation — without the document information (``/Info``), XMP metadata, outlines,
  names, forms, annotations, page metadata or thumbnails. What the review shows of a PDF
  is its rendered pages.
- **SVG**: parsed and written again, without comments, processing instructions or a
  DOCTYPE (the review page shows the rendered figure and this source).

Other files leave as they are (text is shown as it is; figures are re-encoded from their
pixels by the watermark). A file that does not parse as its type is returned unchanged: it
failed the automated checks and cannot be released."""

from __future__ import annotations

import io
import json

from pypdf import PdfReader, PdfWriter
from pypdf.errors import PyPdfError
from pypdf.generic import NameObject

from sandbox.exports import svg

KEPT_METADATA = ("kernelspec", "language_info")
# What a page needs to be drawn as it was.
PAGE_KEYS = frozenset({"/Type", "/Parent", "/Resources", "/Contents", "/MediaBox",
                       "/CropBox", "/Rotate", "/Group", "/UserUnit"})
OUTPUT_KEYS = {"stream": ("name", "text"), "error": ("ename", "evalue", "traceback"),
               "display_data": ("data",), "execute_result": ("data",),
               "update_display_data": ("data",)}


def rebuild(name: str, content: bytes) -> bytes:
    """``content`` of the file ``name`` as the review page shows it and as it leaves."""
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    try:
        if suffix == "ipynb":
            return notebook(content)
        if suffix == "pdf":
            return pdf(content)
        if suffix == "svg":
            return svg.serialise(svg.parse(content.decode("utf-8-sig")))
    except (ValueError, KeyError, TypeError, AttributeError, PyPdfError, OSError,
            RecursionError):
        return content
    return content


def notebook(content: bytes) -> bytes:
    book = json.loads(content.decode("utf-8-sig"))
    minor = book.get("nbformat_minor", 4)
    minor = minor if isinstance(minor, int) else 4
    metadata = book.get("metadata") if isinstance(book.get("metadata"), dict) else {}
    cells = []
    for number, cell in enumerate(book["cells"], 1):
        kind = cell.get("cell_type", "raw")
        kept: dict = {"cell_type": kind, "metadata": {}, "source": cell.get("source", "")}
        if minor >= 5:
            kept = {"id": f"cell-{number}", **kept}
        if cell.get("attachments") and kind != "code":
            kept["attachments"] = cell["attachments"]
        if kind == "code":
            kept["execution_count"] = None
            kept["outputs"] = [_output(o) for o in cell.get("outputs") or []
                               if isinstance(o, dict)]
        cells.append(kept)
    rebuilt = {"cells": cells, "metadata": {k: metadata[k] for k in KEPT_METADATA
                                             if k in metadata},
               "nbformat": book.get("nbformat", 4), "nbformat_minor": minor}
    return json.dumps(rebuilt, ensure_ascii=False, indent=1).encode() + b"\n"


def _output(output: dict) -> dict:
    kind = output.get("output_type", "")
    kept = {"output_type": kind}
    for key in OUTPUT_KEYS.get(kind, ()):
        if key in output:
            kept[key] = output[key]
    if kind in ("display_data", "execute_result", "update_display_data"):
        kept["metadata"] = {}
    if kind == "execute_result":
        kept["execution_count"] = None
    return kept


def pdf(content: bytes) -> bytes:
    reader = PdfReader(io.BytesIO(content), strict=False)
    writer = PdfWriter()
    for page in reader.pages:
        for key in [k for k in page if k not in PAGE_KEYS]:
            del page[NameObject(key)]
        writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
