"""The append-only, hash-chained audit log every service writes to.

Each entry stores the SHA-256 of the entry before it and its own hash over its content, so
editing, deleting or reordering any row breaks the chain, and ``verify`` says where. A
one-row head table holds the last sequence number and hash; appending locks it, so
concurrent writers extend one chain. Appends happen inside the caller's transaction: an
action and its audit entry commit together or not at all."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

GENESIS = "0" * 64

metadata = MetaData()

audit_log = Table(
    "audit_log", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(60), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)


class AuditAction(StrEnum):
    """Every kind of audited event, in one place."""

    GRANT_CREATED = "grant.created"
    GRANT_SUSPENDED = "grant.suspended"
    GRANT_RESUMED = "grant.resumed"
    GRANT_REVOKED = "grant.revoked"
    GRANT_BOUND = "grant.bound"
    TOKEN_MISPLACED = "token.misplaced"
    QUERY_REFUSED = "query.refused"
    QUERY_PREVIEWED = "query.previewed"
    RELEASE_CHARGED = "release.charged"
    RELEASE_RELEASED = "release.released"
    RELEASE_REPEATED = "release.repeated"
    RELEASE_FAILED = "release.failed"
    CONSENT_WITHDRAWN = "consent.withdrawn"
    USER_REGISTERED = "user.registered"
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    ACCOUNT_LOCKED = "account.locked"
    MFA_ENROLLED = "mfa.enrolled"
    SESSION_IDLE_LOCKED = "session.idle_locked"
    APPLICATION_CREATED = "application.created"
    APPLICATION_SUBMITTED = "application.submitted"
    APPLICATION_REFUSED = "application.refused"
    APPLICATION_ASSIGNED = "application.assigned"
    APPLICATION_SCORED = "application.scored"
    APPLICATION_DECIDED = "application.decided"
    AGREEMENT_SIGNED = "agreement.signed"
    CONFLICTS_DECLARED = "conflicts.declared"
    SANDBOX_REQUESTED = "sandbox.requested"
    SANDBOX_REFUSED = "sandbox.refused"
    SANDBOX_GRANTED = "sandbox.granted"
    SANDBOX_STOPPED = "sandbox.stopped"
    SANDBOX_DESTROYED = "sandbox.destroyed"
    TERM_ENDED = "term.ended"
    PROJECT_SUSPENDED = "project.suspended"
    PROJECT_RESUMED = "project.resumed"
    PROJECT_REVOKED = "project.revoked"
    OAUTH_AUTHORIZED = "oauth.authorized"


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(audit_head.c.id)).first() is None:
            conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _hash(entry: dict) -> str:
    return hashlib.sha256(_canonical(entry)).hexdigest()


def append(conn: Connection, action: AuditAction, actor: str, subject: str,
           details: dict | None = None) -> int:
    """Add an entry within the caller's transaction; returns its sequence number."""
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update()).one()
    entry = {
        "seq": head.seq + 1,
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": str(action),
        "subject": subject,
        "details": json.dumps(details or {}, sort_keys=True, ensure_ascii=False),
        "prev_hash": head.hash,
    }
    digest = _hash(entry)
    conn.execute(insert(audit_log).values(**entry, hash=digest))
    conn.execute(update(audit_head).where(audit_head.c.id == 1)
                 .values(seq=entry["seq"], hash=digest))
    return entry["seq"]


@dataclass(frozen=True)
class Verification:
    """Result of checking the chain."""

    ok: bool
    entries: int
    problem: str | None = None
    seq: int | None = None


def verify(conn: Connection) -> Verification:
    """Walk the chain in sequence order and report the first break."""
    prev, expected_seq, count = GENESIS, 1, 0
    for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)):
        entry = {k: getattr(row, k) for k in
                 ("seq", "at", "actor", "action", "subject", "details", "prev_hash")}
        if row.seq != expected_seq:
            return Verification(False, count, f"entry {expected_seq} is missing", expected_seq)
        if row.prev_hash != prev:
            return Verification(False, count, f"entry {row.seq} does not follow entry "
                                f"{row.seq - 1} (deleted or reordered)", row.seq)
        if _hash(entry) != row.hash:
            return Verification(False, count, f"entry {row.seq} was altered", row.seq)
        prev, expected_seq, count = row.hash, expected_seq + 1, count + 1
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    if head is not None and (head.seq != count or head.hash != prev):
        return Verification(False, count, f"the log ends at entry {count} but the head "
                            f"records entry {head.seq} (entries were removed)", head.seq)
    return Verification(True, count)
