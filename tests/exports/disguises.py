"""Files a researcher might try to take out of a sandbox: honest outputs (a matplotlib
figure, a CSV of released aggregates, a notebook of DP results, a reportlab PDF report)
and row-level data in disguise. Each builder makes the bytes the way an attacker would;
``CASES`` says what the automated export checks must make of each."""

from __future__ import annotations

import base64
import gzip
import io
import json
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import polars as pl
from PIL import Image, PngImagePlugin
from pypdf import PdfReader, PdfWriter
from pypdf.generic import (
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    TextStringObject,
)
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate
from reportlab.platypus import Table as PdfTable

# What the cited release holds (the receipt the tests sign carries exactly these rows).
RELEASED = [{"visit_type": "门诊", "mean": 1234.5678},
            {"visit_type": "住院", "mean": 18765.4321},
            {"visit_type": "急诊", "mean": 905.0}]


def patients(n: int = 40) -> pd.DataFrame:
    """Row-level records: what must never leave."""
    return pd.DataFrame({"patient": [f"P{i:05d}" for i in range(n)],
                         "sex": ["男" if i % 2 else "女" for i in range(n)],
                         "age": [30 + i % 50 for i in range(n)],
                         "total_cost": [1000 + i * 7.5 for i in range(n)]})


def rows_csv(n: int = 40) -> bytes:
    return patients(n).to_csv(index=False).encode()


# -- honest outputs ---------------------------------------------------------------------

def figure(fmt: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["outpatient", "inpatient", "emergency"], [r["mean"] for r in RELEASED])
    ax.set_title("mean cost by visit type")
    out = io.BytesIO()
    fig.savefig(out, format=fmt)
    plt.close(fig)
    return out.getvalue()


def jpeg_figure() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(figure("png"))).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def aggregates_csv() -> bytes:
    return ("visit_type,mean cost\n" + "".join(
        f"{r['visit_type']},{round(r['mean'], 2)}\n" for r in RELEASED)).encode()


def report_pdf(rows: list[list[str]] | None = None) -> bytes:
    out = io.BytesIO()
    styles = getSampleStyleSheet()
    cells = rows or [["visit type", "mean cost"], ["outpatient", "1234.57"],
                     ["inpatient", "18765.43"], ["emergency", "905"]]
    SimpleDocTemplate(out, pagesize=A4).build([
        Paragraph("Mean cost by visit type", styles["Title"]),
        Paragraph("Released with differential privacy (epsilon 0.5).", styles["Normal"]),
        PdfTable(cells)])
    return out.getvalue()


def notebook(outputs_of: Callable[[], list], source: str = "result.df") -> bytes:
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_markdown_cell("# 就诊费用分析"),
                  nbformat.v4.new_code_cell(
                      "from sandbox.client import Gateway\ngw = Gateway()\n"
                      "result = gw.mean('emr-visits', 'total_cost', group_by=['visit_type'],"
                      " epsilon=0.5)"),
                  nbformat.v4.new_code_cell(source, outputs=outputs_of())]
    return nbformat.writes(book).encode()


def display(frame: pd.DataFrame | pl.DataFrame) -> list:
    data = {"text/plain": repr(frame), "text/html": frame._repr_html_()}
    return [nbformat.v4.new_output("execute_result", data=data, execution_count=1)]


def dp_notebook() -> bytes:
    def outputs() -> list:
        figure_output = nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(figure("png")).decode(),
                                  "text/plain": "<Figure size 400x300 with 1 Axes>"})
        return [*display(pl.DataFrame(RELEASED)), figure_output,
                nbformat.v4.new_output("stream", name="stdout",
                                       text="spent ε = 0.5 of 2.0\n")]
    return notebook(outputs)


def jupyterlab_notebook() -> bytes:
    book = nbformat.reads(dp_notebook().decode(), as_version=4)
    book.metadata.update(
        kernelspec={"display_name": "Python 3 (ipykernel)", "language": "python",
                    "name": "python3"},
        language_info={"codemirror_mode": {"name": "ipython", "version": 3},
                       "file_extension": ".py", "mimetype": "text/x-python",
                       "name": "python", "nbconvert_exporter": "python",
                       "pygments_lexer": "ipython3", "version": "3.11.7"})
    for number, cell in enumerate(book.cells):
        cell.metadata.update(tags=["results"], execution={
            "iopub.execute_input": f"2025-03-01T09:3{number}:01.123456Z",
            "iopub.status.busy": f"2025-03-01T09:3{number}:01.120000Z",
            "iopub.status.idle": f"2025-03-01T09:3{number}:02.456789Z",
            "shell.execute_reply": f"2025-03-01T09:3{number}:02.450000Z"})
    book.cells[2].outputs[1].metadata.update({"image/png": {"width": 400, "height": 300},
                                              "needs_background": "light"})
    return nbformat.writes(book).encode()


def honest_notes() -> bytes:
    return ("# 分析步骤\n\n1. 读取 2025 年的就诊数据\n2. 按 3 类就诊类型分组\n"
            "3. 计算均值（ε = 0.5）\n4. 画图\n\n"
            "epsilon: 0.5\ndelta: 0\ngroups: 3\nseed: 20250301\n\n"
            "2025-03-01 09:30:01 INFO query 1 sent\n2025-03-01 09:30:02 INFO query 1 done\n"
            "2025-03-01 09:31:15 INFO query 2 sent\n2025-03-01 09:31:17 INFO query 2 done\n"
            ).encode()


def pdf_with_xmp() -> bytes:
    packet = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
              b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
              b'1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://'
              b'ns.adobe.com/xap/1.0/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/">'
              b"<xmp:CreateDate>2025-03-01T10:00:00+08:00</xmp:CreateDate>"
              b"<xmp:ModifyDate>2025-03-01T10:05:00+08:00</xmp:ModifyDate>"
              b"<xmp:MetadataDate>2025-03-01T10:05:00+08:00</xmp:MetadataDate>"
              b"<xmp:CreatorTool>Writer</xmp:CreatorTool><xmpMM:DocumentID>uuid:6f1d2c9a-"
              b"2b4e-4c11-9a8e-2f0c4d3b1a77</xmpMM:DocumentID></rdf:Description></rdf:RDF>"
              b'</x:xmpmeta><?xpacket end="w"?>')
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    stream = DecodedStreamObject()
    stream.set_data(packet)
    stream[NameObject("/Type")] = NameObject("/Metadata")
    stream[NameObject("/Subtype")] = NameObject("/XML")
    writer._root_object[NameObject("/Metadata")] = writer._add_object(stream)
    writer.add_metadata({"/Title": "Mean cost by visit type", "/Author": "课题组",
                         "/CreationDate": "D:20250301100000+08'00'"})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- disguises --------------------------------------------------------------------------

def png_with(chunk: bytes, data: bytes) -> bytes:
    """A real figure with one more chunk before IEND."""
    png = figure("png")
    iend = png.rindex(b"IEND") - 4
    extra = struct.pack(">I", len(data)) + chunk + data \
        + struct.pack(">I", zlib.crc32(chunk + data))
    return png[:iend] + extra + png[iend:]


def zipped(name: str = "rows.csv", data: bytes | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data if data is not None else rows_csv())
    return out.getvalue()


def parquet() -> bytes:
    out = io.BytesIO()
    pl.from_pandas(patients()).write_parquet(out)
    return out.getvalue()


def sqlite_db(tmp: Path) -> bytes:
    path = tmp / "rows.db"
    with sqlite3.connect(path) as db:
        patients().to_sql("visits", db, index=False)
    return path.read_bytes()


def huge_png() -> bytes:
    """A 30000×30000 canvas: a few KB compressed, 900 megapixels decoded."""
    width = height = 30000
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    raw = zlib.compress(b"\0" * ((width // 8 + 1) * 64), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data \
            + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) \
        + chunk(b"IEND", b"")


def png_extra_pixels() -> bytes:
    """Rows hidden inside the compressed pixel data, after the last scanline."""
    image = Image.new("L", (64, 48), 255)
    raw = b"".join(b"\0" + image.tobytes()[y * 64:(y + 1) * 64] for y in range(48))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data \
            + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 64, 48, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) \
        + chunk(b"IDAT", zlib.compress(raw + rows_csv())) + chunk(b"IEND", b"")


def png_text_chunk() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", rows_csv().decode(), zip=True)
    out = io.BytesIO()
    Image.open(io.BytesIO(figure("png"))).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def pdf_with_attachment() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    writer.add_attachment("rows.csv", rows_csv())
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_updated() -> bytes:
    """A legitimate incremental update (an added metadata field): earlier bytes stay."""
    original = report_pdf()
    writer = PdfWriter(io.BytesIO(original), incremental=True)
    writer.add_metadata({"/Title": "Mean cost by visit type"})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_hidden_stream() -> bytes:
    """A zip compressed into an object no page refers to."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    stream = DecodedStreamObject()
    stream.set_data(zipped())
    writer._add_object(stream.flate_encode())
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def svg_rows() -> bytes:
    frame = patients()
    texts = "".join(
        f'<text x="{10 + 60 * c}" y="{20 + 12 * r}" font-size="8">{value}</text>'
        for r, row in enumerate(frame.itertuples(index=False))
        for c, value in enumerate(row))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="600">{texts}'
            "</svg>").encode()


def svg_script() -> bytes:
    return figure("svg").replace(b"</svg>", b'<script>fetch("/controller/audit")</script>'
                                           b"</svg>")


def svg_image(png: bytes) -> bytes:
    encoded = base64.b64encode(png).decode()
    return ('<svg xmlns="http://www.w3.org/2000/svg" '
            'xmlns:xlink="http://www.w3.org/1999/xlink" width="400" height="300">'
            f'<image width="400" height="300" xlink:href="data:image/png;base64,{encoded}"/>'
            "</svg>").encode()


def pdf_with_script() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    writer._root_object[NameObject("/OpenAction")] = DictionaryObject({
        NameObject("/S"): NameObject("/JavaScript"),
        NameObject("/JS"): TextStringObject("app.alert('hello');")})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def id_number_text() -> bytes:
    from sandbox.data import idcard
    first17 = "44010619850312123"
    return ("随访名单\n" + "".join(f"患者 {first17 + idcard.check_digit(first17)} 复诊\n"
                                for _ in range(3)) + "x" * 80).encode()


def jpeg_with_zip() -> bytes:
    return jpeg_figure() + zipped()


def stream_notebook() -> bytes:
    return notebook(lambda: [nbformat.v4.new_output(
        "stream", name="stdout", text=patients().to_string() + "\n")], "print(df)")


def dataresource_notebook() -> bytes:
    frame = patients()
    bundle = {"schema": {"fields": [{"name": c} for c in frame.columns]},
              "data": frame.to_dict(orient="records")}
    return notebook(lambda: [nbformat.v4.new_output(
        "display_data", data={"application/vnd.dataresource+json": bundle,
                              "text/plain": "<table>"})], "display(df)")


def python_literal() -> bytes:
    rows = ",\n".join(f"    ({i}, \"{'男' if i % 2 else '女'}\", {30 + i % 50}, "
                      f"{1000 + i * 7.5})" for i in range(40))
    return f"ROWS = [\n{rows},\n]\n".encode()


def transposed_csv() -> bytes:
    return patients().set_index("patient").T.to_csv().encode()


def markdown_rows() -> bytes:
    return ("# 结果\n\n| patient | sex | age | total_cost |\n|---|---|---|---|\n" + "".join(
        f"| {r.patient} | {r.sex} | {r.age} | {r.total_cost} |\n"
        for r in patients().itertuples()) + "\n").encode()


def wrapped_base64(data: bytes) -> bytes:
    return base64.encodebytes(data)  # MIME style: 76 characters a line


@dataclass(frozen=True)
class Case:
    name: str
    made: str                 # how the attacker (or the honest researcher) made it
    build: Callable[[Path], bytes]
    expected: str             # "pass", "review" or "fail"
    because: str = ""         # a fragment of the reason the checks must give


CASES = [
    # honest outputs: these must keep passing
    Case("figure.png", "matplotlib savefig (PNG)", lambda _: figure("png"), "pass"),
    Case("figure.jpg", "matplotlib figure saved as JPEG by Pillow", lambda _: jpeg_figure(),
         "pass"),
    Case("figure.svg", "matplotlib savefig (SVG)", lambda _: figure("svg"), "pass"),
    Case("figure.pdf", "matplotlib savefig (PDF)", lambda _: figure("pdf"), "pass"),
    Case("means.csv", "CSV of the released means, rounded", lambda _: aggregates_csv(),
         "pass"),
    Case("means.json", "json.dump of the released rows",
         lambda _: json.dumps(RELEASED, ensure_ascii=False).encode(), "pass"),
    Case("analysis.ipynb", "notebook showing the DP result, a figure and the budget",
         lambda _: dp_notebook(), "pass"),
    Case("report.pdf", "reportlab report with a table of the released means",
         lambda _: report_pdf(), "pass"),
    Case("analysis.py", "the analysis code",
         lambda _: b"import matplotlib.pyplot as plt\nax.set_xlim(0, 10)\n"
                   b"ax.set_ylim(0, 5)\nax.set_title('mean', fontsize=8)\n", "pass"),
    Case("lab.ipynb", "a notebook as JupyterLab saves it (kernelspec, language_info, cell "
         "execution times, tags, output metadata)", lambda _: jupyterlab_notebook(), "pass"),
    Case("steps.md", "notes: a numbered list, key: value lines, a log with times",
         lambda _: honest_notes(), "pass"),
    Case("means.txt", "the released means, one per line after their label, with a "
         "currency sign or a unit, or in scientific notation", lambda _: (
             "门诊 ¥1234.57\n住院 ¥18765.43\n急诊 ¥905\n\n门诊 1234.6 元\n住院 18765.4 元\n"
             "急诊 905.0 元\n\n门诊 1.23e3\n住院 1.88e4\n急诊 9.05e2\n").encode(), "pass"),
    Case("report10.pdf", "a report with document information and XMP metadata as office "
         "tools write them", lambda _: pdf_with_xmp(), "pass"),
    # disguised rows
    Case("notes.txt", "base64 of a row-level CSV",
         lambda _: base64.b64encode(rows_csv()), "fail", "rows but the cited releases"),
    Case("notes2.txt", "base64 of a row-level CSV, wrapped at 76 columns",
         lambda _: wrapped_base64(rows_csv()), "fail", "rows but the cited releases"),
    Case("notes3.txt", "hex of a row-level CSV", lambda _: rows_csv().hex().encode(),
         "fail", "rows but the cited releases"),
    Case("archive.txt", "base64 of a zip of the rows", lambda _: base64.b64encode(zipped()),
         "fail", "application/zip data"),
    Case("rows.txt", "the rows as CSV text in a .txt", lambda _: rows_csv(), "fail",
         "rows but the cited releases"),
    Case("printout.txt", "print(df) of the rows (pandas)",
         lambda _: patients().to_string().encode(), "fail", "rows but the cited releases"),
    Case("rows.md", "a Markdown table of the rows", lambda _: markdown_rows(), "fail",
         "rows but the cited releases"),
    Case("data.txt", "gzip of a row-level CSV", lambda _: gzip.compress(rows_csv()), "fail",
         "binary data in a .txt file: application/gzip"),
    Case("records.json", "the rows as a list of records (orient='records')",
         lambda _: patients().to_json(orient="records", force_ascii=False).encode(), "fail",
         "rows but the cited releases"),
    Case("columns.json", "the rows as a dict of columns (orient='list')",
         lambda _: json.dumps(patients().to_dict(orient="list"), ensure_ascii=False).encode(),
         "fail", "rows but the cited releases"),
    Case("index.json", "the rows as a dict of records (orient='index')",
         lambda _: patients().to_json(orient="index", force_ascii=False).encode(), "fail",
         "rows but the cited releases"),
    Case("flat.json", "a mapping patient → cost",
         lambda _: json.dumps({f"P{i:05d}": 1000 + i for i in range(40)}).encode(), "fail",
         "rows but the cited releases"),
    Case("transposed.csv", "the rows transposed into columns", lambda _: transposed_csv(),
         "fail", "rows transposed into columns"),
    Case("work.ipynb", "notebook displaying the rows (pandas HTML and text)",
         lambda _: notebook(lambda: display(patients()), "df"), "fail",
         "rows but the cited releases"),
    Case("work2.ipynb", "notebook printing the rows to stdout", lambda _: stream_notebook(),
         "fail", "rows but the cited releases"),
    Case("work3.ipynb", "notebook with an application/vnd.dataresource+json output",
         lambda _: dataresource_notebook(), "fail", "rows but the cited releases"),
    Case("work4.ipynb", "notebook with a polars display of the rows",
         lambda _: notebook(lambda: display(pl.from_pandas(patients())), "df"), "fail",
         "rows but the cited releases"),
    Case("rows.py", "the rows as a Python list literal", lambda _: python_literal(),
         "review", "rows but the cited releases"),
    Case("figure2.png", "a zip appended after the PNG's IEND",
         lambda _: figure("png") + zipped(), "fail", "after the PNG's end (IEND)"),
    Case("figure3.png", "a Parquet file renamed .png", lambda _: parquet(), "fail",
         "not a PNG image: application/vnd.apache.parquet"),
    Case("figure4.png", "a SQLite database renamed .png", sqlite_db, "fail",
         "not a PNG image: application/x-sqlite3"),
    Case("report2.pdf", "a zip renamed .pdf", lambda _: zipped(), "fail",
         "not a PDF: application/zip"),
    Case("report3.pdf", "a Parquet file renamed .pdf", lambda _: parquet(), "fail",
         "not a PDF: application/vnd.apache.parquet"),
    Case("figure5.png", "the rows in a compressed PNG text chunk", lambda _: png_text_chunk(),
         "fail", "rows but the cited releases"),
    Case("figure6.png", "the rows in a private PNG chunk",
         lambda _: png_with(b"ruSe", rows_csv()), "fail", "non-standard 'ruSe' chunk"),
    Case("figure7.png", "a 30000×30000 canvas (decompression bomb)", lambda _: huge_png(),
         "fail", "no figure is that size"),
    Case("figure8.png", "the rows inside the pixel data after the last scanline",
         lambda _: png_extra_pixels(), "fail", "runs on past its 64×48 pixels"),
    Case("figure9.jpg", "a zip appended after the JPEG's EOI", lambda _: jpeg_with_zip(),
         "fail", "after the JPEG's end (EOI)"),
    Case("figure10.svg", "the rows as SVG <text> elements", lambda _: svg_rows(), "fail",
         "rows but the cited releases"),
    Case("figure11.svg", "an SVG with a <script>", lambda _: svg_script(), "fail",
         "a figure runs no code"),
    Case("figure13.svg", "an SVG with an onload handler",
         lambda _: figure("svg").replace(b"<svg ", b'<svg onload="alert(1)" ', 1), "fail",
         "event handler (onload)"),
    Case("figure14.svg", "an SVG that loads an image from outside",
         lambda _: figure("svg").replace(b"</svg>", b'<image href="https://evil.example/x'
                                         b'.png" width="1" height="1"/></svg>'), "fail",
         "links to 'https://evil.example"),
    Case("report9.pdf", "a PDF report with a JavaScript action", lambda _: pdf_with_script(),
         "fail", "JavaScript"),
    Case("ids.txt", "base64 of a text with resident ID numbers",
         lambda _: base64.b64encode(id_number_text()), "fail", "resident ID number"),
    Case("figure12.svg", "an SVG whose embedded PNG has a zip appended",
         lambda _: svg_image(figure("png") + zipped()), "fail", "after the PNG's end"),
    Case("report4.pdf", "a PDF report with the rows attached as a file",
         lambda _: pdf_with_attachment(), "fail", "attached file"),
    Case("report5.pdf", "a zip appended after the PDF's %%EOF",
         lambda _: report_pdf() + zipped(), "fail", "after the PDF's last end marker"),
    Case("report6.pdf", "a zip in an unreferenced, compressed PDF stream",
         lambda _: pdf_hidden_stream(), "fail", "application/zip data"),
    Case("report7.pdf", "a reportlab PDF whose table is the rows",
         lambda _: report_pdf([list(patients().columns)] + [
             [str(v) for v in row] for row in patients().itertuples(index=False)]),
         "fail", "rows but the cited releases"),
    Case("report8.pdf", "a PDF with an incremental update after its first %%EOF",
         lambda _: pdf_updated(), "review", "updated 1 time"),
    Case("blob.txt", "base64 of random bytes",
         lambda _: base64.b64encode(bytes(range(256)) * 2), "review", "binary data"),
    Case("image.md", "a data: URI that says PNG but holds a zip",
         lambda _: b"![fig](data:image/png;base64," + base64.b64encode(zipped()) + b")",
         "fail", "declared image/png but holds application/zip"),
]
