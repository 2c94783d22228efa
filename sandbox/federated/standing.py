"""What the key service knows of each project's standing: the portal's signed statements
that its grant was suspended, resumed or revoked (``authorization.GrantState``).

The key service decrypts nothing under an authorization the portal has since revoked or
suspended — whatever grant state the gateway's request claims. It keeps, per project, the
latest suspension or resumption and the latest revocation: a revocation stops, for good,
every authorization of the project issued until then; a later resumption cannot undo it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Connection, MetaData, String, Table, Text, insert, select, update

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden
from sandbox.federated.authorization import Authorization, GrantState

metadata = MetaData()
standings = Table(
    "grant_standings", metadata,
    Column("project", String(200), primary_key=True),
    Column("status", String(16), nullable=False),        # of the latest suspend/resume
    Column("status_at", String(40), nullable=False),
    Column("status_reason", Text, nullable=False),
    Column("revoked_at", String(40), nullable=True),     # of the latest revocation
    Column("revoked_reason", Text, nullable=True),
)


def record(conn: Connection, statement: GrantState, actor: str) -> bool:
    """Keep ``statement`` (in the caller's transaction, audited) unless an equal or later
    one of its kind is kept already; whether it changed anything."""
    at = _utc(statement.at)
    row = conn.execute(select(standings).where(standings.c.project == statement.project)
                       .with_for_update()).mappings().first()
    if statement.status == "revoked":
        changes = {"revoked_at": at, "revoked_reason": statement.reason}
        newer = row is None or row["revoked_at"] is None or row["revoked_at"] < at
    else:
        changes = {"status": statement.status, "status_at": at,
                   "status_reason": statement.reason}
        newer = row is None or row["status_at"] < at
    if not newer:
        return False
    if row is None:
        conn.execute(insert(standings).values({
            "project": statement.project, "status": "active", "status_at": "",
            "status_reason": "", **changes}))
    else:
        conn.execute(update(standings).where(standings.c.project == statement.project)
                     .values(**changes))
    audit.append(conn, AuditAction.KEYS_GRANT_STATE, actor, f"project:{statement.project}",
                 {"status": statement.status, "at": at, "reason": statement.reason})
    return True


def check(conn: Connection, granted: Authorization) -> None:
    """Refuse ``granted`` if the portal has revoked or suspended its project since it was
    issued."""
    row = conn.execute(select(standings).where(standings.c.project == granted.project)
                       ).mappings().first()
    if row is None:
        return
    issued = _utc(granted.issued_at) if granted.issued_at else ""
    if row["revoked_at"] is not None and issued <= row["revoked_at"]:
        raise Forbidden(f"the portal revoked project {granted.project}'s grant "
                        f"({row['revoked_reason'] or '—'}); its authorization {granted.id} "
                        "decrypts nothing")
    if row["status"] == "suspended" and issued <= row["status_at"]:
        raise Forbidden(f"the portal suspended project {granted.project}'s grant "
                        f"({row['status_reason'] or '—'}); nothing is decrypted until it "
                        "resumes it")


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
