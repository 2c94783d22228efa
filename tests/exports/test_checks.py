"""Automated export checks catch what must not leave: row-level tables, an ID number in a
notebook output, a forged receipt, another project's receipt, a number no release
produced — and pass a bundle of honest aggregates. Receipts are signed with a real key."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from sandbox.data import idcard
from sandbox.exports.checks import (
    ExportFile,
    ExportPolicy,
    Outcome,
    check_bundle,
    verdict,
)
from sandbox.receipts import Domain, Signer

PROJECT = "application-7"


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return Signer(tmp_path_factory.mktemp("keys") / "signing-key.pem")


def release(signer, project: str = PROJECT, rows: list[dict] | None = None,
            release_id: str = "r1") -> dict:
    return signer.sign({"release": release_id, "project": project, "dataset": "emr-visits",
                        "epsilon": 0.5, "result": rows or [
                            {"visit_type": "门诊", "mean": 1234.5678},
                            {"visit_type": "住院", "mean": 18765.4321},
                            {"visit_type": "急诊", "mean": 905.0}]}, Domain.RECEIPT)


def csv_file(text: str, name: str = "table.csv") -> ExportFile:
    return ExportFile(name, text.encode())


HONEST = "visit_type,mean cost\n门诊,1234.57\n住院,\"18,765\"\n急诊,905\n"


def failures(checks, outcome=Outcome.FAIL) -> list[str]:
    return [f"{c.check}: {c.reason}" for c in checks if c.outcome == outcome]


def test_an_honest_bundle_passes(signer):
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(out, "PNG")
    figure = ExportFile("figure.png", out.getvalue())
    checks = check_bundle([csv_file(HONEST), figure, ExportFile("analysis.py", b"x = 1\n")],
                          [release(signer)], PROJECT, signer.public_pem)
    assert verdict(checks) == Outcome.PASS, failures(checks) + failures(checks, Outcome.REVIEW)


def test_a_row_level_looking_csv_fails(signer):
    rows = "\n".join(f"{i},男,{30 + i % 50},{1000 + i * 7.5}" for i in range(40))
    checks = check_bundle([csv_file("id,sex,age,cost\n" + rows)], [release(signer)],
                          PROJECT, signer.public_pem)
    assert verdict(checks) == Outcome.FAIL
    assert any("40 rows but the cited releases hold 3" in f for f in failures(checks))


def test_an_id_number_in_a_notebook_output_fails(signer):
    first17 = "44010619850312123"
    number = first17 + idcard.check_digit(first17)
    notebook = {"cells": [{"cell_type": "code", "source": ["df.head()"], "outputs": [
        {"output_type": "stream", "name": "stdout", "text": [f"patient {number} 门诊\n"]}]}]}
    checks = check_bundle([ExportFile("work.ipynb", json.dumps(notebook).encode())],
                          [release(signer)], PROJECT, signer.public_pem)
    assert verdict(checks) == Outcome.FAIL
    [problem] = failures(checks)
    assert "resident ID number" in problem and number not in problem  # shown masked


def test_a_mobile_number_fails_and_a_name_goes_to_review(signer):
    checks = check_bundle([ExportFile("notes.md", "联系 13812345678 王秀英\n".encode())],
                          [release(signer)], PROJECT, signer.public_pem)
    assert any("mobile number" in f for f in failures(checks))
    assert any("王秀英" in r for r in failures(checks, Outcome.REVIEW))


def test_a_forged_receipt_fails(signer):
    forged = release(signer)
    forged["payload"] = {**forged["payload"], "result": [{"visit_type": "门诊", "mean": 1.0}]}
    checks = check_bundle([csv_file(HONEST)], [forged], PROJECT, signer.public_pem)
    assert any("does not verify" in f for f in failures(checks))


def test_another_projects_receipt_fails(signer):
    checks = check_bundle([csv_file(HONEST)], [release(signer, project="application-8")],
                          PROJECT, signer.public_pem)
    assert any("belongs to another project" in f for f in failures(checks))


def test_a_number_no_release_produced_goes_to_review(signer):
    table = HONEST + "总计,20905.01\n"  # a sum nobody released (and one row too many)
    checks = check_bundle([csv_file(table)], [release(signer)], PROJECT, signer.public_pem)
    reviews = failures(checks, Outcome.REVIEW)
    assert any("20905.01" in r for r in reviews)
    wider = [release(signer), release(signer, rows=[{"n": 20905.01}], release_id="r2")]
    assert verdict(check_bundle([csv_file(table)], wider, PROJECT, signer.public_pem)) \
        == Outcome.PASS


def test_file_type_and_size_limits(signer):
    policy = ExportPolicy(max_file_bytes=100)
    checks = check_bundle([ExportFile("raw.parquet", b"PAR1"),
                           ExportFile("big.txt", b"a" * 101)],
                          [release(signer)], PROJECT, signer.public_pem, policy)
    found = failures(checks)
    assert any(".parquet files may not leave" in f for f in found)
    assert any("101 bytes; the limit is 100" in f for f in found)


def test_a_signature_alone_is_no_figure(signer):
    # eight bytes of PNG signature and padding: what the checks once took for a figure
    checks = check_bundle([ExportFile("figure.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)],
                          [release(signer)], PROJECT, signer.public_pem)
    assert any("corrupt" in f for f in failures(checks))


def test_rows_in_comment_lines_above_a_table_fail(signer):
    # leading '#' lines are not the header (a download's watermark is one), but they are
    # still read: rows hidden in them are rows
    rows = "".join(f"# {i},男,{30 + i % 50},{1000 + i * 7.5}\n" for i in range(40))
    checks = check_bundle([csv_file(rows + HONEST)], [release(signer)], PROJECT,
                          signer.public_pem)
    assert any("40 rows but the cited releases hold 3" in f for f in failures(checks))


def test_a_file_that_breaks_a_parser_does_not_leave(signer):
    # nesting deep enough to exhaust the readers' recursion: the file fails, the other
    # file is still checked
    deep = ("[" * 50_000 + "]" * 50_000).encode()
    checks = check_bundle([ExportFile("deep.json", deep), csv_file(HONEST)],
                          [release(signer)], PROJECT, signer.public_pem)
    assert any(c.file == "deep.json" and c.outcome == Outcome.FAIL for c in checks)
    assert any(c.file == "table.csv" and c.check == "traceable numbers" for c in checks)
