"""Anomaly alerts for controllers: the rules of ``sandbox.anomalies`` over both audit logs —
the portal's (sign-ins, exports) and the gateway's (queries, refusals) — listed in the
portal and sent by e-mail to every controller once per alert."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.states import Role
from portal import gateway, notify
from portal.config import PortalSettings
from portal.models import User
from sandbox import anomalies, audit
from sandbox.anomalies import Alert, AnomalyPolicy, Entry
from sandbox.audit import AuditAction, audit_log
from sandbox.errors import SandboxError


@dataclass(frozen=True)
class Scan:
    alerts: list[tuple[str, Alert]]  # (source log, alert)
    gateway_problem: str | None = None


def scan(db: Session, settings: PortalSettings, hours: float = 24,
         now: datetime | None = None) -> Scan:
    """The alerts the rules raise over the last ``hours`` of both logs."""
    since = ((now or datetime.now(UTC)) - timedelta(hours=hours)).isoformat()
    policy = AnomalyPolicy.from_mapping(settings.anomaly_policy)
    portal_entries = [Entry.from_row(r) for r in db.execute(
        select(audit_log).where(audit_log.c.at >= since))]
    db.commit()
    problem = None
    try:
        gateway_entries = [Entry.from_row(SimpleNamespace(**e))
                           for e in gateway.audit_entries(settings, since)]
    except SandboxError as exc:
        gateway_entries, problem = [], exc.reason
    found = [("portal", a) for a in anomalies.detect(portal_entries, policy)] + \
        [("gateway", a) for a in anomalies.detect(gateway_entries, policy)]
    return Scan(sorted(found, key=lambda item: item[1].first_at), problem)


def key(source: str, alert: Alert) -> str:
    return f"{source}:{alert.rule}:{alert.who}:{alert.first_at.isoformat()}"


def notify_new(db: Session, settings: PortalSettings, found: Scan) -> int:
    """E-mail every controller about alerts not sent before; each sending is audited (and
    remembered through the audit log). Returns how many alerts were sent."""
    sent = {(audit.details_of(d) or {}).get("key") for d in db.scalars(
        select(audit_log.c.details).where(audit_log.c.action == AuditAction.ALERT_SENT))}
    new = [(s, a) for s, a in found.alerts if key(s, a) not in sent]
    if not new:
        return 0
    controllers = [u.email for u in db.scalars(select(User).where(
        User.role == Role.CONTROLLER))]
    lines = "\n".join(f"- [{s}] {a.rule} {a.who}: {a.reason} "
                      f"({a.first_at:%Y-%m-%d %H:%M} UTC)" for s, a in new)
    notify.send(settings.smtp_host, settings.smtp_port, settings.mail_from, controllers,
                f"[数据沙箱 Data sandbox] 异常告警 / {len(new)} anomaly alert(s)",
                f"异常告警 / Anomaly alerts:\n{lines}\n\n{settings.public_url}"
                "/controller/alerts\n")
    for source, alert in new:
        audit.append(db.connection(), AuditAction.ALERT_SENT, "system:alerts",
                     f"alert:{alert.rule}", {"key": key(source, alert), "who": alert.who,
                                             "reason": alert.reason, "to": controllers})
    db.commit()
    return len(new)
