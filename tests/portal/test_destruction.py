"""Destruction certificates: a closed project's researcher gets a task and a form (with the
platform's destruction record); a controller rejects an incomplete certificate with
reasons and verifies the corrected one, which closes the project; a task left open past
its due date becomes a blacklist proposal. Mail goes through a real SMTP server."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from approvals.errors import IllegalTransition, InvalidDecision, NotPermitted
from portal import destruction, projects
from portal.models import (
    Agreement,
    Application,
    DestructionRecord,
    DestructionTask,
    Profile,
    User,
)
from portal.security import hash_password
from sandbox import audit
from sandbox.errors import InputError
from tests import committee
from tests.mail import start_smtp
from tests.tiers import tier

SIGNED = b"%PDF-1.4 signed certificate"


@pytest.fixture(scope="module")
@tier("service")
def inbox():
    controller, box = start_smtp()
    yield box
    controller.stop()


@pytest.fixture
def ended(app, portal_settings, inbox):
    """A project whose term has just ended (so it is closing), with a sandbox record."""
    settings = portal_settings.model_copy(update={"smtp_port": inbox.port})
    with app.extensions["portal.sessions"]() as db:
        stamp = datetime.now(UTC).strftime("%H%M%S%f")
        researcher = User(email=f"d-{stamp}@example.cn", name="研究者", role="researcher",
                          password_hash=hash_password("x-password-1"),
                          profile=Profile(institution=committee.entry(db, "岭南大学")))
        controller = User(email=f"c-{stamp}@example.cn", name="管理者", role="controller",
                          password_hash=hash_password("x-password-1"))
        db.add_all([researcher, controller])
        db.flush()
        application = Application(researcher_id=researcher.id, title="住院费用研究",
                                  purpose="medical_research", non_profit=True,
                                  state="active")
        db.add(application)
        db.flush()
        now = datetime.now(UTC)
        db.add(Agreement(application_id=application.id, pdf=b"%PDF-", sha256="0",
                         signed_by=researcher.id, expires_at=now - timedelta(minutes=1)))
        db.add(DestructionRecord(
            application_id=application.id, hub_user=f"user-{researcher.id}", server="p1",
            started_at=now, finished_at=now, complete=True, steps=[
                {"kind": "container", "id": "c0ffee" * 4, "outcome": "absent", "at": "t"},
                {"kind": "volume", "id": "vol", "outcome": "removed", "at": "t"}]))
        db.commit()
        assert application.id in projects.end_terms(db, settings, now)
        return settings, application.id, researcher.id, controller.id


def test_certificate_rejected_then_verified_closes_the_project(app, ended, inbox):
    settings, project, researcher_id, controller_id = ended
    with app.extensions["portal.sessions"]() as db:
        application = db.get(Application, project)
        task = db.get(DestructionTask, project)
        assert application.state == "closing" and task.state == "open"
        assert task.due_at.date() == (datetime.now(UTC) + timedelta(days=30)).date()
        assert any("destruction certificate" in m["Subject"]
                   for m in inbox.to(application.researcher.email))
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(
            destruction.form(db, application))).pages)
        assert "住院费用研究" in text and "c0ffeec0ffee" in text and "Signature" in text

        researcher, controller = db.get(User, researcher_id), db.get(User, controller_id)
        with pytest.raises(InputError, match="as a PDF"):
            destruction.submit(db, settings, application, researcher, b"not a pdf")
        destruction.submit(db, settings, application, researcher, SIGNED)
        with pytest.raises(NotPermitted):
            destruction.decide(db, settings, application, researcher, True)
        with pytest.raises(InvalidDecision, match="say why"):
            destruction.decide(db, settings, application, controller, False, " ")
        destruction.decide(db, settings, application, controller, False,
                           "缺少导出副本的存放位置")
        assert db.get(DestructionTask, project).state == "open"
        assert db.get(Application, project).state == "closing"
        destruction.submit(db, settings, application, researcher, SIGNED + b" v2")
        destruction.decide(db, settings, application, controller, True)
        assert db.get(DestructionTask, project).state == "verified"
        assert db.get(Application, project).state == "closed"
        with pytest.raises(IllegalTransition):
            destruction.submit(db, settings, application, researcher, SIGNED)
    with app.extensions["portal.engine"].connect() as conn:
        actions = list(conn.execute(select(audit.audit_log.c.action).where(
            audit.audit_log.c.subject == f"application:{project}")).scalars())
    assert actions.count("destruction.submitted") == 2
    assert {"term.ended", "destruction.requested", "destruction.rejected",
            "destruction.verified"} <= set(actions)


def test_an_overdue_task_is_a_blacklist_proposal(app, ended):
    _settings, project, researcher_id, _ = ended
    with app.extensions["portal.sessions"]() as db:
        assert project not in [p.application_id for p in destruction.overdue(db)]
        later = datetime.now(UTC) + timedelta(days=31)
        [proposal] = [p for p in destruction.overdue(db, later) if p.application_id == project]
    assert proposal.researcher_id == researcher_id and proposal.title == "住院费用研究"


def test_the_cli_lists_overdue_tasks(app, ended, cli, monkeypatch):
    settings, project, _, _ = ended
    with app.extensions["portal.sessions"]() as db:
        db.get(DestructionTask, project).due_at = datetime.now(UTC) - timedelta(days=1)
        db.commit()
    monkeypatch.setenv("SANDBOX_PORTAL_DATABASE_URL", settings.database_url)
    listed = cli("portal", "overdue-destruction")
    assert listed.code == 0 and f"project {project} 住院费用研究" in listed.stdout
