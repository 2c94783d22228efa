"""Watermarks: every file of a downloaded bundle names the account that downloaded it and
when, so that a copy found elsewhere tells whose download it came from. Figures and PDFs
get the mark drawn on them (and, for figures, in their metadata too); text files, tables,
Markdown and code get a first line (a comment where the format has one); JSON gets a
``_watermark`` key; notebooks get a first cell. Each mark keeps the file a valid file of its
type — the export checks would read it again as they read the original.

The adversary is the researcher whose file is marked: nothing in it may cancel the mark.
A JSON file's own ``_watermark`` is replaced, never kept. An SVG figure becomes the inner
part of a new one that draws the mark on a strip of its own after it — outside every
group, filter, mask and clip of the figure, and beyond the reach of its style sheets
(scoped to the figure). A PDF page gets the mark on a white box inside its visible
area (the crop box), drawn after the page's own content."""

from __future__ import annotations

import hashlib
import io
import json
from xml.etree.ElementTree import Element, SubElement

from PIL import Image, ImageDraw, PngImagePlugin
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ContentStream, RectangleObject
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas

from sandbox.exports import svg

KEY = "_watermark"  # where JSON files and notebooks carry the mark
# The mark's own style, declared important on the element itself: no style sheet rule
# outranks it (defence in depth: the figure's sheets are scoped away from it anyway).
MARK_STYLE = ("display:inline; visibility:visible; opacity:1; fill:#5a5a5a; fill-opacity:1; "
              "stroke:none; font-family:sans-serif; font-style:normal; font-weight:normal; "
              "font-size:{size}px; letter-spacing:normal; word-spacing:normal; "
              "text-anchor:start; writing-mode:horizontal-tb; transform:none; "
              "clip-path:none; mask:none; filter:none")


def watermark(name: str, content: bytes, mark: str) -> bytes:
    """``content`` of the file called ``name`` with ``mark`` on it."""
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    if suffix in ("png", "jpg", "jpeg"):
        return _image(content, mark, "PNG" if suffix == "png" else "JPEG")
    if suffix == "pdf":
        return _pdf(content, mark)
    if suffix == "svg":
        return _svg(content, mark)
    if suffix == "json":
        return _json(content, mark)
    if suffix == "ipynb":
        return _notebook(content, mark)
    comment = {"csv": "# ", "tsv": "# ", "py": "# ", "r": "# ", "md": "> "}.get(suffix, "")
    return _first_line(content, f"{comment}{mark}")


def _image(content: bytes, mark: str, kind: str) -> bytes:
    image = Image.open(io.BytesIO(content)).convert("RGB")
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), mark)
    height = box[3] - box[1] + 6
    draw.rectangle((0, image.height - height, image.width, image.height), fill="white")
    draw.text((4, image.height - height + 2), mark, fill=(120, 120, 120))
    out = io.BytesIO()
    if kind == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Watermark", mark)
        image.save(out, format="PNG", pnginfo=info)
    else:
        image.save(out, format="JPEG", comment=mark.encode())
    return out.getvalue()


def _pdf(content: bytes, mark: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(content)))
    for page in writer.pages:
        _close(page, writer)
        page.merge_page(_stamp(_visible(page), mark))
    writer.add_metadata({"/Watermark": mark})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _close(page, writer: PdfWriter) -> None:
    """End what the page's content leaves open — marked content (an optional-content
    group switched off hides all after it), a text object, saved graphics states (a
    zero-size transformation) — so that nothing of it carries over to the mark."""
    contents = page.get_contents()
    if contents is None:
        return
    stream = ContentStream(contents, writer)
    depth = {b"q": 0, b"BT": 0, b"BMC": 0}
    for _, operator in stream.operations:
        opened = {b"BDC": b"BMC"}.get(operator, operator)
        closes = {b"Q": b"q", b"ET": b"BT", b"EMC": b"BMC"}.get(operator)
        if opened in depth:
            depth[opened] += 1
        elif closes is not None:
            depth[closes] = max(depth[closes] - 1, 0)
    if any(depth.values()):
        stream.operations += [([], b"EMC")] * depth[b"BMC"] + [([], b"ET")] * min(
            depth[b"BT"], 1) + [([], b"Q")] * depth[b"q"]
        page.replace_contents(stream)


def _visible(page) -> tuple[float, float, float, float]:
    """The part of the page a viewer shows: the crop box within the media box."""
    media, crop = RectangleObject(page.mediabox), RectangleObject(page.cropbox)
    left, bottom = max(media.left, crop.left), max(media.bottom, crop.bottom)
    right, top = min(media.right, crop.right), min(media.top, crop.top)
    return float(left), float(bottom), float(max(right, left)), float(max(top, bottom))


def _stamp(box: tuple[float, float, float, float], mark: str):
    """A page drawing ``mark`` on a white box in the bottom-left corner of ``box``."""
    left, bottom, right, top = box
    width = max(right - left, 1.0)
    size = min(8.0, max((width - 8) / max(stringWidth(mark, "Helvetica", 1), 1), 1.0))
    stamp = io.BytesIO()
    pdf = canvas.Canvas(stamp, pagesize=(max(right, 1.0), max(top, 1.0)))
    pdf.setFillGray(1)
    pdf.rect(left, bottom, min(stringWidth(mark, "Helvetica", size) + 8, width),
             size * 1.75, stroke=0, fill=1)
    pdf.setFont("Helvetica", size)
    pdf.setFillGray(0.35)
    pdf.drawString(left + 4, bottom + size * 0.5, mark)
    pdf.save()
    return PdfReader(io.BytesIO(stamp.getvalue())).pages[0]


def _svg(content: bytes, mark: str) -> bytes:
    figure = svg.parse(content.decode("utf-8-sig"))
    width, height = svg.size(figure)
    # large enough to read on a large figure, small enough to fit a narrow one
    size = max(min(max(9.0, min(width, height) / 40), (width - 4) / (0.6 * len(mark))), 4.0)
    strip = size * 1.6
    scope = f"figure-{hashlib.sha256(content).hexdigest()[:16]}"
    svg.scope_styles(figure, scope)
    for attribute in ("x", "y", "width", "height"):
        figure.attrib.pop(attribute, None)
    figure.set("width", f"{width:g}")
    figure.set("height", f"{height:g}")
    outer = Element(f"{svg.SVG}svg", {
        "version": "1.1", "width": f"{width:g}", "height": f"{height + strip:g}",
        "viewBox": f"0 0 {width:g} {height + strip:g}"})
    SubElement(outer, f"{svg.SVG}g", {"id": scope}).append(figure)
    SubElement(outer, f"{svg.SVG}rect", {
        "x": "0", "y": f"{height:g}", "width": f"{width:g}", "height": f"{strip:g}",
        "fill": "#ffffff", "style": "display:inline !important; visibility:visible "
        "!important; opacity:1 !important; fill:#ffffff !important; transform:none "
        "!important; clip-path:none !important; mask:none !important; filter:none "
        "!important"})
    text = SubElement(outer, f"{svg.SVG}text", {
        "x": f"{size / 2:g}", "y": f"{height + strip - size / 2:g}", "font-size": f"{size:g}",
        "font-family": "sans-serif", "fill": "#5a5a5a",
        "style": "; ".join(f"{d} !important" for d in MARK_STYLE.format(size=f"{size:g}")
                           .split("; "))})
    text.text = mark
    if 0.6 * size * len(mark) > width - size:  # squeezed into the figure's width
        text.set("textLength", f"{width - size:g}")
        text.set("lengthAdjust", "spacingAndGlyphs")
    return svg.serialise(outer)


def _json(content: bytes, mark: str) -> bytes:
    value = json.loads(content.decode("utf-8-sig"))
    # the file's own key never stands in for the mark: it is replaced
    marked = {KEY: mark, **{k: v for k, v in value.items() if k != KEY}} \
        if isinstance(value, dict) else {KEY: mark, "data": value}
    return json.dumps(marked, ensure_ascii=False, indent=2).encode() + b"\n"


def _notebook(content: bytes, mark: str) -> bytes:
    notebook = json.loads(content.decode("utf-8-sig"))
    cell = {"cell_type": "markdown", "metadata": {}, "source": [f"*{mark}*"]}
    minor = notebook.get("nbformat_minor", 0)
    if isinstance(minor, int) and minor >= 5:  # cell ids from format 4.5 on
        cell = {"id": "watermark", **cell}
    notebook.setdefault("cells", []).insert(0, cell)
    notebook.setdefault("metadata", {})[KEY] = mark
    return json.dumps(notebook, ensure_ascii=False, indent=1).encode() + b"\n"


def _first_line(content: bytes, line: str) -> bytes:
    """``line`` before the text, after a byte-order mark and a ``#!`` line, in the file's
    own encoding."""
    bom = b"\xef\xbb\xbf" if content.startswith(b"\xef\xbb\xbf") else b""
    body = content[len(bom):]
    try:
        body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "gb18030"
    head = b""
    if body.startswith(b"#!"):
        head, _, body = body.partition(b"\n")
        head += b"\n"
    return bom + head + line.encode(encoding) + b"\n" + body
