"""An export request sent from the sandbox, against the served portal and a gateway process.

Adversary: someone holding a copy of the researcher's portal session cookie (left in a
shared browser, copied off the wire), but not the authenticator. The cookie opens the
project's sandbox through the hub's OAuth sign-in, and in the sandbox ``gw.export`` sends
any bundle to the gateway — played here by the client with the project's token, as the
sandbox has it. The project page asks for a fresh code before a request is made there;
the bundle from the sandbox must not get around that: it waits, unchecked and out of the
reviewers' reach, until its author confirms it on the portal with a fresh code; the author
is mailed, and may withdraw it instead.

**Fails on ab8a222**: the bundle is checked and put under review as soon as the portal
collects it."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import select

from portal import create_app
from portal.models import ExportRequest, User
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.client import Gateway
from tests.attacks.conftest import Visitor, author, person, serve
from tests.portal.conftest import active_project
from tests.signin import fresh_code, wrong_code


@pytest.fixture(scope="module")
def project(dataset, tmp_path_factory):
    seeded = {}

    def prepare(stack) -> None:
        seeded["project"] = active_project(create_app(stack.settings), stack.settings,
                                           ["sex", "visit_type"], project_title="导出确认")

    for stack, sessions in serve(dataset, tmp_path_factory.mktemp("export-confirm"),
                                 before_serving=prepare):
        yield stack, sessions, seeded["project"]


def state(sessions, export_id: int) -> tuple[str, list]:
    with sessions() as db:
        request = db.get(ExportRequest, export_id)
        return request.state, request.checks


def test_a_bundle_from_the_sandbox_waits_for_its_authors_fresh_code(project, tmp_path):
    stack, sessions, made = project
    researcher = author(stack.url, sessions, made.email)
    researcher.token("/profile")  # a page with a form: the cookie now carries its CSRF secret
    thief = Visitor(stack.url, cookies={"session": researcher.http.cookies["session"]})
    gw = Gateway(stack.gateway.url, made.token)  # the sandbox, which the cookie opens
    result = gw.count("emr-visits", group_by=["sex"], epsilon=0.3)
    table = tmp_path / "by-sex.csv"
    table.write_text("sex,n\n" + "\n".join(f"{r['sex']},{r['count']}"
                                             for r in result.df.to_dicts()))
    gw.export([table], [result], note="表1")

    controller = Visitor(stack.url)
    controller.sign_in(sessions, person(sessions, "controller"))
    assert controller.http.get("/controller/exports").status_code == 200  # collects it
    with sessions() as db:
        export_id = db.scalar(select(ExportRequest.id).where(
            ExportRequest.application_id == made.application_id))
    assert state(sessions, export_id) == ("unconfirmed", []), (
        "the bundle from the sandbox was checked and put in front of the reviewers with no "
        "fresh code typed by its author")
    assert any("waits for your confirmation" in m["Subject"]
               for m in stack.inbox.to(made.email)), "the author is told"
    page = thief.http.get(f"/applications/{made.application_id}")
    assert f"/exports/{export_id}/confirm" in page.text, "the project page offers it"

    # the controllers cannot review it yet
    vote = controller.form(f"/controller/exports/{export_id}/vote",
                           {"choice": "approve", "comment": ""},
                           page=f"/controller/exports/{export_id}")
    assert vote.status_code >= 400 and state(sessions, export_id)[0] == "unconfirmed"

    # the cookie alone cannot confirm it: no code, a wrong one, or the code the author
    # signed in with (intercepted)
    confirm = f"/applications/{made.application_id}/exports/{export_id}/confirm"
    with sessions() as db:
        account = db.scalar(select(User).where(User.email == made.email))
        intercepted = pyotp.TOTP(account.totp_secret).generate_otp(account.totp_last_step)
    for code in ("", wrong_code(sessions, made.email), intercepted):
        refused = thief.form(confirm, {"code": code})
        assert refused.status_code == 401, refused.status_code
        assert state(sessions, export_id) == ("unconfirmed", [])

    # the author confirms with a fresh code: now it is checked and reviewed
    confirmed = researcher.form(confirm, {"code": fresh_code(sessions, made.email)})
    assert confirmed.status_code == 302, confirmed.text[:300]
    now, checks = state(sessions, export_id)
    assert now == "under_review" and checks, (now, checks)
    with sessions() as db:
        rows = db.execute(select(audit.audit_log).where(audit.audit_log.c.action.in_(
            [AuditAction.STEP_UP_PASSED, AuditAction.EXPORT_CONFIRMED]))).all()
    assert any(r.action == AuditAction.STEP_UP_PASSED and f'"export:{export_id}"' in r.details
               and '"export_request"' in r.details for r in rows)
    assert [r.subject for r in rows if r.action == AuditAction.EXPORT_CONFIRMED] == [
        f"export:{export_id}"]


def test_the_author_withdraws_a_bundle_they_did_not_send(project, tmp_path):
    stack, sessions, made = project
    gw = Gateway(stack.gateway.url, made.token)
    note = tmp_path / "notes.md"
    note.write_text("not mine\n")
    gw.export([note], [], note="?")
    researcher = author(stack.url, sessions, made.email)
    assert researcher.http.get(f"/applications/{made.application_id}").status_code == 200
    with sessions() as db:
        export_id = db.scalar(select(ExportRequest.id).where(
            ExportRequest.application_id == made.application_id,
            ExportRequest.state == "unconfirmed"))
    confirm = f"/applications/{made.application_id}/exports/{export_id}/confirm"
    shown = researcher.http.get(confirm).text
    assert "notes.md" in shown and 'id="withdraw"' in shown
    withdrawn = researcher.form(
        f"/applications/{made.application_id}/exports/{export_id}/withdraw", {},
        page=confirm)
    assert withdrawn.status_code == 302
    assert state(sessions, export_id) == ("withdrawn", []), "never checked, never reviewed"
    late = researcher.form(confirm, {"code": fresh_code(sessions, made.email)})
    assert late.status_code == 409 and state(sessions, export_id)[0] == "withdrawn"
