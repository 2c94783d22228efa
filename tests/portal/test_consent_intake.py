"""Consent intake and transparency reports against a running gateway (real HTTP): a
withdrawal by ID number (pseudonymised with the controller's key, never stored raw) or by
pseudonym reaches the gateway at once and names the active projects whose scope held the
patient; the transparency PDF lists every project that had access to the patient's
records."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import polars as pl
import pytest
from pypdf import PdfReader
from sqlalchemy import select

from portal import consent, transparency
from portal.models import Agreement, Application, Profile, RequestedField, User
from portal.security import hash_password
from sandbox import audit
from sandbox.errors import InputError
from tests import committee


@pytest.fixture(scope="module")
def setup(app, portal_settings, gateway, key_file):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "pseudonym_key_file": key_file})
    with app.extensions["portal.sessions"]() as db:
        researcher = User(email="consent-r@example.cn", name="研究者", role="researcher",
                          password_hash=hash_password("x-password-1"),
                          profile=Profile(institution=committee.entry(db, "岭南大学")))
        db.add(researcher)
        db.flush()
        ids = {}
        for title, state, purpose in (("在研项目", "active", "medical_research"),
                                      ("已暂停项目", "suspended", "public_health"),
                                      ("已结束项目", "closed", "medical_research"),
                                      ("草稿", "draft", "medical_research")):
            application = Application(
                researcher_id=researcher.id, title=title, purpose=purpose, non_profit=True,
                state=state, fields=[RequestedField(dataset="emr-visits", field="sex",
                                                    justification="x")])
            db.add(application)
            db.flush()
            ids[state] = application.id
            if state != "draft":
                db.add(Agreement(application_id=application.id, pdf=b"%PDF-", sha256="0",
                                 signed_by=researcher.id, grant_id=None,
                                 signed_at=datetime(2026, 1, 5, tzinfo=UTC),
                                 expires_at=datetime(2026, 7, 5, tzinfo=UTC)))
        db.commit()
    return settings, ids


def a_patient(raw) -> str:
    return pl.read_parquet(raw / "patients.parquet", columns=["id_number"])["id_number"][7]


def test_withdrawal_by_id_number_reports_projects_in_scope(app, setup, raw, gateway):
    settings, ids = setup
    number = a_patient(raw)
    with app.extensions["portal.sessions"]() as db:
        report = consent.record_withdrawal(db, settings, "test:controller",
                                           id_number=number.lower(),
                                           purposes=["medical_research"])
    assert report.pseudonym == consent.pseudonym_of(settings, number)
    assert [d["id"] for d in report.datasets] == ["emr-visits"]
    scope = {p.id: p for p in report.projects}
    assert set(scope) == {ids["active"], ids["suspended"]}  # closed and draft are not
    assert scope[ids["active"]].purpose_withdrawn
    assert not scope[ids["suspended"]].purpose_withdrawn
    assert scope[ids["active"]].institution == "岭南大学"
    with app.extensions["portal.engine"].connect() as conn:
        details = conn.execute(select(audit.audit_log.c.details).where(
            audit.audit_log.c.action == "consent.recorded")).scalars().all()
    assert details and all(number not in d and number.lower() not in d for d in details)
    # the gateway has it: a second withdrawal records nothing new
    again = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                          {"pseudonym": report.pseudonym, "purposes": ["medical_research"]})
    assert again.json()["recorded"] == []


def test_withdrawal_by_pseudonym_of_a_patient_not_held(app, setup):
    settings, _ = setup
    with app.extensions["portal.sessions"]() as db:
        report = consent.record_withdrawal(db, settings, "test:controller",
                                           patient="ab" * 32)
    assert report.datasets == [] and report.projects == [] and report.purposes is None


def test_bad_input_is_refused_before_anything_is_sent(app, setup):
    settings, _ = setup
    with app.extensions["portal.sessions"]() as db:
        with pytest.raises(InputError, match="not a valid resident ID"):
            consent.record_withdrawal(db, settings, "t", id_number="110101199001011234")
        with pytest.raises(InputError, match="either"):
            consent.record_withdrawal(db, settings, "t")


def test_the_cli_records_a_withdrawal(setup, raw, cli, monkeypatch):
    settings, ids = setup
    for name, value in {"DATABASE_URL": settings.database_url,
                        "STATE_DIR": settings.state_dir,
                        "GATEWAY_URL": settings.gateway_url,
                        "GATEWAY_TOKEN_FILE": settings.gateway_token_file,
                        "PSEUDONYM_KEY_FILE": settings.pseudonym_key_file}.items():
        monkeypatch.setenv(f"SANDBOX_PORTAL_{name}", str(value))
    number = a_patient(raw)
    wrong = number[:-1] + ("1" if number[-1] != "1" else "2")  # a bad check digit
    refused = cli("portal", "consent-withdraw", "--id-number", wrong)
    assert refused.code == 2 and "not a valid resident ID" in refused.stderr
    done = cli("portal", "consent-withdraw", "--id-number",
               pl.read_parquet(raw / "patients.parquet")["id_number"][9])
    assert done.code == 0, done.stderr
    assert f"project {ids['active']}" in done.stdout and "active project(s)" in done.stdout


def test_transparency_report_lists_projects_with_access(app, setup, raw):
    settings, ids = setup
    patient = consent.pseudonym_of(settings, a_patient(raw))
    with app.extensions["portal.sessions"]() as db:
        holding, found = transparency.uses(db, settings, patient)
        pdf = transparency.report(db, settings, patient, "test:guardian")
    assert [d["id"] for d in holding] == ["emr-visits"]
    assert [u.project for u in found] == [ids["active"], ids["suspended"], ids["closed"]]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    for title in ("在研项目", "已暂停项目", "已结束项目"):
        assert title in text
    assert "草稿" not in text and "岭南大学" in text and "2026-01-05 – 2026-07-05" in text
    with app.extensions["portal.sessions"]() as db:
        nobody = transparency.report(db, settings, "cd" * 32, "test:guardian")
    assert "No approved project" in "".join(
        p.extract_text() for p in PdfReader(io.BytesIO(nobody)).pages)
    with app.extensions["portal.engine"].connect() as conn:
        logged = conn.execute(select(audit.audit_log.c.subject).where(
            audit.audit_log.c.action == "transparency.reported")).scalars().all()
    assert f"patient:{patient}" in logged
