"""The portal's grant state statements on their way to the key service.

The portal signs one with every suspension, resumption and revocation; the gateway keeps it
with the change (``grant_statements``) and relays it to the key service at once and again
every few seconds until the key service has taken it — so a key service that was down when
the change was made learns it soon after it is back. Each is tried on its own: the key
service keeps the latest of each kind per project whatever order they arrive in, so one it
refuses holds up no other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from sandbox.gateway.store import grant_statements


def keep(conn: Connection, project: str, status: str, statement: dict) -> str:
    """Keep ``statement`` (in the caller's transaction, with the change); its id."""
    statement_id = uuid.uuid4().hex
    conn.execute(insert(grant_statements).values(
        id=statement_id, project=project, status=status, document=json.dumps(statement),
        received_at=_now(), told_at=None))
    return statement_id


def relay(db: Engine, tell: Callable[[dict], bool]) -> list[str]:
    """``tell`` the key service each statement it has not taken yet; the ids of those it
    still has not."""
    with db.connect() as conn:
        waiting = conn.execute(select(grant_statements.c.id, grant_statements.c.document)
                               .where(grant_statements.c.told_at.is_(None))
                               .order_by(grant_statements.c.received_at)).all()
    left = []
    for row in waiting:
        if not tell(json.loads(row.document)):
            left.append(row.id)
            continue
        with db.begin() as conn:
            conn.execute(update(grant_statements).where(grant_statements.c.id == row.id)
                         .values(told_at=_now()))
    return left


def listed(db: Engine) -> list[dict]:
    """Every statement kept, and when the key service took it (None: not yet)."""
    with db.connect() as conn:
        rows = conn.execute(select(grant_statements.c.project, grant_statements.c.status,
                                   grant_statements.c.received_at, grant_statements.c.told_at)
                            .order_by(grant_statements.c.received_at)).mappings()
        return [dict(r) for r in rows]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
