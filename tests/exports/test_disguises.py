"""Row-level data in disguise, run through the automated export checks: each disguised
file fails (or, where only a person can tell, goes to review) for the reason named in its
row of ``disguises.CASES``; honest outputs pass. Receipts are signed with a real key."""

from __future__ import annotations

import pytest

from sandbox.exports.checks import ExportFile, Outcome, check_bundle, verdict
from sandbox.receipts import Domain, Signer
from tests.exports.disguises import CASES, RELEASED, Case

PROJECT = "application-7"


@pytest.fixture(scope="module")
def receipt(tmp_path_factory) -> tuple[dict, bytes]:
    signer = Signer(tmp_path_factory.mktemp("keys") / "signing-key.pem")
    return signer.sign({"release": "r1", "project": PROJECT, "dataset": "emr-visits",
                        "epsilon": 0.5, "result": RELEASED}, Domain.RECEIPT), \
        signer.public_pem


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_disguise(case: Case, receipt, tmp_path):
    signed, public_pem = receipt
    checks = check_bundle([ExportFile(case.name, case.build(tmp_path))], [signed], PROJECT,
                          public_pem)
    problems = [f"{c.outcome}: {c.check}: {c.reason}" for c in checks
                if c.outcome != Outcome.PASS]
    assert verdict(checks) == case.expected, (case.made, problems)
    if case.because:
        assert any(case.because in p for p in problems), (case.made, problems)
