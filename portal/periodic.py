"""What a serving portal does every minute: end the terms that have passed, mail
controllers the new anomaly alerts, and prune audit entries past the retention policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from portal import alerts, projects
from portal.config import PortalSettings
from sandbox import audit


@dataclass(frozen=True)
class Round:
    ended: list[int]
    alerts_sent: int
    pruned: int


def run_once(db: Session, settings: PortalSettings, now: datetime | None = None) -> Round:
    now = now or datetime.now(UTC)
    ended = projects.end_terms(db, settings, now)
    sent = alerts.notify_new(db, settings, alerts.scan(db, settings, now=now))
    pruned = audit.prune(db.connection(), now - timedelta(days=settings.audit_retention_days),
                         "system:retention", settings.audit_retention_days, now)
    db.commit()
    return Round(ended, sent, pruned.entries)
