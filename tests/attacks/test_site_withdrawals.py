"""A withdrawal a federated site missed still applies to the next federated question.
Adversary: no one — a site's network outage while a withdrawal is taken. The gateway
records per site how far it has told it the withdrawals (``site_deliveries``) and tells a
site what it lacks before each federated question; while a site cannot be told, the
question is not asked (503), its charge is kept, and the same question sent once the site
is back is released under that charge — without the patient's rows."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest
import uvicorn
from sqlalchemy import delete, select

from sandbox.client import Gateway, GatewayError
from sandbox.gateway import consent
from sandbox.gateway.store import site_deliveries, withdrawals
from tests.federated.conftest import DATASET, grant


def _serve_again(served) -> None:
    """The site's service back on its port (the same process state: an outage, not a
    restart)."""
    config = served.server.config
    served.server = uvicorn.Server(uvicorn.Config(config.app, host="127.0.0.1",
                                                  port=served.port, log_level="warning"))
    served.thread = threading.Thread(target=served.server.run, daemon=True)
    served.thread.start()
    deadline = time.monotonic() + 30
    while not served.server.started and time.monotonic() < deadline:
        time.sleep(0.05)


def _site(cluster, exact):
    """The first site of the exact federation: its name, its served app, its rows."""
    name = sorted(cluster.sites)[0]
    served = next(p for key, p in cluster.processes.items()
                  if key.startswith(f"served-{name}-")
                  and getattr(p, "url", None) in exact.service.federation.datasets[
                      DATASET].sites.values())
    records = pl.read_parquet(cluster.parts / name / "restricted" / "records.parquet")
    ranked = records.group_by("pseudonym").len().sort(["len", "pseudonym"],
                                                      descending=[True, False])
    return name, served, ranked["pseudonym"]


def _withdraw_while_down(exact, served, name: str, patient: str) -> None:
    served.close()  # the site is out of reach while the withdrawal is taken
    answer = exact.admin("POST", "/v1/admin/consent-withdrawals", {"pseudonym": patient})
    assert answer.status_code == 201 and answer.json()["sites_missed"] == [name]


def _missed(cluster, exact, which: int):
    """A fresh grant's first federated answer, then the ``which``-th heaviest patient of the
    first site withdrawn while that site is down (and back up): (site, client, answer,
    patient)."""
    name, served, patients = _site(cluster, exact)
    gw = Gateway(exact.url, grant(exact, fields=["length_of_stay"])["token"])
    before = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.1)
    try:
        _withdraw_while_down(exact, served, name, patients[which])
    finally:
        _serve_again(served)
    return name, gw, before, patients[which]


def test_a_withdrawal_a_site_missed_applies_to_the_next_federated_question(cluster, exact):
    name, gw, before, _ = _missed(cluster, exact, 0)
    after = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert before.df["count"][0] - after.df["count"][0] >= 1
    version = exact.service.withdrawals.current().version
    assert after.receipt["payload"]["withdrawals_version"] == version
    with exact.service.db.connect() as conn:
        told = conn.execute(select(site_deliveries.c.version).where(
            site_deliveries.c.site == name)).scalar_one()
    assert told == version


def test_a_question_waits_for_a_site_that_cannot_be_told_and_keeps_its_charge(cluster,
                                                                             exact):
    name, served, patients = _site(cluster, exact)
    gw = Gateway(exact.url, grant(exact, fields=["length_of_stay"])["token"])
    before = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.1)
    try:
        _withdraw_while_down(exact, served, name, patients[2])
        with pytest.raises(GatewayError) as refused:
            gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
        assert refused.value.status == 503
        assert f"site(s) {name} could not be told of consent withdrawals" in \
            refused.value.reason
        assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.3)  # the charge is kept
        assert [r["status"] for r in gw.releases()] == ["released", "failed"]
    finally:
        _serve_again(served)
    after = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.3)  # under the same charge
    assert before.df["count"][0] - after.df["count"][0] >= 1


def test_a_withdrawal_deleted_before_a_site_was_told_stops_federated_questions(cluster,
                                                                             exact):
    """Adversary: the gateway's database administrator, who deletes a withdrawal a site
    has not been told yet. The withdrawal set shrank: federated questions are refused
    before anything is charged, as central ones are, until the row is written back from
    the audit chain (as the gateway does when it starts); then the site is told it."""
    _, gw, before, patient = _missed(cluster, exact, 4)
    with exact.service.db.begin() as conn:
        deleted = conn.execute(delete(withdrawals).where(
            withdrawals.c.pseudonym == patient)).rowcount
    assert deleted == 1
    with pytest.raises(GatewayError) as refused:
        gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert refused.value.status == 503
    assert "missing from the withdrawals table" in refused.value.reason
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.1)  # nothing charged
    assert consent.restore(exact.service.db, consent.expected(exact.service.db)) == 1
    after = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert before.df["count"][0] - after.df["count"][0] >= 1
