"""Destruction at the end of a project — one state table — and the overdue rule.

When a project closes (term end or revocation) its researcher gets a destruction task: fill
in the certificate (which exported copies existed, where, how and when they were destroyed,
signature) and upload it signed. A controller verifies it, or rejects it with reasons and
the task is open again. A task still open ``overdue_days`` after it was due becomes a
blacklist proposal, which a controller confirms (or not).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from approvals.errors import InvalidDecision
from approvals.states import Role, move

DEFAULT_DUE_DAYS = 30


class TaskState(StrEnum):
    OPEN = "open"
    SUBMITTED = "submitted"
    VERIFIED = "verified"


class TaskAction(StrEnum):
    SUBMIT = "submit"
    VERIFY = "verify"
    REJECT = "reject"


TRANSITIONS: dict[tuple[TaskState, TaskAction], tuple[TaskState, frozenset[Role]]] = {
    (TaskState.OPEN, TaskAction.SUBMIT): (TaskState.SUBMITTED, frozenset({Role.RESEARCHER})),
    (TaskState.SUBMITTED, TaskAction.VERIFY): (TaskState.VERIFIED,
                                               frozenset({Role.CONTROLLER})),
    (TaskState.SUBMITTED, TaskAction.REJECT): (TaskState.OPEN, frozenset({Role.CONTROLLER})),
}
TERMINAL = frozenset({TaskState.VERIFIED})


def check(state: TaskState, action: TaskAction, role: Role, reasons: str = "") -> TaskState:
    """The state ``action`` leads to; a rejection needs its reasons."""
    target = move(TRANSITIONS, TaskState(state), TaskAction(action), role,
                  "a destruction task")
    if action == TaskAction.REJECT and not reasons.strip():
        raise InvalidDecision("say why the certificate is rejected and what is missing")
    return target


def due(closed_at: datetime, due_days: int = DEFAULT_DUE_DAYS) -> datetime:
    """When the certificate is due: ``due_days`` after the project closed."""
    return closed_at + timedelta(days=due_days)


def overdue(state: TaskState, due_at: datetime, now: datetime) -> bool:
    """An open task past its due date: a blacklist proposal for the controller."""
    return TaskState(state) == TaskState.OPEN and now > due_at
