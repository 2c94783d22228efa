"""Anomaly alerts over both logs: refused queries probing the gateway (its own audit log,
read over HTTP) and a password-guessing run at the portal raise alerts, listed on the
controller's page and mailed to controllers exactly once (real SMTP server)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from portal import alerts, periodic
from portal.models import Agreement, Application, ExportRequest
from sandbox import audit
from sandbox.client import Gateway, GatewayError
from tests.mail import start_smtp
from tests.portal.conftest import active_project, login, make_user, sign_in


@pytest.fixture(scope="module")
def inbox():
    controller, box = start_smtp()
    yield box
    controller.stop()


def test_alerts_from_both_logs_are_listed_and_mailed_once(app, client, portal_settings,
                                                          gateway, inbox):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": inbox.port,
        "anomaly_policy": {"work_start": time(0, 0), "work_end": time(23, 59, 59)}})
    probe = Gateway(gateway.url, gateway.grant(fields=["sex"])["token"])
    for n in range(12):  # asking for fields outside the grant, again and again
        with pytest.raises(GatewayError):
            probe.count("emr-visits", where={"department": f"科{n}"}, epsilon=0.1)
    tag = uuid.uuid4().hex[:6]
    make_user(app, f"target-{tag}@example.cn", role="chair")
    for _ in range(5):
        login(client, f"target-{tag}@example.cn", "wrong password 1")
    make_user(app, f"watch-{tag}@example.cn", role="controller")

    with app.extensions["portal.sessions"]() as db:
        found = alerts.scan(db, settings, hours=1)
    rules = {(source, a.rule) for source, a in found.alerts}
    assert ("gateway", "repeated_refusals") in rules
    assert ("portal", "failed_logins") in rules
    assert found.gateway_problem is None

    with app.extensions["portal.sessions"]() as db:
        assert alerts.notify_new(db, settings, found) == len(found.alerts)
        assert alerts.notify_new(db, settings, alerts.scan(db, settings, hours=1)) == 0
    [mail] = inbox.to(f"watch-{tag}@example.cn")
    assert "repeated_refusals" in mail.get_content() and "failed_logins" in mail.get_content()


def test_the_alerts_page_says_when_the_gateway_cannot_be_read(app):
    email = f"c-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, role="controller")
    page = app.test_client()
    sign_in(page, email)
    body = page.get("/controller/alerts").get_data(as_text=True)
    assert 'id="alerts"' in body and "无法读取网关日志" in body  # no gateway here


def test_the_periodic_round_ends_terms_sends_alerts_and_keeps_the_audit_verifiable(
        app, portal_settings, gateway, inbox, tmp_path):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": inbox.port})
    made = active_project(app, settings, ["sex"])
    note = tmp_path / "method.md"
    note.write_text("Method: counts by sex.\n")
    Gateway(gateway.url, made.token).export([note], [], note="方法说明")
    with app.extensions["portal.sessions"]() as db:
        db.get(Agreement, made.application_id).expires_at = \
            datetime.now(UTC) - timedelta(minutes=1)
        db.commit()
        done = periodic.run_once(db, settings)
        assert made.application_id in done.ended and done.pruned == 0
        # the export request was collected without anyone opening a page; sent from the
        # sandbox, it waits for its author's confirmation before it is checked
        assert done.exports_collected >= 1
        collected = [r for r in db.query(ExportRequest).filter_by(
            application_id=made.application_id) if r.note == "方法说明"]
        assert [f.name for f in collected[0].files] == ["method.md"]
        assert (collected[0].state, collected[0].checks) == ("unconfirmed", [])
        assert any("waits for your confirmation" in m["Subject"]
                   for m in inbox.to(made.email))
        assert db.get(Application, made.application_id).state == "closing"
        # a year and a half later the retention policy removes what is past it
        later = periodic.run_once(db, settings, datetime.now(UTC) + timedelta(days=550))
        assert later.pruned > 0
        assert audit.verify(db.connection()).ok


def test_malformed_entries_stop_neither_the_round_nor_the_audit_pages(
        app, portal_settings, gateway, inbox):
    """Someone with the portal's database adds entries, consistently chained, whose details
    are not JSON objects — an ``alert.sent`` the round reads, a failed sign-in the anomaly
    rules read. The periodic round still hands the gateway a checkpoint that covers them,
    and the controller's audit page and CSV still list them."""
    from tests.audit_attacks import plant

    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": inbox.port})
    url = portal_settings.database_url
    planted = [plant(url, "alert.sent", "[]", "alert:x"),
               plant(url, "login.failed", "[]", "user:x")]
    with app.extensions["portal.sessions"]() as db:
        periodic.run_once(db, settings)
    records = gateway.admin("GET", "/v1/admin/audit/anchors?service=portal").json()["records"]
    assert json.loads(records[-1]["details"])["seq"] >= planted[-1]
    email = f"c-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, role="controller")
    page = app.test_client()
    sign_in(page, email)
    assert page.get("/controller/audit").status_code == 200
    listed = page.get("/controller/audit.csv")
    assert listed.status_code == 200 and "alert:x" in listed.get_data(as_text=True)


def test_a_round_held_by_another_replica_is_skipped(app, portal_settings, gateway):
    """Two portal replicas on one PostgreSQL database: while one runs the round (holds its
    advisory lock) the other's round does nothing — no term ended twice, no alert mailed
    twice. On SQLite there is one portal process and no lock."""
    from sqlalchemy import text

    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token"})
    made = active_project(app, settings, ["sex"])
    with app.extensions["portal.sessions"]() as db:
        db.get(Agreement, made.application_id).expires_at = \
            datetime.now(UTC) - timedelta(minutes=1)
        db.commit()
        engine = db.get_bind()
        if engine.dialect.name == "sqlite":
            assert not periodic.run_once(db, settings).skipped
            return
        with engine.connect() as other:  # the replica running the round
            other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": periodic.ROUND_LOCK})
            held = periodic.run_once(db, settings)
            assert held.skipped and held.ended == []
            assert db.get(Application, made.application_id).state == "active"
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": periodic.ROUND_LOCK})
            other.commit()
        done = periodic.run_once(db, settings)
        assert not done.skipped and made.application_id in done.ended
