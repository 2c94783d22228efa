"""An export bundle played the real way: ``gw.export`` from the sandbox client to a gateway
process, the served portal collecting it, two controllers reviewing it on the review page,
one releasing it and another downloading it (each with a fresh code) — all over HTTP. (Its
author confirms it on the project page with a fresh code first, as every request sent from
the sandbox must be.)

Adversaries:

- the **researcher**, who wants rows out past the automated checks *and* past the
  reviewers' eyes, and wants a copy that does not say whose download it was;
- someone holding a **copied controller cookie** (no authenticator), who wants the
  released files without typing a code.

The bundle the researcher sends looks honest on every preview: a notebook showing the DP
counts, a PDF report of them, a JSON of them and a matplotlib SVG. What it also carries:

- ``analysis.ipynb``: a patient's record in the notebook's metadata, which the review
  page does not show. (The red team's 40 rows there now fail the checks — the checks
  read metadata decoded: ``test_export_disguises.py`` meta/cellmeta/outmeta.ipynb — so
  the record here is one the checks cannot tell from a note: a single row is no table.);
- ``report.pdf``: the same record in the document information dictionary (``/Subject``,
  likewise: 40 rows there fail, ``test_export_disguises.py`` report.pdf) — the review
  page shows rendered pages only — and a crop box that leaves the bottom 40 points off
  every page, where the watermark is drawn;
- ``counts.json``: a ``_watermark`` key of its own, which the download's mark does not
  replace (``{KEY: mark, **value}``);
- ``figure.svg``: a comment ``<!-- </svg> -->`` after the root element, so the watermark,
  inserted before the *last* ``</svg>``, lands inside the comment and is never drawn.

Each test here failed on ab8a222 (see each test)."""

from __future__ import annotations

import io
import json
import zipfile

import nbformat
import pypdfium2 as pdfium
import pytest
from pypdf import PdfReader, PdfWriter
from pypdf.generic import RectangleObject
from sqlalchemy import select

from portal import create_app
from portal.models import ExportRequest
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.client import Gateway
from tests.attacks.conftest import Visitor, author, person, serve
from tests.exports import disguises
from tests.portal.conftest import active_project
from tests.signin import fresh_code

HIDDEN = "P00039"  # the smuggled patient


def record() -> str:
    """One patient's record: what the checks cannot tell from a note (a row alone is no
    table), and what no reviewer sees unless the review page shows it."""
    return disguises.patients().tail(1).to_csv(index=False)


def notebook_with_rows_in_metadata(result) -> bytes:
    book = nbformat.reads(disguises.notebook(lambda: disguises.display(result.df)).decode(),
                          as_version=4)
    book.metadata["analysis_cache"] = record()
    return nbformat.writes(book).encode()


def report_with_rows_in_info(result) -> bytes:
    rows = [["visit type", "count"]] + [[r["visit_type"], str(r["count"])]
                                        for r in result.df.to_dicts()]
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(disguises.report_pdf(rows))))
    writer.add_metadata({"/Subject": record()})
    for page in writer.pages:  # the page's visible area ends 40 pt above its bottom edge
        page.cropbox = RectangleObject([0, 40, page.mediabox.width, page.mediabox.height])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def files_of(result) -> dict[str, bytes]:
    return {
        "analysis.ipynb": notebook_with_rows_in_metadata(result),
        "report.pdf": report_with_rows_in_info(result),
        "counts.json": json.dumps({"_watermark": "公开发表版本 / for publication",
                                   "counts": result.df.to_dicts()},
                                  ensure_ascii=False).encode(),
        "figure.svg": disguises.figure("svg") + b"<!-- </svg> -->\n",
    }


def confirm_as_author(stack, sessions, project) -> None:
    """The researcher confirms what the sandbox sent, on the project page, with a fresh
    code (the bundle is collected when the page opens)."""
    researcher = author(stack.url, sessions, project.email)
    assert researcher.http.get(f"/applications/{project.application_id}").status_code == 200
    with sessions() as db:
        waiting = db.scalar(select(ExportRequest.id).where(
            ExportRequest.application_id == project.application_id,
            ExportRequest.state == "unconfirmed"))
    confirmed = researcher.form(
        f"/applications/{project.application_id}/exports/{waiting}/confirm",
        {"code": fresh_code(sessions, project.email)})
    assert confirmed.status_code == 302, confirmed.text[:300]


@pytest.fixture(scope="module")
def released(dataset, tmp_path_factory):
    """The bundle sent, collected, reviewed, released and downloaded over HTTP."""
    seeded = {}

    def prepare(stack) -> None:
        app = create_app(stack.settings)
        seeded["project"] = active_project(app, stack.settings, ["sex", "visit_type"],
                                           project_title="就诊类型分析")

    for stack, sessions in serve(dataset, tmp_path_factory.mktemp("export-leaks"),
                                 before_serving=prepare):
        gw = Gateway(stack.gateway.url, seeded["project"].token)
        result = gw.count("emr-visits", group_by=["visit_type"], epsilon=0.5)
        sent = files_of(result)
        folder = tmp_path_factory.mktemp("workspace")
        for name, content in sent.items():
            (folder / name).write_bytes(content)
        gw.export([folder / name for name in sent], [result], note="表1 与图1")
        confirm_as_author(stack, sessions, seeded["project"])

        first, second = person(sessions, "controller"), person(sessions, "controller")
        reviewers = {}
        for email in (first, second):
            reviewers[email] = Visitor(stack.url)
            reviewers[email].sign_in(sessions, email)
        a, b = reviewers[first], reviewers[second]
        assert a.http.get("/controller/exports").status_code == 200  # collects the bundle
        with sessions() as db:
            request = db.scalars(select(ExportRequest).order_by(ExportRequest.id.desc())).first()
            export_id, verdict = request.id, request.verdict
            checks = request.checks
            file_ids = {f.name: f.id for f in request.files}
        page = a.http.get(f"/controller/exports/{export_id}").text
        for visitor in (a, b):
            voted = visitor.form(f"/controller/exports/{export_id}/vote",
                                 {"choice": "approve", "comment": ""},
                                 page=f"/controller/exports/{export_id}")
            assert voted.status_code == 302, voted.text[:300]
        released_ = a.form(f"/controller/exports/{export_id}/release",
                           {"code": fresh_code(sessions, first)},
                           page=f"/controller/exports/{export_id}")
        assert released_.status_code == 302, released_.text[:500]
        download = b.form(f"/controller/exports/{export_id}/bundle.zip",
                          {"code": fresh_code(sessions, second)},
                          page=f"/controller/exports/{export_id}/bundle.zip")
        assert download.headers["content-type"] == "application/zip", download.text[:300]
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            copy = {name.removeprefix("files/"): archive.read(name)
                    for name in archive.namelist() if name.startswith("files/")}
        yield {"stack": stack, "sessions": sessions, "sent": sent, "verdict": verdict,
               "checks": checks, "review_page": page, "copy": copy, "downloader": second,
               "export": export_id, "files": file_ids, "controller_a": a}


def test_rows_hidden_in_metadata_do_not_leave_unseen(released):
    """Failed on ab8a222 (with the red team's 40 rows: verdict ``pass``, not on the review
    page, all 40 in the downloaded notebook and PDF). Now 40 rows fail the checks, and what
    passes them but the review page does not show — the record here — does not leave: the
    released copy is rebuilt as the reviewers saw it."""
    copy, page = released["copy"], released["review_page"]
    left = []
    if HIDDEN in json.dumps(nbformat.reads(copy["analysis.ipynb"].decode(),
                                           as_version=4).metadata):
        left.append("analysis.ipynb (notebook metadata)")
    if HIDDEN in str(PdfReader(io.BytesIO(copy["report.pdf"])).metadata):
        left.append("report.pdf (/Subject)")
    assert not left or HIDDEN in page, (
        f"automated verdict {released['verdict']!r}; the record is not on the review page; "
        f"it left in the released download inside {left}")


def test_every_downloaded_file_names_its_downloader(released):
    """Failed on ab8a222: the JSON kept the researcher's own ``_watermark``, the SVG's mark
    was inside a comment, and the PDF's mark was drawn outside the page's crop box (the
    rendered page pixel-identical to the unmarked one)."""
    copy, sent, account = released["copy"], released["sent"], released["downloader"]
    unmarked = []
    if account not in json.loads(copy["counts.json"])["_watermark"]:
        unmarked.append("counts.json: _watermark = "
                        + json.loads(copy["counts.json"])["_watermark"])
    from defusedxml.ElementTree import fromstring

    drawn = "".join("".join(e.itertext()) for e in fromstring(copy["figure.svg"]).iter()
                    if isinstance(e.tag, str) and e.tag.endswith("}text"))
    if account not in drawn:
        unmarked.append("figure.svg: the mark is not drawn (it is inside a comment)")

    def rendered(pdf: bytes) -> bytes:
        document = pdfium.PdfDocument(pdf)
        try:
            return document[0].render(scale=1).to_pil().convert("RGB").tobytes()
        finally:
            document.close()
    if rendered(copy["report.pdf"]) == rendered(sent["report.pdf"]):
        unmarked.append("report.pdf: the marked page renders exactly as the unmarked one")
    assert not unmarked, unmarked


def test_a_copied_controller_cookie_gets_no_unmarked_copy_without_a_code(released):
    """Failed on ab8a222: with the session cookie alone (no code typed), ``figure.svg``
    handed back the released file byte for byte, unmarked — the step-up and the watermark
    guarded only ``bundle.zip``. SVG previews are now drawn by the server as PNG."""
    stack, a = released["stack"], released["controller_a"]
    thief = Visitor(stack.url, cookies={"session": a.http.cookies["session"]})
    svg = thief.http.get(f"/controller/exports/{released['export']}/files/"
                         f"{released['files']['figure.svg']}/figure.svg")
    assert svg.status_code != 200 or svg.content != released["sent"]["figure.svg"], \
        "the released SVG, unmarked, for a cookie without a fresh code"


def test_a_copied_controller_cookie_reads_no_released_file(released):
    """Failed on ab8a222: with the cookie alone, the review page of the released request
    showed every file's content (the notebook's cells, the JSON's and CSV's tables, the SVG
    source) and ``preview.png`` handed out each figure and PDF page, unmarked. Now a
    released request's files are read only in the bundle: a fresh code, a watermark."""
    stack, a = released["stack"], released["controller_a"]
    thief = Visitor(stack.url, cookies={"session": a.http.cookies["session"]})
    export, files = released["export"], released["files"]
    page = thief.http.get(f"/controller/exports/{export}")
    assert page.status_code == 200  # a controller's cookie: the page itself opens
    shown = [name for name in files if f'data-file="{name}" data-preview' in page.text]
    assert not shown and "就诊费用分析" not in page.text, \
        f"the review page shows the released files {shown} to a cookie without a code"
    pictures = {name: thief.http.get(f"/controller/exports/{export}/files/{file_id}/"
                                     "preview.png").status_code
                for name, file_id in files.items()}
    assert set(pictures.values()) == {404}, pictures
    bundle = thief.http.post(f"/controller/exports/{export}/bundle.zip",
                             data={"csrf_token": thief.token(
                                 f"/controller/exports/{export}/bundle.zip")})
    assert bundle.headers["content-type"] != "application/zip"


def test_an_export_request_reaches_review_only_after_a_fresh_code(released):
    """**Fails today**: the README's step-up ("requesting an export … asks for a fresh
    code") holds on the project page only. ``gw.export`` in the sandbox — which anyone with
    the researcher's session cookie reaches through the hub's OAuth sign-in, no code asked —
    puts a request in front of the reviewers with no code typed by anyone (no
    ``step_up.passed`` for ``export_request`` in the audit log)."""
    sessions = released["sessions"]
    with sessions() as db:
        application = db.get(ExportRequest, released["export"]).application_id
        rows = db.execute(select(audit.audit_log).where(
            audit.audit_log.c.action == AuditAction.STEP_UP_PASSED)).all()
    asked = [r for r in rows if '"export_request"' in r.details]
    assert asked, (f"export request {released['export']} (application {application}) went to "
                   "review and was released with no fresh code for the request")
