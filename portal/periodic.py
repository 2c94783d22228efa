"""What a serving portal does every minute: end the terms that have passed, mail
controllers the new anomaly alerts, prune audit entries past the retention policy,
exchange signed audit checkpoints with the gateway, and collect new export requests from
the gateway (their authors told that one sent from the sandbox waits for their
confirmation, without waiting for anyone to open a page).

Several portal replicas may serve one PostgreSQL database: each round then runs under a
PostgreSQL advisory lock, so that one replica runs it and the others skip it (on SQLite
there is one portal process and no lock)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from portal import alerts, anchoring, exports, projects
from portal.config import PortalSettings
from sandbox import audit
from sandbox.errors import SandboxError

log = logging.getLogger("portal.periodic")


# The advisory lock's key: any 64-bit number no other part of the portal uses.
ROUND_LOCK = 0x706F7274616C  # "portal"


@dataclass(frozen=True)
class Round:
    ended: list[int]
    alerts_sent: int
    pruned: int
    exports_collected: int = 0
    skipped: bool = False  # another replica holds the round


def run_once(db: Session, settings: PortalSettings, now: datetime | None = None) -> Round:
    """One round, unless another replica is running it (PostgreSQL)."""
    engine = db.get_bind()
    if engine.dialect.name != "postgresql":
        return _round(db, settings, now)
    with engine.connect() as lock:  # its own connection: the session's commits come and go
        if not lock.execute(text("SELECT pg_try_advisory_lock(:key)"),
                            {"key": ROUND_LOCK}).scalar():
            return Round([], 0, 0, skipped=True)
        try:
            return _round(db, settings, now)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ROUND_LOCK})
            lock.commit()


def _round(db: Session, settings: PortalSettings, now: datetime | None) -> Round:
    now = now or datetime.now(UTC)
    ended = projects.end_terms(db, settings, now)
    sent = alerts.notify_new(db, settings, alerts.scan(db, settings, now=now))
    try:
        pruned = audit.prune(db.connection(), now - timedelta(
            days=settings.audit_retention_days), "system:retention",
            settings.audit_retention_days, now).entries
        db.commit()
    except SandboxError as exc:  # a chain that does not verify: anchoring goes on regardless
        db.rollback()
        log.warning("audit entries not pruned: %s", exc.reason)
        pruned = 0
    try:
        anchoring.exchange(settings, db.get_bind())
    except SandboxError as exc:  # the gateway is away: the next round hands it over
        log.warning("audit checkpoints not exchanged: %s", exc.reason)
    try:
        collected = len(exports.sync(db, settings))
    except SandboxError as exc:  # the gateway is away: the next round collects them
        db.rollback()
        log.warning("export requests not collected: %s", exc.reason)
        collected = 0
    return Round(ended, sent, pruned, collected)
