"""What a reviewer sees of each file in an export request, for every allowed type: text,
code and Markdown as text; CSV/TSV and JSON as tables (and text); notebooks cell by cell
(source, attachments, text outputs, their tables re-drawn by the portal, their figures)
and the metadata they keep; figures as pictures; PDFs as rendered pages; SVG as a
rendered picture and its source.

What is previewed is the file as it will leave (``sandbox.exports.reviewed``: notebook and
PDF metadata the page does not show are dropped from the released copy), so that the
reviewers see all of what leaves.

Nothing the researcher wrote is ever rendered as markup by the reviewer's browser, and
no file's own bytes are served: text and tables are escaped by the templates, a
notebook's HTML is read for its tables and shown as text, figures are re-encoded from
their decoded pixels (so only pixels Pillow understood reach the page), and PDF pages
(PDFium) and SVG figures (resvg, with everything that runs or links outside removed)
are rendered to pictures on the server. The adversaries are a researcher whose file
attacks the reviewer's browser or hides from the reviewer's eyes, and someone holding a
controller's session cookie, who gets pictures and text to read — never a file that
could pass for the released one (that takes a fresh code and carries a watermark)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pypdfium2 as pdfium
import reportlab
import resvg_py
from PIL import Image

from sandbox.exports import content as sniffing
from sandbox.exports import reviewed, svg, tables
from sandbox.exports.model import ExportPolicy, Table

MAX_TEXT = 50_000        # characters of text shown
MAX_ROWS = 200           # rows of a table shown
MAX_SIDE = 1600          # pixels of a preview's longer side
MAX_PDF_PAGES = 20       # pages rendered
POLICY = ExportPolicy()
# A font every SVG text can fall back to on any server (reportlab ships it), so that no
# text goes undrawn for want of the font it names; other scripts fall back to the
# system's fonts.
FALLBACK_FONT = Path(reportlab.__file__).parent / "fonts" / "Vera.ttf"
FALLBACK_FAMILY = "Bitstream Vera Sans"


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
    metadata: str | None = None   # a notebook's metadata that leaves with it
    # why there is less to see than the file holds (the page says it in its language)
    more_pages: int = 0           # PDF pages not rendered
    cut: bool = False             # text cut at MAX_TEXT characters
    unreadable: str | None = None  # what the bytes are, when they cannot be shown


def preview(name: str, data: bytes) -> Preview:
    """The reviewer's view of the file ``name`` as it will leave; never raises for a bad
    file."""
    try:
        return _preview(name, reviewed.rebuild(name, data))
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
            metadata = json.loads(text).get("metadata")
            return Preview("notebook", text=shown, cells=cells, cut=cut,
                           metadata=json.dumps(metadata, ensure_ascii=False, indent=1)
                           if metadata else None)
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
        for attachment, bundle in (cell.get("attachments") or {}).items():
            _bundle(item, bundle if isinstance(bundle, dict) else {},
                    (number, f"attachment:{attachment}"))
        for index, output in enumerate(cell.get("outputs") or []):
            if not isinstance(output, dict):
                continue
            if "text" in output:
                item.outputs.append({"text": _joined(output["text"])[:MAX_TEXT]})
            if output.get("output_type") == "error":
                item.outputs.append({"text": "\n".join([
                    f"{output.get('ename', '')}: {output.get('evalue', '')}",
                    *(str(line) for line in output.get("traceback") or [])])[:MAX_TEXT]})
            _bundle(item, output.get("data") or {}, (number, index))
        shown.append(item)
    return shown


def _bundle(item: Cell, data: dict, where: tuple[int, int | str]) -> None:
    """An output's (or attachment's) data, every type of it: figures as pictures, HTML
    tables redrawn and the HTML as text, anything else as text."""
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            item.outputs.append({"image": (*where, mime)})
    for found in tables.from_html(_joined(data.get("text/html", "")), ""):
        item.outputs.append({"table": _cut(found)})
    for mime, value in data.items():
        if mime not in ("image/png", "image/jpeg", "text/html"):
            item.outputs.append({"text": f"[{mime}]\n{_joined(value)[:MAX_TEXT]}"})
    if "text/html" in data:
        item.outputs.append({"text": f"[text/html]\n{_joined(data['text/html'])}"})


# -- pictures ---------------------------------------------------------------------------

class NoPicture(Exception):
    """The file holds no picture at that place."""


def picture(name: str, data: bytes, page: int = 0, cell: int | None = None,
            output: int | str | None = None) -> bytes:
    """A PNG of what the file shows, as it will leave: a figure's pixels, a PDF page, an
    SVG figure, a notebook's figure (``output`` an index, or ``attachment:NAME``)."""
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    data = reviewed.rebuild(name, data)
    if suffix == "pdf":
        return _pdf_page(data, page)
    if suffix == "ipynb":
        return _pixels(_notebook_image(data, cell, output))
    if suffix == "svg":
        return _pixels(_svg(data))
    if suffix in ("png", "jpg", "jpeg"):
        return _pixels(data)
    raise NoPicture(name)


def _svg(data: bytes) -> bytes:
    """The SVG drawn by resvg, never by the reviewer's browser — nothing in it runs, and
    nothing it links to outside its own elements and PNG/JPEG data is read."""
    try:
        drawn = svg.for_rendering(svg.parse(data.decode("utf-8-sig")))
        width, height = svg.size(drawn)
        zoom = min(2.0, MAX_SIDE / max(width, height, 1e-9))  # never a huge canvas
        families = {f"{kind}_family": FALLBACK_FAMILY for kind in (
            "font", "serif", "sans_serif", "monospace", "cursive", "fantasy")}
        return resvg_py.svg_to_bytes(svg_string=svg.serialise(drawn).decode(), dpi=96,
                                     zoom=zoom, background="white",
                                     font_files=[str(FALLBACK_FONT)], **families)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NoPicture(str(exc)) from exc
    except BaseException as exc:  # a panic in the renderer is a BaseException in Python
        if type(exc).__name__ != "PanicException":
            raise
        raise NoPicture("the renderer could not draw it") from exc


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


def _notebook_image(data: bytes, cell: int | None, output: int | str | None) -> bytes:
    try:
        found = json.loads(data)["cells"][cell]
        if isinstance(output, str) and output.startswith("attachment:"):
            bundle = found["attachments"][output.removeprefix("attachment:")]
        else:
            bundle = found["outputs"][int(output)]["data"]
        value = bundle.get("image/png") or bundle.get("image/jpeg")
        return base64.b64decode(re.sub(r"\s", "", _joined(value)), validate=True)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError,
            binascii.Error) as exc:
        raise NoPicture("no figure there") from exc
