"""What is left of consent at query time on the federation: a withdrawal made while a site
cannot be reached is not told to that site again (the gateway answers ``sites_missed`` and
the controller must send it again), so the next federated query still counts the patient's
rows at that site. Adversary: no one — a site's network outage at intake time."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest
import uvicorn

from sandbox.client import Gateway
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


@pytest.mark.xfail(strict=True, reason="a withdrawal a site missed is not forwarded again "
                   "before the next federated query (the gateway keeps no per-site "
                   "delivery state); the controller must resend it")
def test_a_withdrawal_a_site_missed_still_applies_to_the_next_federated_query(cluster,
                                                                             exact):
    name = sorted(cluster.sites)[0]
    served = next(p for key, p in cluster.processes.items()
                  if key.startswith(f"served-{name}-")
                  and getattr(p, "url", None) in exact.service.federation.datasets[
                      DATASET].sites.values())
    records = pl.read_parquet(cluster.parts / name / "restricted" / "records.parquet")
    patient = records.group_by("pseudonym").len().sort("len", descending=True)[
        "pseudonym"][0]
    gw = Gateway(exact.url, grant(exact, fields=["length_of_stay"])["token"])
    before = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.1)
    served.close()  # the site is out of reach while the withdrawal is taken
    try:
        answer = exact.admin("POST", "/v1/admin/consent-withdrawals", {"pseudonym": patient})
        assert answer.status_code == 201 and answer.json()["sites_missed"] == [name]
    finally:
        _serve_again(served)
    after = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    assert before.df["count"][0] - after.df["count"][0] >= 1
