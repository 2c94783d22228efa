"""One table holds every state and transition; illegal moves raise with a reason."""

from __future__ import annotations

import pytest

from approvals import destruction, exports, institutions, states
from approvals.errors import IllegalTransition, NotPermitted
from approvals.states import TRANSITIONS, Action, Role, State

# Every workflow's table: (transitions, states, actions, terminal states, first state)
TABLES = {
    "applications": (TRANSITIONS, State, Action, states.TERMINAL, State.DRAFT),
    "exports": (exports.TRANSITIONS, exports.ExportState, exports.ExportAction,
                exports.TERMINAL, exports.ExportState.DRAFT),
    "destruction": (destruction.TRANSITIONS, destruction.TaskState, destruction.TaskAction,
                    destruction.TERMINAL, destruction.TaskState.OPEN),
    "institution claims": (institutions.TRANSITIONS, institutions.ClaimState,
                           institutions.ClaimAction, institutions.TERMINAL,
                           institutions.ClaimState.PENDING),
}


@pytest.mark.parametrize("table", TABLES)
def test_every_state_is_in_the_table_and_reachable_from_draft(table):
    transitions, all_states, _, _, start = TABLES[table]
    named = {s for (s, _), (t, _) in transitions.items()} | {t for (t, _) in
                                                              transitions.values()}
    assert named == set(all_states)
    reached, frontier = {start}, [start]
    while frontier:
        here = frontier.pop()
        for (source, _), (target, _) in transitions.items():
            if source == here and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(all_states)


@pytest.mark.parametrize("table", TABLES)
def test_every_action_is_used_and_has_actors(table):
    transitions, _, actions, _, _ = TABLES[table]
    assert {a for (_, a) in transitions} == set(actions)
    assert all(roles for _, roles in transitions.values())


@pytest.mark.parametrize("table", TABLES)
def test_terminal_states_have_no_way_out(table):
    transitions, _, _, terminal, _ = TABLES[table]
    for state in terminal:
        assert not [a for (s, a) in transitions if s == state]


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
        Action.REQUEST_REVISION, Action.APPROVE, Action.REJECT, Action.ADD_EXPERTS]
