"""The application workflow: every state, every allowed transition, and who may take it —
one table, so an illegal move is a lookup miss, never a forgotten ``if``."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from approvals.errors import IllegalTransition, NotPermitted


class State(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    INELIGIBLE = "ineligible"
    UNDER_REVIEW = "under_review"
    REVISION_REQUESTED = "revision_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSING = "closing"
    CLOSED = "closed"


class Action(StrEnum):
    SUBMIT = "submit"
    MARK_INELIGIBLE = "mark_ineligible"
    REOPEN = "reopen"
    START_REVIEW = "start_review"
    REQUEST_REVISION = "request_revision"
    RESUBMIT = "resubmit"
    APPROVE = "approve"
    REJECT = "reject"
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"
    BEGIN_CLOSING = "begin_closing"
    CLOSE = "close"
    ADD_EXPERTS = "add_experts"


class Role(StrEnum):
    RESEARCHER = "researcher"
    EXPERT = "expert"
    CHAIR = "chair"
    CONTROLLER = "controller"
    ADMIN = "admin"
    SYSTEM = "system"


# (state, action) → (next state, roles that may take the action)
TRANSITIONS: dict[tuple[State, Action], tuple[State, frozenset[Role]]] = {
    (State.DRAFT, Action.SUBMIT): (State.SUBMITTED, frozenset({Role.RESEARCHER})),
    (State.SUBMITTED, Action.MARK_INELIGIBLE): (State.INELIGIBLE,
                                                frozenset({Role.CHAIR, Role.SYSTEM})),
    (State.INELIGIBLE, Action.REOPEN): (State.DRAFT, frozenset({Role.RESEARCHER})),
    (State.SUBMITTED, Action.START_REVIEW): (State.UNDER_REVIEW, frozenset({Role.CHAIR})),
    (State.UNDER_REVIEW, Action.REQUEST_REVISION): (State.REVISION_REQUESTED,
                                                    frozenset({Role.CHAIR})),
    (State.REVISION_REQUESTED, Action.RESUBMIT): (State.SUBMITTED,
                                                  frozenset({Role.RESEARCHER})),
    (State.UNDER_REVIEW, Action.APPROVE): (State.APPROVED, frozenset({Role.CHAIR})),
    (State.UNDER_REVIEW, Action.REJECT): (State.REJECTED, frozenset({Role.CHAIR})),
    (State.APPROVED, Action.ACTIVATE): (State.ACTIVE, frozenset({Role.RESEARCHER})),
    (State.ACTIVE, Action.SUSPEND): (State.SUSPENDED,
                                     frozenset({Role.CONTROLLER, Role.SYSTEM})),
    (State.SUSPENDED, Action.RESUME): (State.ACTIVE, frozenset({Role.CONTROLLER})),
    (State.ACTIVE, Action.REVOKE): (State.CLOSING, frozenset({Role.CONTROLLER})),
    (State.SUSPENDED, Action.REVOKE): (State.CLOSING, frozenset({Role.CONTROLLER})),
    (State.ACTIVE, Action.BEGIN_CLOSING): (State.CLOSING,
                                           frozenset({Role.CONTROLLER, Role.SYSTEM})),
    (State.SUSPENDED, Action.BEGIN_CLOSING): (State.CLOSING,
                                              frozenset({Role.CONTROLLER, Role.SYSTEM})),
    (State.CLOSING, Action.CLOSE): (State.CLOSED, frozenset({Role.CONTROLLER})),
    # Replacing experts whose scores no longer count (a conflict arose after assignment).
    (State.UNDER_REVIEW, Action.ADD_EXPERTS): (State.UNDER_REVIEW, frozenset({Role.CHAIR})),
}

TERMINAL = frozenset({State.REJECTED, State.CLOSED})


def can(state: State, action: Action, role: Role) -> bool:
    """For templates: whether ``role`` may take ``action`` now."""
    move = TRANSITIONS.get((state, action))
    return move is not None and role in move[1]


def check(state: State, action: Action, role: Role) -> State:
    """The state ``action`` leads to; raises with a readable reason otherwise."""
    return move(TRANSITIONS, State(state), Action(action), role, "an application")


StateT = TypeVar("StateT", bound=StrEnum)
ActionT = TypeVar("ActionT", bound=StrEnum)


def move(transitions: dict[tuple[StateT, ActionT], tuple[StateT, frozenset[Role]]],
         state: StateT, action: ActionT, role: Role, thing: str) -> StateT:
    """The state a workflow's table sends ``state`` to under ``action`` taken by ``role``;
    an illegal move or a role that may not take it raises with a readable reason."""
    found = transitions.get((state, action))
    if found is None:
        raise IllegalTransition(f"cannot {action.replace('_', ' ')} {thing} that is "
                                f"{state.replace('_', ' ')}")
    if role not in found[1]:
        raise NotPermitted(f"a {role} may not {action.replace('_', ' ')} {thing}")
    return found[0]


def actions(state: State, role: Role) -> list[Action]:
    """What ``role`` may do in ``state`` (for buttons and API hints)."""
    return [a for (s, a), (_, roles) in TRANSITIONS.items() if s == state and role in roles]
