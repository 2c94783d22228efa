"""Withdrawals against the gateway database's administrator, beyond the audit chain: the
gateway keeps its own copy of every withdrawal it took in (its state directory, outside
the database) and expects the withdrawals table to hold everything recorded outside it.

Adversary: someone with write access to the gateway's database — not to its state
directory —, who prunes the audit chain by hand without carrying the withdrawals, deletes
rows again right after a restart wrote them back, or has the database silently drop the
rows it is given (a trigger). Guarantee: each answer leaves the withdrawn patients out or
is refused (503)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text

from sandbox import audit
from sandbox.db import make_engine
from sandbox.gateway.store import withdrawals
from tests.attacks.test_data_plane_round4 import (
    MR,
    Asker,
    _excludes_or_refuses,
    _heavy_patients,
    _start,
    _truth,
    _view,
)


@pytest.fixture
def served(datasets_dir, tmp_path):
    """A gateway of its own on SQLite, its database opened as the administrator, its view."""
    gateway = _start(datasets_dir, tmp_path / "gw")
    db = make_engine(gateway.database_url)
    try:
        yield gateway, db, _view(gateway)
    finally:
        db.dispose()
        gateway.stop()


def _withdraw(gateway, patients: list[str]):
    return gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [MR]} for p in patients]})


def test_a_pruning_by_hand_without_carrying_does_not_lose_withdrawals(served):
    gateway, db, view = served
    patients = _heavy_patients(view, 40)
    assert _withdraw(gateway, patients).status_code == 201
    gateway.stop()
    later = datetime.now(UTC) + timedelta(days=400)
    with db.begin() as conn:  # the administrator's pruning: no consent.carried entries
        audit.prune(conn, later - timedelta(days=audit.MIN_RETENTION_DAYS), "dba",
                    now=later)
        assert conn.execute(select(func.count()).select_from(audit.audit_log).where(
            audit.audit_log.c.action.like("consent.%"))).scalar() == 0
        conn.execute(delete(withdrawals))
    gateway.start()  # written back from the gateway's own copy
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 40
    asker = Asker(gateway, gateway.grant(purpose=MR, epsilon=50.0)["token"])
    answer = asker.ask()
    assert answer.status_code == 200, answer.text
    _excludes_or_refuses(answer, _truth(view, set(patients)))


def test_rows_deleted_again_after_a_restart_stop_the_answers(served):
    gateway, db, view = served
    patients = _heavy_patients(view, 30)
    assert _withdraw(gateway, patients).status_code == 201
    gateway.stop()
    with db.begin() as conn:
        conn.execute(delete(withdrawals))
    gateway.start()  # writes them back …
    with db.begin() as conn:  # … and the administrator deletes them again at once
        assert conn.execute(delete(withdrawals)).rowcount == 30
    asker = Asker(gateway, gateway.grant(purpose=MR, epsilon=50.0)["token"])
    refused = asker.ask()
    assert refused.status_code == 503, refused.text
    assert "missing from the withdrawals table" in refused.json()["reason"]


def test_a_database_that_drops_the_rows_it_is_given_stops_the_answers(served):
    gateway, db, view = served
    victim, other = _heavy_patients(view, 2)
    with db.begin() as conn:  # a trigger that silently keeps the victim's rows out
        conn.execute(text(
            "CREATE TRIGGER keep_out BEFORE INSERT ON withdrawals "
            f"WHEN NEW.pseudonym = '{victim}' BEGIN SELECT RAISE(IGNORE); END"))
    asker = Asker(gateway, gateway.grant(purpose=MR, epsilon=50.0)["token"])
    taken = _withdraw(gateway, [victim])
    assert taken.status_code == 503, taken.text  # the intake itself says so
    refused = asker.ask()
    assert refused.status_code == 503, refused.text
    gateway.stop()
    gateway.start()  # the write-back is dropped too: still nothing is answered
    assert asker.ask().status_code == 503
    with db.begin() as conn:
        conn.execute(text("DROP TRIGGER keep_out"))
    gateway.stop()
    gateway.start()
    assert _withdraw(gateway, [other]).status_code == 201
    answer = asker.ask()
    assert answer.status_code == 200, answer.text
    _excludes_or_refuses(answer, _truth(view, {victim, other}))
