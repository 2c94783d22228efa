"""Export review in a real browser against the served portal and a gateway process: a
disguised bundle (a zip after a PNG, base64 rows in a .txt, an SVG with a script) comes
back to its author with the reasons on the review page (once the author has confirmed it,
as every bundle from the sandbox), and the script never runs; the corrected bundle — one
file of every allowed type — is previewed for the reviewers (figures, PDF pages, SVG drawn
by the server as PNG, tables, notebook cells); after release, the files are no longer
previewed, two controllers' downloads each carry their own account and time on PNG, PDF,
CSV and text, and each copy's manifest verifies.
Screenshots go to test-artifacts/browser/exports-*.png."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import httpx
import nbformat
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from pypdf import PdfReader
from sqlalchemy import select

from portal import create_app, exports
from portal.models import User
from portal.security import hash_password
from sandbox.client import Gateway
from sandbox.exports import bundle
from tests.browser import screenshots
from tests.browser.conftest import ARTIFACTS, PASSWORD, confirm_export, portal_stack
from tests.browser.test_approval_flow import sign_in
from tests.exports import disguises
from tests.portal.conftest import active_project
from tests.signin import Authenticators

TOTP = Authenticators()  # each controller's authenticator, enrolled at the first sign-in
FIRST, SECOND = "liu@lingnan.cn", "sun@lingnan.cn"
PWNED = b'<script>document.title = "pwned"</script></svg>'
KINDS = {"counts.csv": "table", "counts.tsv": "table", "counts.json": "table",
         "notes.txt": "text", "notes.md": "text", "analysis.py": "text", "model.r": "text",
         "figure.png": "image", "figure.jpg": "image", "figure.svg": "svg",
         "report.pdf": "pdf", "analysis.ipynb": "notebook"}


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshots.save(page, ARTIFACTS / f"exports-{name}.png")


@pytest.fixture(scope="module")
def world(dataset, tmp_path_factory):
    seeded = {}

    def prepare(stack) -> None:
        app = create_app(stack.settings)
        project = active_project(app, stack.settings, ["sex", "visit_type"],
                                 project_title="就诊类型分析")
        with app.extensions["portal.sessions"]() as db:  # the author signs in here too
            author = db.scalar(select(User).where(User.email == project.email))
            author.password_hash = hash_password(PASSWORD)
            TOTP.add(author.email, author.totp_secret)
            db.commit()
        seeded.update(app=app, settings=stack.settings, project=project)
        stack.add_institution("岭南卫健委", "Lingnan Health Commission")
        stack.create_user(FIRST, "管理员刘", "controller", "岭南卫健委")
        stack.create_user(SECOND, "审核员孙", "controller", "岭南卫健委")

    for stack in portal_stack(dataset, tmp_path_factory.mktemp("export-review"), prepare):
        yield {"url": stack.url, "gateway": stack.gateway, **seeded}


def honest_files(result, folder) -> list:
    frame = result.df.to_pandas()
    rows = result.df.to_dicts()
    files = {
        "counts.csv": frame.to_csv(index=False).encode(),
        "counts.tsv": frame.to_csv(index=False, sep="\t").encode(),
        "counts.json": json.dumps(rows, ensure_ascii=False).encode(),
        "notes.txt": "门诊就诊最多（见表 1）。\n".encode(),
        "notes.md": ("# 结果\n\n| visit_type | count |\n|---|---|\n" + "".join(
            f"| {r['visit_type']} | {r['count']} |\n" for r in rows)).encode(),
        "analysis.py": b"result = gw.count('emr-visits', group_by=['visit_type'])\n",
        "model.r": b"counts <- read.csv('counts.csv')\n",
        "figure.png": disguises.figure("png"), "figure.jpg": disguises.jpeg_figure(),
        "figure.svg": disguises.figure("svg"),
        "report.pdf": disguises.report_pdf([["visit type", "count"]] + [
            [r["visit_type"], str(r["count"])] for r in rows]),
        "analysis.ipynb": disguises.notebook(lambda: [
            *disguises.display(result.df),
            nbformat.v4.new_output("display_data", data={
                "image/png": base64.b64encode(disguises.figure("png")).decode(),
                "text/plain": "<Figure>"})]),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files]


def test_review_previews_and_marked_downloads(world, browser, tmp_path):
    url = world["url"]
    gw = Gateway(world["gateway"].url, world["project"].token)
    counts = gw.count("emr-visits", group_by=["visit_type"], epsilon=0.5)

    # round 1: rows in disguise go straight back, with the reasons on the page
    sneaky = tmp_path / "sneaky"
    sneaky.mkdir()
    (sneaky / "figure.png").write_bytes(disguises.figure("png") + disguises.zipped())
    (sneaky / "notes.txt").write_bytes(base64.b64encode(disguises.rows_csv()))
    (sneaky / "figure.svg").write_bytes(disguises.figure("svg").replace(b"</svg>", PWNED))
    gw.export(sorted(sneaky.iterdir()), [counts], note="表1")
    project = world["project"]  # sent from the sandbox: its author confirms it
    author = sign_in(browser, url, project.email, TOTP)
    confirm_export(author, url, project.application_id, TOTP.code(project.email))
    first = sign_in(browser, url, FIRST, TOTP)
    first.goto(f"{url}/controller/exports")
    first.click("#exports a")
    expect(first.locator("#export-state")).to_have_attribute("data-state", "returned")
    checks = first.locator("#checks")
    expect(checks).to_contain_text("after the PNG's end (IEND): application/zip data")
    expect(checks).to_contain_text("40 rows but the cited releases hold")
    expect(checks).to_contain_text("a figure runs no code")
    svg = first.locator("section[data-file='figure.svg'] img")
    expect(svg).to_have_js_property("complete", True)
    assert svg.evaluate("img => img.naturalWidth") > 0
    assert first.title() != "pwned"  # drawn as an image: its script never runs
    shot(first, "01-disguises-returned")
    review_url = first.url
    cookies = {c["name"]: c["value"] for c in first.context.cookies()}
    page = httpx.get(review_url, cookies=cookies)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    opened = httpx.get(url + svg.get_attribute("src"), cookies=cookies)
    # drawn by the server: a PNG, never the SVG's own bytes (nothing in it can run)
    assert opened.headers["content-type"] == "image/png"
    assert opened.content.startswith(b"\x89PNG") and b"<script" not in opened.content
    assert "sandbox" in opened.headers["content-security-policy"]
    assert opened.headers["x-content-type-options"] == "nosniff"
    first.goto(url + svg.get_attribute("src"))  # opened alone, it is a picture
    assert first.title() != "pwned"

    # round 2: one honest file of every allowed type, each previewed for the reviewers
    honest = tmp_path / "honest"
    honest.mkdir()
    gw.export(honest_files(counts, honest), [counts], note="已更正")
    confirm_export(author, url, project.application_id, TOTP.code(project.email))
    first.goto(f"{url}/controller/exports")
    first.goto(review_url)
    expect(first.locator("#export-state")).to_have_attribute("data-state", "under_review")
    for name, kind in KINDS.items():
        section = first.locator(f"section[data-file='{name}']")
        expect(section).to_have_attribute("data-preview", kind)
        for image in section.locator("img.preview").all():
            expect(image).to_have_js_property("complete", True)
            assert image.evaluate("img => img.naturalWidth") > 0, name
    for name in ("counts.csv", "counts.tsv", "counts.json", "analysis.ipynb"):
        expect(first.locator(f"section[data-file='{name}'] table.preview-table")
               .first).to_contain_text("门诊")
    expect(first.locator("section[data-file='report.pdf'] img.preview")).to_have_count(1)
    expect(first.locator("section[data-file='analysis.ipynb'] img.preview")).to_have_count(1)
    expect(first.locator("section[data-file='notes.md'] pre")).to_contain_text("| 门诊 |")
    shot(first, "02-previews")
    for name in ("analysis.ipynb", "report.pdf"):  # two previews up close
        first.locator(f"section[data-file='{name}']").screenshot(
            path=str(ARTIFACTS / f"exports-02-preview-{name.replace('.', '-')}.png"))

    # both approve, one releases, each downloads: two marked copies
    first.click("button[value=approve]")
    second = sign_in(browser, url, SECOND, TOTP)
    second.goto(review_url)
    second.click("button[value=approve]")
    expect(second.locator("#export-state")).to_have_attribute("data-state", "approved")
    second.fill("#code", TOTP.code(SECOND))  # step-up: a fresh code to release
    second.click("#release")
    expect(second.locator("#export-state")).to_have_attribute("data-state", "released")
    shot(second, "03-released")
    expect(second.locator("#released-files")).to_be_visible()  # read only in the bundle
    expect(second.locator("section.file")).to_have_count(0)
    public_pem = exports.signer(world["settings"]).public_pem
    copies = {}
    for who, page in ((FIRST, first), (SECOND, second)):
        page.goto(review_url)
        page.click("#bundle")  # step-up: a fresh code for each download
        page.fill("#code", TOTP.code(who))
        with page.expect_download() as downloaded:
            page.click("#step-up button.primary")
        zipped = Path(downloaded.value.path()).read_bytes()
        manifest = bundle.verify(zipped, public_pem)
        assert manifest["downloaded_by"]["account"] == who
        mark = manifest["watermark"]
        assert who in mark and manifest["downloaded_at"].replace("T", " ")[:19] in mark
        with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
            files = {name: archive.read(f"files/{name}") for name in KINDS}
        assert Image.open(io.BytesIO(files["figure.png"])).text["Watermark"] == mark
        assert mark in PdfReader(io.BytesIO(files["report.pdf"])).pages[0].extract_text()
        assert files["counts.csv"].decode().splitlines()[0] == f"# {mark}"
        assert files["notes.txt"].decode().splitlines()[0] == mark
        copies[who] = files
    for name in ("figure.png", "report.pdf", "counts.csv", "notes.txt"):
        assert copies[FIRST][name] != copies[SECOND][name], name
