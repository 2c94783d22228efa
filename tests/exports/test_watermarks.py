"""Every downloaded copy of a bundle names the account and the time of its download, on
every file type, and its manifest (naming them too) verifies with the portal's key — while
a copy whose files or manifest were edited afterwards does not. The adversary is a
recipient who passes a copy on: the copy says whose it is."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime

import pytest
from PIL import Image
from pypdf import PdfReader

from sandbox.errors import InputError
from sandbox.exports import bundle
from sandbox.exports.checks import ExportFile, Outcome, check_file
from sandbox.receipts import Signer
from tests.exports.disguises import RELEASED, aggregates_csv, dp_notebook, figure, jpeg_figure
from tests.exports.disguises import report_pdf as report

RELEASED_AT = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
FILES = {
    "figure.png": figure("png"), "figure.jpg": jpeg_figure(), "figure.svg": figure("svg"),
    "report.pdf": report(), "means.csv": aggregates_csv(),
    "notes.txt": "均值见表 1。\n".encode(), "notes.md": b"# Results\n",
    "analysis.py": b"#!/usr/bin/env python\nprint(1)\n", "model.r": b"x <- 1\n",
    "means.json": json.dumps(RELEASED, ensure_ascii=False).encode(),
    "analysis.ipynb": dp_notebook(),
}
MANIFEST = {"export": 7, "project": "application-7", "datasets": [
    {"id": "emr-visits", "version": "v1"}], "epsilon_spent": 0.5, "receipts": []}


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> Signer:
    return Signer(tmp_path_factory.mktemp("keys") / "export-signing-key.pem")


def download(signer: Signer, account: str, user: int, at: datetime) -> dict[str, bytes]:
    zipped = bundle.build(list(FILES.items()), MANIFEST, signer, RELEASED_AT,
                          bundle.Download(account, user, at))
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        return {name: archive.read(name) for name in archive.namelist()} | {"": zipped}


def test_two_downloads_by_two_accounts_carry_their_own_marks(signer):
    first_at = datetime(2025, 3, 2, 8, 15, 1, tzinfo=UTC)
    second_at = datetime(2025, 3, 2, 8, 15, 2, tzinfo=UTC)
    first = download(signer, "liu@lingnan.cn", 3, first_at)
    second = download(signer, "sun@lingnan.cn", 4, second_at)
    for copy, account, at in ((first, "liu@lingnan.cn (user 3)", "2025-03-02 08:15:01"),
                              (second, "sun@lingnan.cn (user 4)", "2025-03-02 08:15:02")):
        mark = f"application-7 | downloaded by {account} | {at} UTC"
        manifest = bundle.verify(copy[""], signer.public_pem)
        assert manifest["watermark"] == mark
        assert manifest["downloaded_by"]["account"] in account
        assert manifest["downloaded_at"].startswith(at.replace(" ", "T"))
        # drawn on the figure: exactly the pixels of this mark drawn on the original
        png = Image.open(io.BytesIO(copy["files/figure.png"]))
        expected = Image.open(io.BytesIO(bundle.watermark("figure.png", FILES["figure.png"],
                                                          mark)))
        assert png.tobytes() == expected.tobytes() and png.text["Watermark"] == mark
        assert mark.encode() in copy["files/figure.jpg"]  # the JPEG comment
        pdf_text = PdfReader(io.BytesIO(copy["files/report.pdf"])).pages[0].extract_text()
        assert mark in pdf_text and "Mean cost by visit type" in pdf_text
        assert copy["files/means.csv"].decode().splitlines()[0] == f"# {mark}"
        assert copy["files/notes.txt"].decode().splitlines() == [mark, "均值见表 1。"]
        assert copy["files/notes.md"].decode().startswith(f"> {mark}\n")
        assert copy["files/analysis.py"].decode().splitlines()[:2] == [
            "#!/usr/bin/env python", f"# {mark}"]
        assert copy["files/model.r"].decode().startswith(f"# {mark}\n")
        assert json.loads(copy["files/means.json"]) == {"_watermark": mark, "data": RELEASED}
        notebook = json.loads(copy["files/analysis.ipynb"])
        assert notebook["cells"][0]["source"] == [f"*{mark}*"]
        assert mark in copy["files/figure.svg"].decode()
    for name in FILES:
        assert first[f"files/{name}"] != second[f"files/{name}"], name
    first_png = Image.open(io.BytesIO(first["files/figure.png"])).tobytes()
    assert first_png != Image.open(io.BytesIO(second["files/figure.png"])).tobytes()


def test_marked_files_are_still_what_they_were(signer):
    copy = download(signer, "liu@lingnan.cn", 3, datetime.now(UTC))
    payload = [{"result": RELEASED}]
    for name in FILES:
        checks = check_file(ExportFile(name, copy[f"files/{name}"]), payload)
        problems = [c.reason for c in checks if c.outcome != Outcome.PASS]
        assert not problems, (name, problems)


def test_an_edited_copy_no_longer_verifies(signer):
    copy = download(signer, "liu@lingnan.cn", 3, datetime.now(UTC))
    for edit in ("files/means.csv", bundle.MANIFEST):
        tampered = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(copy[""])) as source, \
                zipfile.ZipFile(tampered, "w") as target:
            for item in source.namelist():
                data = source.read(item)
                if item == edit:  # strip the mark, or name someone else
                    data = data.split(b"\n", 1)[1] if item.startswith("files/") else \
                        data.replace(b"liu@lingnan.cn", b"sun@lingnan.cn")
                target.writestr(item, data)
        with pytest.raises(InputError):
            bundle.verify(tampered.getvalue(), signer.public_pem)


# -- a file cannot cancel its own mark (the adversary: the researcher who made it) --------

MARK = "application-7 | downloaded by liu@lingnan.cn (user 3) | 2025-03-02 08:15:01 UTC"
HOSTILE_CSS = (b"text { display: none !important; fill: white !important } "
               b"rect { fill: black !important } ~ text { visibility: hidden } "
               b"svg > text:last-child, :root > * { opacity: 0 !important } "
               b"@media all { text { font-size: 0 !important } }")


def drawn_svg(svg: bytes) -> Image.Image:
    """The SVG as the portal's renderer (resvg) draws it, on white."""
    import resvg_py

    from portal.previews import FALLBACK_FAMILY, FALLBACK_FONT
    return Image.open(io.BytesIO(resvg_py.svg_to_bytes(
        svg_string=svg.decode(), dpi=96, background="white", font_files=[str(FALLBACK_FONT)],
        font_family=FALLBACK_FAMILY, sans_serif_family=FALLBACK_FAMILY))).convert("L")


def drawn_pdf(pdf: bytes) -> Image.Image:
    """The first page as a viewer shows it (its crop box), by PDFium."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        return document[0].render(scale=2).to_pil().convert("L")
    finally:
        document.close()


def test_a_json_files_own_key_never_stands_in_for_the_mark():
    own = json.dumps({"_watermark": "公开发表版本", "counts": RELEASED}).encode()
    marked = json.loads(bundle.watermark("counts.json", own, MARK))
    assert marked == {"_watermark": MARK, "counts": RELEASED}


@pytest.mark.parametrize("trick", [
    pytest.param(lambda svg: svg + b"<!-- </svg> -->\n", id="comment-after-the-root"),
    pytest.param(lambda svg: svg.replace(b"</style>", HOSTILE_CSS + b"</style>"),
                 id="style-sheet-hiding-text"),
    pytest.param(lambda svg: svg.replace(b"<svg ", b'<svg style="opacity:0.999" '
                                         b'clip-path="inset(0 0 40px 0)" ', 1),
                 id="root-clip-and-style"),
    pytest.param(lambda svg: svg.replace(b'viewBox="0 0 288 216"',
                                         b'viewBox="5000 5000 288 216"'),
                 id="view-box-elsewhere"),
])
def test_an_svg_cannot_hide_its_mark(trick):
    """The mark is drawn by the new outer figure after the researcher's, on a strip of its
    own, out of reach of the figure's style sheets: with any of these tricks, the mark's
    strip holds the mark's grey text, and the figure above is drawn as without the mark."""
    svg = trick(figure("svg"))
    marked = bundle.watermark("figure.svg", svg, MARK)
    assert MARK in marked.decode()
    picture = drawn_svg(marked)
    strip = picture.crop((0, 288, picture.width, picture.height))
    assert picture.width == 384 and picture.height > 288, picture.size
    assert strip.getextrema()[0] < 160, strip.getextrema()
    assert drawn_svg(svg).crop((0, 0, 384, 288)).tobytes() == \
        picture.crop((0, 0, 384, 288)).tobytes()
    problems = [c.reason for c in check_file(ExportFile("figure.svg", marked), [
        {"result": RELEASED}]) if c.outcome != Outcome.PASS]
    assert not problems  # the marked copy is still a figure the checks pass


def _pdf(change) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report())))
    change(writer, writer.pages[0])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _crop(writer, page) -> None:
    from pypdf.generic import RectangleObject

    page.cropbox = RectangleObject([0, 40, page.mediabox.width, page.mediabox.height])


def _offset_crop(writer, page) -> None:
    from pypdf.generic import RectangleObject

    page.cropbox = RectangleObject([100, 300, 400, 700])


@pytest.mark.parametrize("change", [_crop, _offset_crop], ids=["bottom-off", "a-window"])
def test_a_pdf_page_cannot_hide_its_mark_outside_what_is_shown(change):
    """The mark is drawn inside each page's crop box — what a viewer shows — on a white
    box of its own: the rendered page differs from the unmarked one exactly where the mark
    is, at the visible area's bottom-left corner."""
    pdf = _pdf(change)
    before = drawn_pdf(pdf)
    after = drawn_pdf(bundle.watermark("report.pdf", pdf, MARK))
    assert after.size == before.size
    corner = (0, after.height - 30, after.width // 2, after.height)
    assert after.crop(corner).tobytes() != before.crop(corner).tobytes()
    assert after.crop(corner).getextrema()[0] < 160  # grey text drawn there
    rest = (0, 0, after.width, after.height - 30)
    assert after.crop(rest).tobytes() == before.crop(rest).tobytes()
