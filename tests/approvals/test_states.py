"""One table holds every state and transition; illegal moves raise with a reason."""

from __future__ import annotations

import pytest

from approvals import states
from approvals.errors import IllegalTransition, NotPermitted
from approvals.states import TRANSITIONS, Action, Role, State


def test_every_state_is_in_the_table_and_reachable_from_draft():
    named = {s for (s, _), (t, _) in TRANSITIONS.items()} | {t for (t, _) in TRANSITIONS.values()}
    assert named == set(State)
    reached, frontier = {State.DRAFT}, [State.DRAFT]
    while frontier:
        here = frontier.pop()
        for (source, _), (target, _) in TRANSITIONS.items():
            if source == here and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)


def test_every_action_is_used_and_has_actors():
    assert {a for (_, a) in TRANSITIONS} == set(Action)
    assert all(roles for _, roles in TRANSITIONS.values())


def test_terminal_states_have_no_way_out():
    for state in states.TERMINAL:
        assert not [a for (s, a) in TRANSITIONS if s == state]


def test_the_issue_path_draft_to_closed():
    path = [(Action.SUBMIT, Role.RESEARCHER), (Action.START_REVIEW, Role.CHAIR),
            (Action.REQUEST_REVISION, Role.CHAIR), (Action.RESUBMIT, Role.RESEARCHER),
            (Action.START_REVIEW, Role.CHAIR), (Action.APPROVE, Role.CHAIR),
            (Action.ACTIVATE, Role.RESEARCHER), (Action.BEGIN_CLOSING, Role.SYSTEM),
            (Action.CLOSE, Role.CONTROLLER)]
    state = State.DRAFT
    for action, role in path:
        state = states.check(state, action, role)
    assert state == State.CLOSED


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(Action))
def test_each_state_action_pair_is_allowed_only_if_in_the_table(state, action):
    if (state, action) in TRANSITIONS:
        role = next(iter(TRANSITIONS[(state, action)][1]))
        assert states.check(state, action, role) == TRANSITIONS[(state, action)][0]
        assert states.can(state, action, role)
    else:
        with pytest.raises(IllegalTransition):
            states.check(state, action, Role.ADMIN)
        assert not any(states.can(state, action, r) for r in Role)


def test_the_wrong_role_is_refused_with_a_reason():
    with pytest.raises(NotPermitted, match="a researcher may not approve"):
        states.check(State.UNDER_REVIEW, Action.APPROVE, Role.RESEARCHER)
    with pytest.raises(IllegalTransition, match="cannot approve an application that is draft"):
        states.check(State.DRAFT, Action.APPROVE, Role.CHAIR)
    assert states.actions(State.UNDER_REVIEW, Role.CHAIR) == [
        Action.REQUEST_REVISION, Action.APPROVE, Action.REJECT]
