"""New disguises for row-level data and identifiers, beyond ``tests/exports/disguises.py``,
run through the automated export checks with a real signed receipt (as
``tests/exports/test_disguises.py`` does). ``test_export_leaks.py`` sends two of them the
real way (gateway process, served portal, review, release, download).

Adversary: the researcher. What the README promises: "Tables are found wherever they are:
CSV/TSV, JSON …, notebook outputs …, Markdown and delimited text, SVG text, PDF page text
…"; a table with more rows than its releases fails; every number in a table must be a
released value or a rounding of one (else review); ID numbers and mobile numbers fail.

Every case here failed on ab8a222 (the checks said ``pass``); each row says what it
should get and why. What they now pass through: digits brought to one form and grouped
identifiers joined (``identifiers``), colons and single spaces as delimiters where a run
of lines holds one kind of value per column (``tables``), JSON string values and every
metadata read decoded (``documents``), PDF document information and XMP read
(``pdf``), ``<tspan>`` cells (``svg``), numbers with units and exponents (``numbers``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import nbformat
import pytest
from pypdf import PdfReader, PdfWriter

from sandbox.data import idcard
from sandbox.exports.checks import ExportFile, Outcome, check_bundle, verdict
from sandbox.receipts import Domain, Signer
from tests.exports.disguises import RELEASED, notebook, patients, report_pdf, rows_csv

PROJECT = "application-7"
FIRST17 = "44010619850312123"
ID_NUMBER = FIRST17 + idcard.check_digit(FIRST17)
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _notebook(change: Callable[[nbformat.NotebookNode], None]) -> bytes:
    book = nbformat.reads(notebook(lambda: []).decode(), as_version=4)
    change(book)
    return nbformat.writes(book).encode()


def _pdf_info() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(report_pdf())))
    writer.add_metadata({"/Subject": rows_csv().decode()})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _svg(texts: str) -> bytes:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="600">{texts}'
            "</svg>").encode()


def _white_svg_rows() -> bytes:
    """One <text> per row, fields separated by single spaces, drawn white on white."""
    return _svg("".join(
        f'<text x="10" y="{20 + 12 * i}" font-size="8" fill="white">'
        f"{r.patient} {r.sex} {r.age} {r.total_cost}</text>"
        for i, r in enumerate(patients().itertuples())))


def _tspan_svg_rows() -> bytes:
    """A drawn table: one <text> per row, one positioned <tspan> per field."""
    return _svg("".join(
        f'<text x="10" y="{20 + 12 * i}" font-size="8">' + "".join(
            f'<tspan x="{10 + 60 * c}">{v}</tspan>' for c, v in enumerate(row)) + "</text>"
        for i, row in enumerate(patients().itertuples(index=False))))


@dataclass(frozen=True)
class Case:
    name: str
    made: str
    build: Callable[[], bytes]
    expected: str  # what the checks must make of it: "fail" or "review"


CASES = [
    Case("rows.txt", "df.to_csv(sep=' '): rows delimited by single spaces",
         lambda: patients().to_csv(index=False, sep=" ").encode(), "fail"),
    Case("rows2.txt", "df.to_csv(sep=':')", lambda: patients().to_csv(
        index=False, sep=":").encode(), "fail"),
    Case("caption.json", "the rows as CSV in one JSON string value",
         lambda: json.dumps({"caption": rows_csv().decode(), "counts": RELEASED},
                            ensure_ascii=False).encode(), "fail"),
    Case("meta.ipynb", "the rows in the notebook's metadata (the review page shows cells "
         "only)", lambda: _notebook(lambda b: b.metadata.update(
             cache=rows_csv().decode())), "fail"),
    Case("cellmeta.ipynb", "the rows in a cell's metadata (never read)",
         lambda: _notebook(lambda b: b.cells[1].metadata.update(
             cache=rows_csv().decode())), "fail"),
    Case("outmeta.ipynb", "the rows in an output's metadata",
         lambda: _notebook(lambda b: b.cells[2].update(outputs=[nbformat.v4.new_output(
             "display_data", data={"text/plain": "<Figure>"},
             metadata={"cache": rows_csv().decode()})])), "fail"),
    Case("report.pdf", "the rows in the PDF's document information (/Subject): not on any "
         "page, not in the review's rendered pages, kept by the watermarked download",
         _pdf_info, "fail"),
    Case("white.svg", "the rows as white SVG text on white, single-space delimited",
         _white_svg_rows, "fail"),
    Case("table.svg", "the rows as an SVG table of positioned <tspan>s",
         _tspan_svg_rows, "fail"),
    Case("ids.txt", "a resident ID number in full-width digits",
         lambda: f"随访 {ID_NUMBER.translate(FULL_WIDTH)}\n".encode(), "fail"),
    Case("ids2.txt", "a resident ID number written in groups",
         lambda: f"随访 {ID_NUMBER[:6]} {ID_NUMBER[6:14]} {ID_NUMBER[14:]}\n".encode(), "fail"),
    Case("phones.txt", "a mobile number written with dashes",
         lambda: "电话 138-0013-8000\n".encode(), "fail"),
    Case("costs.csv", "numbers that match no release, written with units or in scientific "
         "notation (the traceable-number rule reads only plain decimals)",
         lambda: ("visit_type,mean cost,n\n门诊,¥1007.5,3.1e1\n住院,¥2013.0,4.2e1\n"
                  "急诊,¥3301.25,5.5e1\n").encode(), "review"),
]


@pytest.fixture(scope="module")
def receipt(tmp_path_factory) -> tuple[dict, bytes]:
    signer = Signer(tmp_path_factory.mktemp("keys") / "signing-key.pem")
    return signer.sign({"release": "r1", "project": PROJECT, "dataset": "emr-visits",
                        "epsilon": 0.5, "result": RELEASED}, Domain.RECEIPT), \
        signer.public_pem


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_new_disguise(case: Case, receipt):
    signed, public_pem = receipt
    checks = check_bundle([ExportFile(case.name, case.build())], [signed], PROJECT,
                          public_pem)
    problems = [f"{c.outcome}: {c.check}: {c.reason}" for c in checks
                if c.outcome != Outcome.PASS]
    assert verdict(checks) == case.expected, (case.made, str(verdict(checks)), problems)
