"""What a reviewer sees of each file in an export request, for every allowed type: text,
code and Markdown as text; CSV/TSV and JSON as tables (and text); notebooks cell by cell
(source, text outputs, their tables re-drawn by the portal, their figures); figures as
pictures; PDFs as rendered pages; SVG as a picture.

Nothing the researcher wrote is ever rendered as markup by the reviewer's browser: text
and tables are escaped by the templates, a notebook's HTML is read for its tables and
shown as text, figures are re-encoded from their decoded pixels (so only pixels Pillow
understood reach the page), PDF pages are rendered to pictures on the server (PDFium), and
SVG is only ever loaded as an image (where browsers run no script) and served with a
sandboxing ``Content-Security-Policy``. The adversary is a researcher whose file attacks
the reviewer's browser or hides from the reviewer's eyes."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field

import pypdfium2 as pdfium
from PIL import Image

from sandbox.exports import content as sniffing
from sandbox.exports import tables
from sandbox.exports.model import ExportPolicy, Table

MAX_TEXT = 50_000        # characters of text shown
MAX_ROWS = 200           # rows of a table shown
MAX_SIDE = 1600          # pixels of a preview's longer side
MAX_PDF_PAGES = 20       # pages rendered
POLICY = ExportPolicy()


@dataclass
class Cell:
    kind: str                     # "code", "markdown", "raw"
    source: str
    outputs: list[dict] = field(default_factory=list)  # {"text"} | {"table"} | {"image"}


@dataclass
class Preview:
    kind: str                     # image, svg, pdf, table, text, notebook, binary
    text: str | None = None       # shown escaped
    tables: list[Table] = field(default_factory=list)
    pages: int = 0                # PDF pages (the first MAX_PDF_PAGES are rendered)
    cells: list[Cell] = field(default_factory=list)
    # why there is less to see than the file holds (the page says it in its language)
    more_pages: int = 0           # PDF pages not rendered
    cut: bool = False             # text cut at MAX_TEXT characters
    unreadable: str | None = None  # what the bytes are, when they cannot be shown


def preview(name: str, data: bytes) -> Preview:
    """The reviewer's view of the file ``name``; never raises for a bad file."""
    try:
        return _preview(name, data)
    except Exception as exc:  # hostile bytes must not break the review page
        return _binary(data, f"unreadable ({type(exc).__name__})")


def _preview(name: str, data: bytes) -> Preview:
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    if suffix in ("png", "jpg", "jpeg"):
        return Preview("image")
    if suffix == "pdf":
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            return _binary(data, f"PDFium: {exc}")
        pages = len(document)
        document.close()
        return Preview("pdf", pages=min(pages, MAX_PDF_PAGES),
                       more_pages=max(pages - MAX_PDF_PAGES, 0))
    text = sniffing.decode_text(data)
    if text is None:
        return _binary(data, sniffing.describe(data))
    shown, cut = text[:MAX_TEXT], len(text) > MAX_TEXT
    if suffix == "svg":
        return Preview("svg", text=shown, cut=cut)
    if suffix in ("csv", "tsv"):
        table, _ = tables.from_csv(text, "," if suffix == "csv" else "\t")
        return Preview("table", text=shown, tables=[_cut(table)], cut=cut)
    if suffix == "json":
        try:
            found = [_cut(t) for t in tables.from_json(json.loads(text), "")]
        except ValueError:
            found = []
        return Preview("table" if found else "text", text=shown, tables=found, cut=cut)
    if suffix == "ipynb":
        cells = _cells(text)
        if cells is not None:
            return Preview("notebook", text=shown, cells=cells, cut=cut)
    return Preview("text", text=shown, cut=cut)


def _binary(data: bytes, why: str) -> Preview:
    head = data[:512]
    dump = "\n".join(f"{i:08x}  {head[i:i + 16].hex(' ')}" for i in range(0, len(head), 16))
    return Preview("binary", text=dump, unreadable=why)


def _cut(table: Table) -> Table:
    return Table(table.origin, table.header, table.rows[:MAX_ROWS], table.labels)


def _joined(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                            indent=1)


def _cells(text: str) -> list[Cell] | None:
    try:
        notebook = json.loads(text)
        cells = notebook["cells"]
    except (ValueError, KeyError, TypeError):
        return None
    shown = []
    for number, cell in enumerate(cells if isinstance(cells, list) else []):
        if not isinstance(cell, dict):
            continue
        item = Cell(str(cell.get("cell_type", "")), _joined(cell.get("source", ""))[:MAX_TEXT])
        for index, output in enumerate(cell.get("outputs") or []):
            if not isinstance(output, dict):
                continue
            if "text" in output:
                item.outputs.append({"text": _joined(output["text"])[:MAX_TEXT]})
            if output.get("traceback"):
                item.outputs.append({"text": "\n".join(output["traceback"])[:MAX_TEXT]})
            data = output.get("data") or {}
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    item.outputs.append({"image": (number, index, mime)})
            for found in tables.from_html(_joined(data.get("text/html", "")), ""):
                item.outputs.append({"table": _cut(found)})
            for mime, value in data.items():
                if mime not in ("image/png", "image/jpeg", "text/html"):
                    item.outputs.append({"text": f"[{mime}]\n{_joined(value)[:MAX_TEXT]}"})
            if "text/html" in data:
                item.outputs.append({"text": f"[text/html]\n{_joined(data['text/html'])}"})
        shown.append(item)
    return shown


# -- pictures ---------------------------------------------------------------------------

class NoPicture(Exception):
    """The file holds no picture at that place."""


def picture(name: str, data: bytes, page: int = 0, cell: int | None = None,
            output: int | None = None) -> bytes:
    """A PNG of what the file shows: a figure's pixels, a PDF page, a notebook figure."""
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    if suffix == "pdf":
        return _pdf_page(data, page)
    if suffix == "ipynb":
        return _pixels(_notebook_image(data, cell, output))
    if suffix in ("png", "jpg", "jpeg"):
        return _pixels(data)
    raise NoPicture(name)


def _pixels(data: bytes) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > POLICY.max_pixels:
                raise NoPicture("too large to draw")
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB") \
                .save(out, format="PNG")
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NoPicture(str(exc)) from exc


def _pdf_page(data: bytes, page: int) -> bytes:
    if not 0 <= page < MAX_PDF_PAGES:
        raise NoPicture("page not rendered")
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise NoPicture(str(exc)) from exc
    try:
        if page >= len(document):
            raise NoPicture("no such page")
        width, height = document[page].get_size()
        scale = min(2.0, MAX_SIDE / max(width, height, 1))
        image = document[page].render(scale=scale).to_pil()
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()
    finally:
        document.close()


def _notebook_image(data: bytes, cell: int | None, output: int | None) -> bytes:
    try:
        bundle = json.loads(data)["cells"][cell]["outputs"][output]["data"]
        value = bundle.get("image/png") or bundle.get("image/jpeg")
        return base64.b64decode(re.sub(r"\s", "", _joined(value)), validate=True)
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise NoPicture("no figure there") from exc

