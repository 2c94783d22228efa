"""Grant lifecycle: one table of states and transitions, and the check that a grant may
be used right now. A grant not usable is refused with its reason (403)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, PolicyRefusal


class GrantState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


# action → {state it may leave: state it enters}, with the audit event it writes.
TRANSITIONS: dict[str, tuple[dict[GrantState, GrantState], AuditAction]] = {
    "suspend": ({GrantState.ACTIVE: GrantState.SUSPENDED}, AuditAction.GRANT_SUSPENDED),
    "resume": ({GrantState.SUSPENDED: GrantState.ACTIVE}, AuditAction.GRANT_RESUMED),
    "revoke": ({GrantState.ACTIVE: GrantState.REVOKED,
                GrantState.SUSPENDED: GrantState.REVOKED}, AuditAction.GRANT_REVOKED),
}


def next_state(action: str, current: str) -> tuple[GrantState, AuditAction]:
    """The state ``action`` leads to from ``current``; raises if not allowed."""
    moves, event = TRANSITIONS[action]
    try:
        return moves[GrantState(current)], event
    except KeyError:
        raise PolicyRefusal(f"cannot {action} a grant that is {current}") from None


def check_usable(grant: dict, now: datetime | None = None) -> None:
    """Raise Forbidden with the reason when the grant cannot be used for queries."""
    now = now or datetime.now(UTC)
    status = grant["status"]
    if status == GrantState.SUSPENDED:
        raise Forbidden(f"grant {grant['id']} is suspended: {grant['status_reason'] or '—'}")
    if status == GrantState.REVOKED:
        raise Forbidden(f"grant {grant['id']} is revoked: {grant['status_reason'] or '—'}")
    if datetime.fromisoformat(grant["expires_at"]) <= now:
        raise Forbidden(f"grant {grant['id']} expired on {grant['expires_at']}")
