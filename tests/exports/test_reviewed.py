"""What leaves is what the reviewers saw: the released and downloaded copy of a notebook, a
PDF or an SVG is rebuilt without the parts the review page does not show, and the review
page previews that rebuilt file — metadata that stays (a notebook's kernelspec and
language_info) included. The adversary is a researcher hiding something the automated
checks cannot call rows (a single record, a note) where no reviewer looks."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime

import nbformat
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, NameObject

from portal import previews
from sandbox.exports import bundle, reviewed
from sandbox.exports.checks import ExportFile, Outcome, check_file
from sandbox.receipts import Signer
from tests.exports.disguises import RELEASED, dp_notebook, figure, report_pdf

SECRET = "P00039,男,69,1292.5"  # one record: no table, so the checks pass it
MANIFEST = {"export": 7, "project": "application-7", "datasets": [
    {"id": "emr-visits", "version": "v1"}], "epsilon_spent": 0.5, "receipts": []}


def hidden_notebook() -> bytes:
    book = nbformat.reads(dp_notebook().decode(), as_version=4)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    book.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    book.metadata["cache"] = SECRET
    book.cells[1].metadata["note"] = SECRET
    book.cells[2].outputs[0].metadata["note"] = SECRET
    book.cells[2].execution_count = 7
    return nbformat.writes(book).encode()


def hidden_pdf() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    writer.add_metadata({"/Subject": SECRET, "/Keywords": SECRET})
    xmp = DecodedStreamObject()
    xmp.set_data(f'<x:xmpmeta xmlns:x="adobe:ns:meta/">{SECRET}</x:xmpmeta>'.encode())
    writer._root_object[NameObject("/Metadata")] = writer._add_object(xmp)
    writer.add_outline_item(SECRET, 0)
    writer.add_annotation(0, {"/Type": NameObject("/Annot"), "/Subtype": NameObject("/Text"),
                              "/Rect": [0, 0, 10, 10], "/Contents": SECRET})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_the_hidden_record_passes_the_checks():
    """The premise: what is hidden here is no table, so only rebuilding stops it."""
    for name, content in (("a.ipynb", hidden_notebook()), ("r.pdf", hidden_pdf())):
        checks = check_file(ExportFile(name, content), [{"result": RELEASED}])
        assert {c.outcome for c in checks} == {Outcome.PASS}, (name, checks)
        assert SECRET.encode() in content


def test_a_notebook_leaves_with_what_its_preview_shows():
    rebuilt = reviewed.rebuild("analysis.ipynb", hidden_notebook())
    assert SECRET not in rebuilt.decode()
    book = nbformat.reads(rebuilt.decode(), as_version=4)
    nbformat.validate(book)  # still a valid notebook
    assert set(book.metadata) == {"kernelspec", "language_info"}
    assert [c.source for c in book.cells] == [
        c.source for c in nbformat.reads(hidden_notebook().decode(), as_version=4).cells]
    assert all(not c.metadata for c in book.cells)
    shown = previews.preview("analysis.ipynb", hidden_notebook())
    assert shown.kind == "notebook" and "Python 3" in shown.metadata  # what stays is shown
    assert SECRET not in json.dumps([c.__dict__ for c in shown.cells], default=str)
    assert len(shown.cells) == 3 and any("image" in o for o in shown.cells[2].outputs)


def test_a_pdf_leaves_rebuilt_from_its_pages():
    rebuilt = reviewed.rebuild("report.pdf", hidden_pdf())
    assert SECRET.encode() not in rebuilt
    reader = PdfReader(io.BytesIO(rebuilt))
    assert "/Metadata" not in reader.root_object and "/Outlines" not in reader.root_object
    assert "/Annots" not in reader.pages[0]
    assert "Mean cost by visit type" in reader.pages[0].extract_text()


def test_the_downloaded_copy_is_the_rebuilt_file_marked(tmp_path):
    files = [("analysis.ipynb", hidden_notebook()), ("report.pdf", hidden_pdf()),
             ("figure.svg", figure("svg") + b"<!-- " + SECRET.encode() + b" -->")]
    signer = Signer(tmp_path / "key.pem")
    zipped = bundle.build(files, MANIFEST, signer, datetime(2025, 3, 1, tzinfo=UTC),
                          bundle.Download("liu@lingnan.cn", 3, datetime.now(UTC)))
    manifest = bundle.verify(zipped, signer.public_pem)
    bundle.check_reviewed(manifest, files)  # the digests are still those of what was sent
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        for name, _ in files:
            assert SECRET.encode() not in archive.read(f"files/{name}"), name
