"""Watermarks: every file of a downloaded bundle names the account that downloaded it and
when, so that a copy found elsewhere tells whose download it came from. Figures and PDFs
get the mark drawn on them (and, for figures, in their metadata too); text files, tables,
Markdown and code get a first line (a comment where the format has one); JSON gets a
``_watermark`` key; notebooks get a first cell. Each mark keeps the file a valid file of its
type — the export checks would read it again as they read the original."""

from __future__ import annotations

import io
import json
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, PngImagePlugin
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

KEY = "_watermark"  # where JSON files and notebooks carry the mark


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
    stamp = io.BytesIO()
    pdf = canvas.Canvas(stamp, pagesize=A4)
    pdf.setFont("Helvetica", 8)
    pdf.setFillGray(0.45)
    pdf.drawString(20, 12, mark)
    pdf.save()
    overlay = PdfReader(io.BytesIO(stamp.getvalue())).pages[0]
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(content)))
    for page in writer.pages:
        page.merge_page(overlay)
    writer.add_metadata({"/Watermark": mark})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _svg(content: bytes, mark: str) -> bytes:
    text = content.decode("utf-8")
    end = text.rindex("</svg>")
    drawn = (f'<text x="4" y="12" font-family="sans-serif" font-size="9" '
             f'fill="#787878">{escape(mark)}</text>')
    return (text[:end] + drawn + text[end:]).encode()


def _json(content: bytes, mark: str) -> bytes:
    value = json.loads(content.decode("utf-8-sig"))
    marked = {KEY: mark, **value} if isinstance(value, dict) else {KEY: mark, "data": value}
    return json.dumps(marked, ensure_ascii=False, indent=2).encode() + b"\n"


def _notebook(content: bytes, mark: str) -> bytes:
    notebook = json.loads(content.decode("utf-8-sig"))
    notebook.setdefault("cells", []).insert(0, {"cell_type": "markdown", "metadata": {},
                                                "source": [f"*{mark}*"]})
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
