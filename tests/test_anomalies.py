"""Anomaly rules on synthetic audit traces: each misuse pattern raises its alert, and a
normal working week raises none. The last test runs the rules on a real audit chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from portal.config import PortalSettings
from sandbox import anomalies, audit
from sandbox.anomalies import AnomalyPolicy, Entry
from sandbox.audit import AuditAction
from sandbox.db import make_engine
from sandbox.errors import InputError

SHANGHAI_9AM = datetime(2026, 11, 16, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
POLICY = AnomalyPolicy()


class Trace:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._seq = count(1)

    def add(self, at: datetime, action: str, actor: str = "grant:g1", subject: str = "x",
            **details: object) -> None:
        self.entries.append(Entry(next(self._seq), at, actor, action, subject, details))


def normal_week() -> Trace:
    """Five working days: a researcher signs in, previews, runs ~20 queries spaced out,
    has a refusal or two, mistypes a password once, and files one modest export."""
    trace = Trace()
    for day in range(5):
        start = SHANGHAI_9AM + timedelta(days=day)
        trace.add(start, "login.succeeded", "user:7", "user:7")
        for q in range(20):
            trace.add(start + timedelta(minutes=10 + q * 12), "release.charged")
        trace.add(start + timedelta(hours=2), "query.previewed")
        trace.add(start + timedelta(hours=3), "query.refused", reason="budget")
    trace.add(SHANGHAI_9AM + timedelta(days=2, minutes=-1), "login.failed", "anonymous",
              "user:7")
    trace.add(SHANGHAI_9AM + timedelta(days=4, hours=5), "export.submitted", "user:7",
              "export:1", bytes=200_000, files=3)
    return trace


def rules(trace: Trace) -> list[anomalies.Alert]:
    return anomalies.detect(trace.entries, POLICY)


def test_a_normal_week_raises_nothing():
    assert rules(normal_week()) == []


def test_off_hours_access():
    trace = normal_week()
    night = SHANGHAI_9AM + timedelta(days=1, hours=16)  # 01:00 the next night, local time
    for minute in range(3):
        trace.add(night + timedelta(minutes=minute), "release.charged", "grant:g2")
    [alert] = rules(trace)
    assert alert.rule == "off_hours" and alert.who == "grant:g2" and alert.count == 3
    assert "outside 07:00–22:00" in alert.reason


def test_query_burst():
    trace = normal_week()
    burst = SHANGHAI_9AM + timedelta(days=1, hours=6)
    for second in range(0, 70 * 3, 3):  # 70 queries in 3.5 minutes
        trace.add(burst + timedelta(seconds=second), "release.charged", "grant:g3")
    [alert] = rules(trace)
    assert alert.rule == "query_burst" and alert.who == "grant:g3" and alert.count == 70


def test_repeated_refusals():
    trace = normal_week()
    probing = SHANGHAI_9AM + timedelta(days=3, hours=4)
    for minute in range(12):
        trace.add(probing + timedelta(minutes=minute), "query.refused", "grant:g4",
                  reason="outside this project's grant")
    [alert] = rules(trace)
    assert alert.rule == "repeated_refusals" and alert.count == 12


def test_failed_logins():
    trace = normal_week()
    guess = SHANGHAI_9AM + timedelta(hours=8)
    for second in range(0, 60, 10):
        trace.add(guess + timedelta(seconds=second), "login.failed", "anonymous",
                  "email:chair@lingnan.cn")
    [alert] = rules(trace)
    assert alert.rule == "failed_logins" and alert.who == "email:chair@lingnan.cn"
    assert alert.count == 6


def test_large_export():
    trace = normal_week()
    trace.add(SHANGHAI_9AM + timedelta(hours=3), "export.submitted", "user:9", "export:2",
              bytes=80 * 1024 * 1024, files=4)
    [alert] = rules(trace)
    assert alert.rule == "large_export" and alert.who == "user:9"


def test_thresholds_come_from_the_policy():
    trace = normal_week()  # 20 queries in ~4 hours a day
    strict = AnomalyPolicy(burst_queries=10, burst_minutes=240)
    assert {a.rule for a in anomalies.detect(trace.entries, strict)} == {"query_burst"}


def test_working_hours_come_from_configuration():
    trace = Trace()  # a Saturday, 07:30 in Shanghai
    trace.add(SHANGHAI_9AM + timedelta(days=5, minutes=-90), "release.charged")
    assert rules(trace) == []
    configured = AnomalyPolicy.from_mapping({"work_start": "08:00", "work_end": "18:30"})
    assert configured.work_start.hour == 8 and configured.work_end.minute == 30
    assert [a.rule for a in anomalies.detect(trace.entries, configured)] == ["off_hours"]
    weekends = AnomalyPolicy.from_mapping({"work_start": "07:00", "weekends_off": True})
    assert [a.rule for a in anomalies.detect(trace.entries, weekends)] == ["off_hours"]
    berlin = AnomalyPolicy.from_mapping({"timezone": "Europe/Berlin", "work_start": "00:00"})
    assert anomalies.detect(trace.entries, berlin) == []  # 00:30 in Berlin, within hours


@pytest.mark.parametrize(("values", "says"), [
    ({"work_start": "25:00"}, "work_start"), ({"work_strat": "08:00"}, "unknown setting"),
    ({"burst_queries": 0}, "at least 1"), ({"timezone": "Mars/Base"}, "timezone"),
    ({"weekends_off": "yes"}, "true or false"), ({"work_start": 8}, "work_start"),
    ({"work_start": "20:00", "work_end": "08:00"}, "before work_end")])
def test_a_bad_configuration_is_refused_with_its_reason(values, says):
    with pytest.raises(InputError, match=says):
        AnomalyPolicy.from_mapping(values)


def test_the_portal_refuses_to_start_with_a_bad_policy(tmp_path):
    with pytest.raises(ValidationError, match="work_end"):
        PortalSettings(state_dir=tmp_path, anomaly_policy={"work_end": "7pm"})


@pytest.fixture
def chain(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    audit.create_tables(engine)
    yield engine
    engine.dispose()


def test_rules_read_the_real_audit_chain(chain):
    with chain.begin() as conn:
        for _ in range(6):
            audit.append(conn, AuditAction.LOGIN_FAILED, "anonymous", "email:x@y.cn",
                         {"ip": "10.0.0.9"})
    with chain.connect() as conn:
        entries = [Entry.from_row(r) for r in conn.execute(select(audit.audit_log))]
    assert [a.rule for a in anomalies.detect(entries, AnomalyPolicy(
        work_start=datetime.min.time(), work_end=datetime.max.time()))] == ["failed_logins"]


def test_the_cli_lists_alerts(chain, cli):
    with chain.begin() as conn:
        for _ in range(5):
            audit.append(conn, AuditAction.LOGIN_FAILED, "anonymous", "email:x@y.cn")
    url = chain.url.render_as_string(hide_password=False)
    listed = cli("audit", "anomalies", "--database-url", url)
    assert listed.code == 0 and "failed_logins" in listed.stdout
    assert "email:x@y.cn" in listed.stdout


def test_malformed_entries_are_read_as_far_as_they_go(chain, cli):
    """Entries someone planted, consistently chained, whose details are not objects or
    hold a count as text: the rules (and the CLI) still run over the rest."""
    from tests.audit_attacks import plant

    url = chain.url.render_as_string(hide_password=False)
    plant(url, "login.failed", "[]", "email:x@y.cn")
    plant(url, "export.submitted", '{"bytes": "many", "files": null}', "export:1")
    with chain.begin() as conn:
        for _ in range(5):
            audit.append(conn, AuditAction.LOGIN_FAILED, "anonymous", "email:x@y.cn")
    with chain.connect() as conn:
        entries = [Entry.from_row(r) for r in conn.execute(select(audit.audit_log))]
    assert {e.action: e.details for e in entries if e.actor == "someone"} == {
        "login.failed": {}, "export.submitted": {"bytes": "many", "files": None}}
    listed = cli("audit", "anomalies", "--database-url", url)
    assert listed.code == 0 and "failed_logins" in listed.stdout, listed
