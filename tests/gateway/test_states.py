"""The gateway's two workflows — a grant's lifecycle and a release's — are each one table;
every move outside it is refused, and the ledger's rows move only along its table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from sandbox.db import make_engine
from sandbox.errors import BudgetExhausted, Conflict, PolicyRefusal
from sandbox.gateway import grants as grant_states
from sandbox.gateway import ledger as release_states
from sandbox.gateway.engine import Release
from sandbox.gateway.grants import GrantRequest, Grants, GrantState
from sandbox.gateway.ledger import Ledger, ReleaseStatus
from sandbox.gateway.store import create_tables, releases
from sandbox.queries.spec import QuerySpec
from sandbox.receipts import Signer

# (table, every state, its first state, states with no way out)
TABLES = {
    "grants": (grant_states.TRANSITIONS, GrantState, GrantState.ACTIVE, {GrantState.REVOKED}),
    "releases": (release_states.TRANSITIONS, ReleaseStatus, ReleaseStatus.CHARGED,
                 {ReleaseStatus.RELEASED}),
}
MOVES = {"grants": grant_states.next_state, "releases": release_states.next_status}


@pytest.mark.parametrize("table", TABLES)
def test_every_state_is_named_and_reachable_from_the_first(table):
    transitions, states, start, _ = TABLES[table]
    edges = [(a, b) for moves, _ in transitions.values() for a, b in moves.items()]
    assert {s for edge in edges for s in edge} == set(states)
    reached, frontier = {start}, [start]
    while frontier:
        here = frontier.pop()
        for a, b in edges:
            if a == here and b not in reached:
                reached.add(b)
                frontier.append(b)
    assert reached == set(states)


@pytest.mark.parametrize("table", TABLES)
def test_final_states_lead_nowhere_else(table):
    transitions, _, _, final = TABLES[table]
    for moves, _ in transitions.values():
        for a, b in moves.items():
            assert a not in final or b == a, (a, b)


@pytest.mark.parametrize("table", TABLES)
def test_each_state_and_move_is_allowed_only_if_in_the_table(table):
    transitions, states, _, _ = TABLES[table]
    refusal = PolicyRefusal if table == "grants" else Conflict
    for move, (moves, event) in transitions.items():
        for state in states:
            if state in moves:
                assert MOVES[table](move, state) == (moves[state], event)
            else:
                with pytest.raises(refusal):
                    MOVES[table](move, state)


class Flaky:
    """A question whose computation fails until told otherwise (as an engine might)."""

    def __init__(self, spec: QuerySpec) -> None:
        self.spec, self.fail, self.runs, self.begun = spec, True, 0, 0

    def resolve(self):
        return type("Served", (), {"id": "d", "version": "v1"})()

    def begin(self) -> None:
        self.begun += 1

    def abandon(self) -> None:
        pass

    def run(self, claim: dict) -> Release:
        self.runs += 1
        if self.fail:
            raise RuntimeError("the engine went away")
        return Release([{"count": 42.0}], 0.5, 0.0, ["count"])


def _ledger_with_grant(tmp_path):
    """A ledger over a fresh database, and a grant of ε = 1 on it."""
    db = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    create_tables(db)
    grants = Grants(db)
    grant, _ = grants.create("test", GrantRequest(
        project="p", datasets=["d"], fields=["age"], purpose="medical_research", epsilon=1.0,
        expires_at=datetime.now(UTC) + timedelta(days=1)), None)
    ledger = Ledger(db, Signer(tmp_path / "key.pem"))
    return db, grants, grant, ledger


def test_a_failed_release_keeps_its_charge_and_is_released_under_it(tmp_path):
    db, grants, grant, ledger = _ledger_with_grant(tmp_path)
    question = Flaky(QuerySpec(dataset="d", kind="count", epsilon=0.5))

    def statuses() -> list[str]:
        with db.connect() as conn:
            return [r.status for r in conn.execute(select(releases.c.status))]

    with pytest.raises(RuntimeError):
        ledger.answer(grant, question)
    assert statuses() == ["failed"] and grants.get(grant.id).epsilon_spent == 0.5
    question.fail = False
    first = ledger.answer(grant, question)
    assert statuses() == ["released"] and grants.get(grant.id).epsilon_spent == 0.5
    again = ledger.answer(grant, question)
    assert again["repeated"] and again["result"] == first["result"] and question.runs == 2
    assert question.begun == 2  # a released question is not read again
    assert json.loads(json.dumps(first["receipt"]))["payload"]["epsilon"] == 0.5


def test_a_question_the_grant_cannot_pay_for_reads_no_rows(tmp_path):
    """Rows are read while the charge is made, but not for a grant that cannot pay: a
    spent budget cannot be used to keep the engine busy; and no noise is drawn."""
    _db, grants, grant, ledger = _ledger_with_grant(tmp_path)
    question = Flaky(QuerySpec(dataset="d", kind="count", epsilon=0.8))
    question.fail = False
    ledger.answer(grant, question)
    assert (question.begun, question.runs) == (1, 1)
    dearer = Flaky(QuerySpec(dataset="d", kind="count", epsilon=0.5))
    with pytest.raises(BudgetExhausted):
        ledger.answer(grants.get(grant.id), dearer)
    assert (dearer.begun, dearer.runs) == (0, 0)
