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
