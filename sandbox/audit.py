"""The append-only, hash-chained audit log every service writes to.

Each entry stores the SHA-256 of the entry before it and its own hash over its content, so
editing, deleting or reordering any row breaks the chain, and ``verify`` says where. A
one-row head table holds the last sequence number and hash; appending locks it, so
concurrent writers extend one chain. Appends happen inside the caller's transaction: an
action and its audit entry commit together or not at all."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    bindparam,
    delete,
    insert,
    select,
    update,
)

from sandbox.errors import InputError

GENESIS = "0" * 64

# Set on a connection that appended an entry: when the connection goes back to the pool
# (its transaction committed or rolled back) the witness follower reads what committed.
APPENDED = "audit.appended"

# Where the current request came from (an IP address), set by the HTTP services for each
# request; every entry appended meanwhile records it, unless its details name one.
ORIGIN: ContextVar[str | None] = ContextVar("audit_origin", default=None)

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


# Retention: entries older than the policy may be pruned, never younger than this.
MIN_RETENTION_DAYS = 183

# The largest sequence number the ``seq`` column holds on every backend (PostgreSQL's
# INTEGER): a number a caller gives is refused above it rather than failing in the driver.
MAX_SEQ = 2**31 - 1

# How every time in a chain is spelled (entries, checkpoints, a pruning's cutoff): UTC with
# microseconds. Only this spelling is read back, so a claim cannot be parsed as one time
# and compared as another.
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")

# Where a pruned chain now starts: the last pruned entry's sequence number and hash. The
# same pair is written into the chain itself (the ``audit.pruned`` entry), so a forged
# checkpoint without a matching entry fails verification.
audit_checkpoint = Table(
    "audit_checkpoint", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", String(40), nullable=False),
)


class AuditAction(StrEnum):
    """Every kind of audited event, in one place."""

    AUDIT_PRUNED = "audit.pruned"
    AUDIT_VERIFIED = "audit.verified"
    AUDIT_EXPORTED = "audit.exported"
    ALERT_SENT = "alert.sent"
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
    CONSENT_RESTORED = "consent.restored"
    CONSENT_CARRIED = "consent.carried"
    SITE_AGGREGATED = "site.aggregated"
    SITE_REFUSED = "site.refused"
    SITE_PATIENT_LOOKED_UP = "site.patient_looked_up"
    KEYS_SITE_REGISTERED = "keys.site_registered"
    KEYS_DECRYPTED = "keys.decrypted"
    KEYS_REFUSED = "keys.refused"
    EXPORT_SUBMITTED = "export.submitted"
    EXPORT_CHECKED = "export.checked"
    EXPORT_VOTED = "export.voted"
    EXPORT_DECIDED = "export.decided"
    EXPORT_RELEASED = "export.released"
    EXPORT_WITHDRAWN = "export.withdrawn"
    CONSENT_RECORDED = "consent.recorded"
    TRANSPARENCY_REPORTED = "transparency.reported"
    RESEARCHER_BLACKLISTED = "researcher.blacklisted"
    DESTRUCTION_REQUESTED = "destruction.requested"
    DESTRUCTION_SUBMITTED = "destruction.submitted"
    DESTRUCTION_VERIFIED = "destruction.verified"
    DESTRUCTION_REJECTED = "destruction.rejected"
    RESEARCHER_UNLISTED = "researcher.unlisted"
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
    SITE_OVERLAP_REPORTED = "site.overlap_reported"
    KEYS_REPEATED = "keys.repeated"
    KEYS_GRANT_STATE = "keys.grant_state"
    FEDERATION_CHECKED = "federation.checked"
    EXPORT_DOWNLOADED = "export.downloaded"
    PASSWORD_ACCEPTED = "login.password_accepted"
    STEP_UP_PASSED = "step_up.passed"
    STEP_UP_FAILED = "step_up.failed"
    TOTP_REPLAY_REFUSED = "totp.replay_refused"
    SESSION_ENDED = "session.ended"
    CROSS_SITE_REFUSED = "request.cross_site_refused"
    INSTITUTION_ADDED = "institution.added"
    INSTITUTION_CHANGED = "institution.changed"
    INSTITUTION_CLAIMED = "institution.claimed"
    INSTITUTION_CONFIRMED = "institution.confirmed"
    INSTITUTION_REJECTED = "institution.rejected"
    INSTITUTION_WITHDRAWN = "institution.withdrawn"
    PROFILE_CHANGED = "profile.changed"
    CREDENTIAL_VERIFIED = "credential.verified"
    APPLICATION_SCORE_REFUSED = "application.score_refused"
    DEMO_SEEDED = "demo.seeded"
    AUDIT_CHECKPOINTED = "audit.checkpointed"  # this service signed its chain's head
    AUDIT_ANCHORED = "audit.anchored"  # another service's signed checkpoint, recorded here
    AUDIT_CHECKPOINT_FAILED = "audit.checkpoint_failed"  # a checkpoint round could not run
    EXPORT_AWAITING_CONFIRMATION = "export.awaiting_confirmation"  # sent from a sandbox
    EXPORT_CONFIRMED = "export.confirmed"  # by its author, with a fresh code
    APPLICATION_DECISION_REFUSED = "application.decision_refused"  # the chair is conflicted


def stamp(when: datetime) -> str:
    """``when`` spelled as the chain spells times."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: object) -> datetime | None:
    """A time spelled exactly as ``stamp`` spells it, or None for anything else."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # 2026-02-30 and the like
        return None


def given_time(text: str, name: str) -> str:
    """A time a caller gave (ISO 8601; UTC when it names no zone), spelled as entries spell
    theirs, so that comparing the strings compares the times; InputError otherwise."""
    try:
        when = datetime.fromisoformat(text)
        return stamp(when if when.tzinfo else when.replace(tzinfo=UTC))
    except ValueError:
        raise InputError(f"{name}: not an ISO 8601 time, e.g. 2026-01-31T08:00:00+08:00"
                         ) from None
    except OverflowError:
        raise InputError(f"{name}: a time beyond what UTC can express") from None


def details_of(details: object) -> dict | None:
    """An entry's details as ``append`` writes them — a JSON object — or None."""
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except (ValueError, RecursionError):
            return None
    return details if isinstance(details, dict) else None


# The details the anchoring code reads, by action: name → type.
_REQUIRED: dict[str, dict[str, type]] = {
    "audit.checkpointed": {"seq": int, "hash": str, "checkpoint": dict},
    "audit.anchored": {"service": str, "seq": int, "hash": str, "at": str, "checkpoint": dict},
    "audit.pruned": {"through_seq": int, "through_hash": str, "entries": int,
                     "older_than": str, "retention_days": int},
}


def malformed(action: str, at: object, details: object) -> tuple[str, str] | None:
    """Why an entry is not as ``append`` writes it (its time, its details as an object, and
    the fields the anchoring code reads for its action), in English and Chinese; None if it
    is."""
    if parse_time(at) is None:
        return f"its time {str(at)[:60]!r} is not a time as entries record it", \
            f"其时间 {str(at)[:60]!r} 不是记录所用的时间格式"
    found = details_of(details)
    if found is None:
        return "its details are not a JSON object", "其详情不是 JSON 对象"
    for name, kind in _REQUIRED.get(action, {}).items():
        value = found.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"its details lack {name!r} as {kind.__name__}", \
                f"其详情缺少 {kind.__name__} 类型的 {name!r}"
    return None


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


# append's statements, made once (every answer appends; building them each time was a
# good part of an answer's own cost)
_HEAD = select(audit_head).where(audit_head.c.id == 1).with_for_update()
_ADD = insert(audit_log)
_MOVE = update(audit_head).where(audit_head.c.id == 1).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash"))


def append(conn: Connection, action: AuditAction, actor: str, subject: str,
           details: dict | None = None) -> int:
    """Add an entry within the caller's transaction; returns its sequence number."""
    details = dict(details or {})
    if ORIGIN.get() and "ip" not in details:
        details["ip"] = ORIGIN.get()
    head = conn.execute(_HEAD).one()
    entry = {
        "seq": head.seq + 1,
        "at": stamp(datetime.now(UTC)),
        "actor": actor,
        "action": str(action),
        "subject": subject,
        "details": json.dumps(details, sort_keys=True, ensure_ascii=False),
        "prev_hash": head.hash,
    }
    digest = _hash(entry)
    conn.execute(_ADD, {**entry, "hash": digest})
    conn.execute(_MOVE, {"new_seq": entry["seq"], "new_hash": digest})
    conn.info[APPENDED] = True
    return entry["seq"]


@dataclass(frozen=True)
class Verification:
    """Result of checking the chain."""

    ok: bool
    entries: int
    problem: str | None = None
    seq: int | None = None
    problem_zh: str | None = None  # the same problem, for pages in Chinese
    # Checked against anchors outside the database (sandbox.anchored): how many anchor
    # points matched, and the last entry one of them vouches for.
    anchors: int = 0
    anchored_through: int | None = None


def verify(conn: Connection, well_formed: bool = False) -> Verification:
    """Walk the chain in sequence order, from the retention checkpoint if there is one, and
    report the first break — with ``well_formed``, also the first entry not as ``append``
    writes it (``malformed``), which the hashes alone do not show."""
    checkpoint = conn.execute(select(audit_checkpoint).where(audit_checkpoint.c.id == 1)
                              ).first()
    prev, expected_seq = (checkpoint.hash, checkpoint.seq + 1) if checkpoint else (GENESIS, 1)
    count, vouched = 0, checkpoint is None
    for row in conn.execute(select(audit_log).where(audit_log.c.seq >= expected_seq)
                            .order_by(audit_log.c.seq)):
        entry = {k: getattr(row, k) for k in
                 ("seq", "at", "actor", "action", "subject", "details", "prev_hash")}
        if row.seq != expected_seq:
            return Verification(False, count, f"entry {expected_seq} is missing", expected_seq,
                                f"第 {expected_seq} 条记录缺失")
        if row.prev_hash != prev:
            return Verification(False, count, f"entry {row.seq} does not follow entry "
                                f"{row.seq - 1} (deleted or reordered)", row.seq,
                                f"第 {row.seq} 条记录未接续第 {row.seq - 1} 条（被删除或调换顺序）")
        if _hash(entry) != row.hash:
            return Verification(False, count, f"entry {row.seq} was altered", row.seq,
                                f"第 {row.seq} 条记录被篡改")
        wrong = malformed(row.action, row.at, row.details) if well_formed else None
        if wrong is not None:
            return Verification(False, count, f"entry {row.seq} is malformed: {wrong[0]}",
                                row.seq, f"第 {row.seq} 条记录格式有误：{wrong[1]}")
        if checkpoint and row.action == AuditAction.AUDIT_PRUNED:
            pruned = details_of(row.details) or {}
            vouched = vouched or (pruned.get("through_seq") == checkpoint.seq
                                  and pruned.get("through_hash") == checkpoint.hash)
        prev, expected_seq, count = row.hash, expected_seq + 1, count + 1
    if not vouched:
        return Verification(False, count, f"the chain starts after entry {checkpoint.seq}, "
                            "but no pruning entry in the chain records that checkpoint",
                            checkpoint.seq, f"链条从第 {checkpoint.seq} 条之后开始，"
                            "但链中没有记录该检查点的清理条目")
    last = expected_seq - 1
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    if head is not None and (head.seq != last or head.hash != prev):
        return Verification(False, count, f"the log ends at entry {last} but the head "
                            f"records entry {head.seq} (entries were removed)", head.seq,
                            f"日志止于第 {last} 条，但链头记录为第 {head.seq} 条（有记录被删除）")
    return Verification(True, count)


@dataclass(frozen=True)
class Pruned:
    entries: int
    through_seq: int | None


def prune(conn: Connection, older_than: datetime, actor: str,
          retention_days: int = MIN_RETENTION_DAYS, now: datetime | None = None,
          carry: Callable[[Connection, int, str], object] | None = None) -> Pruned:
    """Remove the oldest entries recorded before ``older_than``, which must lie at least
    ``retention_days`` (never under ``MIN_RETENTION_DAYS``) in the past. The chain is
    verified first; the last removed entry becomes the checkpoint, and an
    ``audit.pruned`` entry records it — so verification still passes, and a forged
    checkpoint does not. ``carry(conn, through, actor)``, if given, is called before
    entries up to ``through`` go, to write again what must outlive them."""
    now = now or datetime.now(UTC)
    if retention_days < MIN_RETENTION_DAYS:
        raise InputError(f"audit entries are kept at least {MIN_RETENTION_DAYS} days "
                         f"(6 months); {retention_days} is too short")
    if older_than > now - timedelta(days=retention_days):
        raise InputError(f"only entries older than {retention_days} days may be removed")
    before = verify(conn)
    if not before.ok:
        raise InputError(f"the audit chain does not verify ({before.problem}); "
                         "nothing was removed")
    cutoff = stamp(older_than)
    # The oldest run of entries before the cutoff (entries are in time order by seq).
    first_kept = conn.execute(select(audit_log.c.seq, audit_log.c.action)
                              .where(audit_log.c.at >= cutoff)
                              .order_by(audit_log.c.seq).limit(1)).first()
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)
                        .with_for_update()).one()
    through = (first_kept.seq - 1) if first_kept is not None else head.seq
    if first_kept is not None and first_kept.action == AuditAction.AUDIT_CHECKPOINTED:
        # It checkpoints the last entry to go, and may have been signed after the cutoff;
        # verification holds every anchor of a removed entry to the cutoff
        # (sandbox.retention), so that entry stays too. (A checkpoint of an earlier entry
        # was signed before the next entry was written, which is older than the cutoff.)
        through -= 1
    start = conn.execute(select(audit_checkpoint.c.seq).where(audit_checkpoint.c.id == 1)
                         ).scalar() or 0
    if through <= start:
        return Pruned(0, None)
    if carry is not None:
        carry(conn, through, actor)
    last = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == through)).scalar()
    removed = conn.execute(delete(audit_log).where(audit_log.c.seq <= through)).rowcount
    values = {"seq": through, "hash": last, "at": stamp(now)}
    if conn.execute(update(audit_checkpoint).where(audit_checkpoint.c.id == 1)
                    .values(**values)).rowcount == 0:
        conn.execute(insert(audit_checkpoint).values(id=1, **values))
    append(conn, AuditAction.AUDIT_PRUNED, actor, "audit:log",
           {"through_seq": through, "through_hash": last, "entries": removed,
            "older_than": cutoff, "retention_days": retention_days})
    return Pruned(removed, through)
