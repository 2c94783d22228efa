"""Consent at query time: a withdrawal is a row the next question reads — on a served
gateway, with no view rebuilt — and a controller's bulk intake of 10,000 in one call."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import delete, func, select

from sandbox import audit
from sandbox.client import Gateway, GatewayError
from sandbox.db import make_engine
from sandbox.gateway import consent as gateway_consent
from sandbox.gateway.store import withdrawals

PURPOSE = "ai_training"


def _view_files(gateway) -> dict[str, int]:
    """Every file of the gateway's bounded views (in its own state, or the views directory
    its engine shares), with its modification time."""
    shared = [gateway.options[i + 1] for i, o in enumerate(gateway.options)
              if o == "--views-dir"]
    root = Path(shared[0]) if shared else gateway.state_dir / "views"
    views = {str(p): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    assert views, f"no view under {root}"
    return views


def test_a_bulk_intake_applies_to_the_next_question_without_a_rebuild(fresh_gateway,
                                                                     datasets_dir):
    fresh_gateway.start()
    restricted = datasets_dir / "emr-visits" / "restricted"
    consent = pl.read_parquet(restricted / "consent.parquet").filter(
        pl.col(PURPOSE) & pl.col("withdrawn_at").is_null())
    records = pl.read_parquet(restricted / "records.parquet")
    chosen = consent["pseudonym"].head(2000).to_list()
    rows = records.filter(pl.col("pseudonym").is_in(chosen)).group_by("pseudonym").len()
    expected_drop = int(rows["len"].clip(upper_bound=20).sum())
    # the rest of the 10,000 are patients this dataset does not hold (as a regional list has)
    batch = chosen + [secrets.token_hex(32) for _ in range(10_000 - len(chosen))]

    client = Gateway(fresh_gateway.url, fresh_gateway.grant(purpose=PURPOSE)["token"])
    other = Gateway(fresh_gateway.url, fresh_gateway.grant()["token"])
    before = (client.count("emr-visits", epsilon=5.0).value,
              other.count("emr-visits", epsilon=5.0).value)
    views = _view_files(fresh_gateway)
    response = fresh_gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [PURPOSE]} for p in batch]})
    assert response.status_code == 201, response.text
    taken = response.json()
    assert taken["withdrawals"] == taken["recorded"] == 10_000
    assert taken["holding"] == {"emr-visits": len(chosen)}

    after = client.count("emr-visits", epsilon=4.9)
    assert abs((before[0] - after.value) - expected_drop) < 60 and expected_drop > 2000
    assert abs(before[1] - other.count("emr-visits", epsilon=4.9).value) < 60
    assert after.receipt["payload"]["withdrawals_version"] == taken["version"]
    assert _view_files(fresh_gateway) == views  # nothing rebuilt
    # the same intake again records nothing new and changes no answer's version
    again = fresh_gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [PURPOSE]} for p in batch[:10]]})
    assert again.status_code == 201 and again.json()["recorded"] == 0
    assert again.json()["version"] == taken["version"]


@pytest.mark.parametrize("bad, reason", [
    ({"pseudonym": "nope"}, "pseudonym"),
    ({"pseudonym": "a" * 64, "purposes": ["marketing"]}, "unknown purposes"),
    ({"pseudonym": "a" * 64, "purposes": []}, "unknown purposes"),
    ({"pseudonym": "a" * 64, "note": "x"}, "extra"),
])
def test_a_bad_bulk_intake_is_refused_whole(gateway, bad, reason):
    first = secrets.token_hex(32)
    response = gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": first, "purposes": [PURPOSE]}, bad]})
    assert response.status_code == 422 and reason in response.json()["reason"].lower()
    # nothing of the batch was recorded: its valid first withdrawal is still new
    single = gateway.admin("POST", "/v1/admin/consent-withdrawals",
                           {"pseudonym": first, "purposes": [PURPOSE]})
    assert single.status_code == 201 and single.json()["recorded"] == [PURPOSE]


def test_an_empty_bulk_intake_is_refused(gateway):
    response = gateway.admin("POST", "/v1/admin/consent-withdrawals/batch",
                             {"withdrawals": []})
    assert response.status_code == 422 and "withdrawals" in response.json()["reason"]


def test_deleted_withdrawals_stop_the_answers_and_come_back_from_the_audit_chain(
        fresh_gateway, datasets_dir):
    """Adversary: the gateway database's administrator (not its state directory), deleting
    withdrawal rows to put patients back into the answers."""
    fresh_gateway.start()
    consent = pl.read_parquet(datasets_dir / "emr-visits" / "restricted" / "consent.parquet")
    chosen = consent.filter(pl.col(PURPOSE) & pl.col("withdrawn_at").is_null())[
        "pseudonym"].head(300).to_list()
    client = Gateway(fresh_gateway.url, fresh_gateway.grant(purpose=PURPOSE)["token"])
    before = client.count("emr-visits", epsilon=2.0).value
    assert fresh_gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [PURPOSE]} for p in chosen]}
    ).status_code == 201
    withdrawn = client.count("emr-visits", epsilon=1.99).value
    assert before - withdrawn > 1000

    db = make_engine(fresh_gateway.database_url)
    with db.begin() as conn:  # the administrator's deletion, straight in the database
        gone = conn.execute(delete(withdrawals).where(
            withdrawals.c.pseudonym.in_(chosen[:150]))).rowcount
    assert gone == 150
    with pytest.raises(GatewayError) as refused:
        client.count("emr-visits", epsilon=1.98)
    assert refused.value.status == 503 and "are missing from" in refused.value.reason

    fresh_gateway.stop()  # a restart writes back what the audit chain records
    fresh_gateway.start()
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 300
        restored = conn.execute(select(audit.audit_log.c.details).where(
            audit.audit_log.c.action == "consent.restored")).scalars().all()
    db.dispose()
    assert [json.loads(d)["restored"] for d in restored] == [150]
    again = client.count("emr-visits", epsilon=1.97).value
    assert abs(again - withdrawn) < 80  # the 150 patients stay out of the answers


def test_withdrawals_outlive_the_pruning_of_their_audit_entries(fresh_gateway, datasets_dir):
    """Adversary: the gateway database's administrator, once retention pruning has removed
    the withdrawals' own audit entries. Pruning writes them again at the chain's end
    (``consent.carried``) before they go, so a restart still writes deleted rows back."""
    fresh_gateway.start()
    consent = pl.read_parquet(datasets_dir / "emr-visits" / "restricted" / "consent.parquet")
    chosen = consent.filter(pl.col(PURPOSE) & pl.col("withdrawn_at").is_null())[
        "pseudonym"].slice(300, 200).to_list()
    client = Gateway(fresh_gateway.url, fresh_gateway.grant(purpose=PURPOSE)["token"])
    assert fresh_gateway.admin("POST", "/v1/admin/consent-withdrawals/batch", {
        "withdrawals": [{"pseudonym": p, "purposes": [PURPOSE]} for p in chosen]}
    ).status_code == 201
    withdrawn = client.count("emr-visits", epsilon=2.0).value
    fresh_gateway.stop()

    db = make_engine(fresh_gateway.database_url)
    later = datetime.now(UTC) + timedelta(days=400)  # every entry past the retention policy
    with db.begin() as conn:
        pruned = audit.prune(conn, later - timedelta(days=audit.MIN_RETENTION_DAYS),
                             "controller", now=later, carry=gateway_consent.carry)
    with db.begin() as conn:
        assert pruned.entries > 0 and conn.execute(select(func.count()).select_from(
            audit.audit_log).where(audit.audit_log.c.action == "consent.withdrawn")
        ).scalar() == 0
        assert conn.execute(delete(withdrawals).where(
            withdrawals.c.pseudonym.in_(chosen))).rowcount == 200

    fresh_gateway.start()  # the restart writes back what the carried entries record
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(withdrawals)).scalar() == 200
    db.dispose()
    again = client.count("emr-visits", epsilon=1.99).value
    assert abs(again - withdrawn) < 80  # the 200 patients stay out of the answers


def test_an_intake_recorded_while_a_question_reads_the_set_raises_no_false_alarm(tmp_path):
    """Two threads of one gateway: a question reads the set; before it checks the set
    against the withdrawals the gateway expects, an intake commits and is expected. The
    question reads again and answers — no 503 — and the next one holds the new row (found
    by two replicas taking intakes at once under load)."""
    from sandbox.db import make_engine
    from sandbox.gateway.store import create_tables
    from sandbox.queries.withdrawals import WithdrawalLog

    db = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    create_tables(db)
    log = WithdrawalLog(db, withdrawals)
    patient = "ab" * 32
    log.current()
    stale = log._read

    def read_then_intake():  # the read, then the intake, before the check
        seen = stale()
        if not log._expected.by_purpose:
            with db.begin() as conn:
                conn.execute(withdrawals.insert().values(
                    pseudonym=patient, purpose=PURPOSE, recorded_at="now", recorded_by="t"))
            log.expect([(patient, PURPOSE)])
        return seen

    log._read = read_then_intake
    assert patient in log.current().excluded(PURPOSE)
    log._read = stale
    # a row that really went missing still stops every answer
    with db.begin() as conn:
        conn.execute(delete(withdrawals))
    with pytest.raises(Exception, match="missing from the withdrawals table"):
        log.current()
    db.dispose()
