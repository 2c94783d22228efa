"""Attacks on the federated path's noise and policy, over the real process boundary (site
and key-service processes started with ``sandboxctl``, the gateway as its own process).

Each test asserts a guarantee of docs/federated.md, docs/threat-model.md or invariant 2 of
ARCHITECTURE.md ("no single service short of the key holder can obtain an un-noised
aggregate, and no charged query is ever answered twice with fresh noise"); a test that
fails shows the weakness is there.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import polars as pl
import pytest

from sandbox.client import Gateway, GatewayError
from sandbox.federated import authorization, ckks, keys, keys_app, messages
from sandbox.federated.plan import make_plan
from sandbox.federated.spec import FederatedSpec
from sandbox.receipts import Signer
from tests.conftest import run_cli
from tests.federated.cluster import ServedApp, authorize
from tests.federated.conftest import DATASET, grant
from tests.federated.test_attacks import _exact_part, _federation, _overlapping_parts
from tests.federated.test_federated import GRANT, GRANT_TERMS, authorized


def _parts(cluster, spec: FederatedSpec, query_id: str, granted: dict) -> list[dict]:
    """What anyone holding the gateway's signing key can ask each site: its part of
    ``query_id`` under the authorization ``granted``; the parts the sites gave."""
    parts = []
    for site, url in cluster.sites.items():
        body = messages.sign(cluster.signer(), f"site:{site}", "aggregate", {
            "query_id": query_id, "spec": spec.model_dump(mode="json"),
            "purpose": "medical_research", "fields": ["length_of_stay", "total_cost"],
            "authorization": granted})
        answer = httpx.post(f"{url}/v1/aggregate", json=body, timeout=120)
        if answer.status_code == 200:
            parts.append(answer.json())
    return parts


def _assemble(cluster, spec: FederatedSpec, query_id: str, grant_: dict, granted: dict,
              parts: list[dict] | None = None) -> dict:
    """The key service's request for one decryption, as the gateway's key signs it."""
    plan = make_plan(spec, json.loads((cluster.parts / "metadata.json").read_text()))
    parts = _parts(cluster, spec, query_id, granted) if parts is None else parts
    request = messages.sign(cluster.signer(), "keys", "decrypt", {
        "query_id": query_id, "spec": spec.model_dump(mode="json"),
        "layout": plan.describe(), "grant": grant_,
        "attestations": [p["attestation"] for p in parts], "authorization": granted})
    return {"request": request, "parts": [p["ciphertext"] for p in parts] or ["AA=="]}


def _decrypt(cluster, body: dict) -> httpx.Response:
    return httpx.post(f"{cluster.keys_url}/v1/decrypt", json=body, timeout=300)


ROUNDS = 40


def test_the_gateways_key_never_gets_fresh_noise_for_one_question(cluster, tmp_path):
    """Adversary: anyone holding the gateway's signing key (a compromised gateway), who
    also holds the portal's authorization of one real grant.

    Asking one question again and again — under query ids of its own choosing, under
    grants it invents (signed with a key that is not the portal's), or as the same query
    — must never yield more than one noisy value: otherwise their average converges on
    the exact, un-noised total, which invariant 2 says no single service short of the
    key holder can obtain. Guarantee asserted: one question decrypts to at most one noisy
    value, however the gateway names the query or the grant."""
    spec = FederatedSpec(dataset=DATASET, kind="histogram", field="length_of_stay",
                         bins=[0, 365], epsilon=10.0)
    exact = sum(float(_exact_part(cluster, s, spec, tmp_path)[0]) for s in cluster.sites)
    real = authorized(cluster, fields=["length_of_stay", "total_cost"], epsilon=10.0)
    impostor = Signer(tmp_path / "not-the-portal.pem")
    answers = []
    for round_ in range(ROUNDS):
        if round_ % 3 == 0:    # a grant the gateway invents, its own query ids
            granted = authorize(impostor, GRANT_TERMS | {"epsilon": 10.0, "fields": [
                "length_of_stay", "total_cost"]})
            query = uuid.uuid4().hex
        elif round_ % 3 == 1:  # the real authorization, a query id of its choosing
            granted, query = real, uuid.uuid4().hex
        else:                  # the real authorization, its query id
            granted, query = real, authorization.query_id(real["payload"]["id"],
                                                          spec.fingerprint())
        forged = GRANT | {"id": f"never-issued-{uuid.uuid4().hex[:8]}",
                          "epsilon_total": 10.0, "epsilon_spent": 10.0}
        response = _decrypt(cluster, _assemble(cluster, spec, query, forged, granted))
        assert response.status_code in (200, 401, 422), response.text
        if response.status_code == 200 and response.json()["outcome"] == "released":
            answers.append(response.json()["values"][0])
    distinct = sorted({round(v, 6) for v in answers})
    average = statistics.fmean(answers) if answers else float("nan")
    spread = statistics.stdev(answers) if len(answers) > 1 else 0.0
    assert len(distinct) <= 1, (
        f"{len(answers)} decryptions of one question gave {len(distinct)} different noisy "
        f"totals (one draw's standard deviation {spread:.2f}); their average {average:.2f} "
        f"is {abs(average - exact):.2f} from the exact count {exact:.0f}")


def test_the_key_services_grant_tally_holds_under_concurrent_requests(cluster, tmp_path,
                                                                    monkeypatch):
    """Adversary: a gateway whose ledger was rewound (or anyone with its key) — the party
    the key service's own budget is there to stop: it spends each query's ε from the
    portal's authorization itself.

    An authorization of ε = 1 allows one decryption at ε = 1. Four different questions
    (four query ids) under it arrive at once, while each decryption takes 300 ms, as on a
    loaded host; the cluster's key service (its secret context, its registered sites) is
    served from this process over HTTP, nothing else differs."""
    state = tmp_path / "keys"
    shutil.copytree(cluster.root / "keys", state,
                    ignore=shutil.ignore_patterns("audit-witness*", "audit-peers"))
    database = f"sqlite:///{tmp_path / 'keys.db'}"
    for name in cluster.sites:
        registered = run_cli("keys", "register-site", name,
                             cluster.root / f"site-{name}.pub.pem", "--state-dir", state,
                             "--database-url", database)
        assert registered.code == 0, registered.stderr
    decrypt = ckks.decrypt

    def loaded(*args: object) -> list[float]:
        time.sleep(0.3)
        return decrypt(*args)

    monkeypatch.setattr(keys.ckks, "decrypt", loaded)
    served = ServedApp(keys_app.create_app(service=keys.KeyService(keys.KeySettings(
        state_dir=state, database_url=database, gateway_key_file=cluster.gateway_key,
        portal_key_file=cluster.portal_key))))
    try:
        one = authorized(cluster, epsilon=1.0)
        grant_ = GRANT | {"id": f"tally-{uuid.uuid4().hex[:8]}", "epsilon_total": 1.0,
                          "epsilon_spent": 1.0}
        questions = [FederatedSpec(dataset=DATASET, kind="mean", field="total_cost",
                                   bounds=(0, 1000 * (k + 1)), epsilon=1.0)
                     for k in range(4)]
        bodies = [_assemble(cluster, spec, authorization.query_id(
            one["payload"]["id"], spec.fingerprint()), grant_, one) for spec in questions]
        start = threading.Barrier(len(bodies))

        def send(body: dict) -> httpx.Response:
            start.wait()
            return httpx.post(f"{served.url}/v1/decrypt", json=body, timeout=300)

        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(send, bodies))
    finally:
        served.close()
    outcomes = [r.json().get("outcome") if r.status_code == 200 else r.status_code
                for r in responses]
    released = outcomes.count("released")
    assert released <= 1, (f"authorization of ε = 1: {released} decryptions at ε = 1 each "
                           f"(outcomes {outcomes})")
    assert released == 1, f"the first of them is answered (outcomes {outcomes})"


# total_cost < 5000 among patients aged 80-99: hundreds of rows, 4 inpatients at most
SMALL_CELL = [{"field": "total_cost", "op": "lt", "value": 5000},
              {"field": "age_band", "op": "eq", "value": "80-99"}]


def test_a_regression_does_not_release_a_category_of_fewer_than_5_patients(cluster, noisy):
    """Adversary: a researcher with a project token.

    A mean over fewer than 5 patients is refused (docs/federated.md: "a mean or
    regression below is refused"). A linear regression on a one-hot feature estimates the
    mean of the target within each category, but the key service checks only its first
    slot (n, all rows) against the minimum count — not the category counts on the
    diagonal of ZᵀZ. A category of 1–4 patients inside a large filter is released as a
    coefficient."""
    rows = pl.concat([pl.read_parquet(cluster.parts / name / "restricted" /
                                      "records.parquet") for name in cluster.sites])
    chosen = rows.filter((pl.col("total_cost") < 5000) & (pl.col("age_band") == "80-99"))
    inpatients = chosen.filter(pl.col("visit_type") == "住院")["pseudonym"].n_unique()
    assert 1 <= inpatients <= 4 and chosen.height >= 300, (inpatients, chosen.height)

    gw = Gateway(noisy.url, grant(noisy, project=f"cells-{uuid.uuid4().hex[:6]}")["token"])
    with pytest.raises(GatewayError) as mean:  # the category on its own: refused
        gw.federated.mean(DATASET, "length_of_stay", epsilon=5.0,
                          where=[*SMALL_CELL, {"field": "visit_type", "op": "eq",
                                               "value": "住院"}])
    assert "fewer than 5 patients" in mean.value.reason
    try:
        fit = gw.federated.linear_regression(DATASET, "length_of_stay", ["visit_type"],
                                             epsilon=5.0, where=SMALL_CELL)
    except GatewayError as refused:
        assert "fewer than 5 patients" in refused.reason
    else:
        raise AssertionError(
            f"released a regression whose category 住院 covers {inpatients} patients: "
            f"{fit.df.to_dicts()}")


def test_a_signed_lookup_cannot_be_replayed_as_a_consent_withdrawal(cluster):
    """Adversary: anyone who sees one message the gateway signed for a site (traffic
    between services is plain HTTP; a hospital's site is reached over its network).

    Messages name their audience and their time, not what they ask for: the body the
    gateway signs to ask a site whether it holds a patient (``POST /v1/patients``) is
    accepted word for word by ``POST /v1/withdrawals``, where it records a withdrawal of
    every purpose for that patient (``purposes`` absent means all). Guarantee asserted: a
    message signed for one request does not pass as another."""
    lookup = messages.sign(cluster.signer(), "site:south", "holds",
                           {"pseudonym": "0" * 64})
    url = cluster.sites["south"]
    asked = httpx.post(f"{url}/v1/patients", json=lookup, timeout=60)
    assert asked.status_code == 200 and asked.json()["holds"] is False, asked.text
    replayed = httpx.post(f"{url}/v1/withdrawals", json=lookup, timeout=60)
    assert replayed.status_code in (401, 403, 409, 422), (
        f"a lookup replayed as a withdrawal was accepted: {replayed.status_code} "
        f"{replayed.text}")


def test_a_misdeclared_federation_tells_the_researcher_no_exact_counts(cluster, tmp_path):
    """Adversary: a researcher with a project token on a federation whose sites share
    more patients than it declares. The refusal is right, but it carries the overlap
    check's exact, un-noised counts — how many patients are held by one site, by two —
    computed from every site's restricted pseudonyms (withdrawn patients included), in
    the reason and as ``patients_by_sites``. Invariant 2: only differentially private
    aggregates leave; the controllers need these counts, the researcher does not."""
    parts = _overlapping_parts(cluster, tmp_path / "parts", 37, declared=1)
    gateway = _federation(cluster, parts, {"lk-north": "north", "lk-south": "south",
                                           "lk-east": "east"}, tmp_path / "sites")
    try:
        gw = Gateway(gateway.url, grant(gateway, project="overlap-leak")["token"])
        with pytest.raises(GatewayError) as refused:
            gw.federated.mean(DATASET, "total_cost", epsilon=1.0)
    finally:
        gateway.close()
    assert refused.value.status == 403
    told = {"reason": refused.value.reason, "details": refused.value.details}
    assert "37" not in refused.value.reason and \
        "patients_by_sites" not in refused.value.details, told


def test_a_site_whose_partition_changes_is_checked_again_before_it_answers(cluster,
                                                                          tmp_path):
    """Adversary: a site (or its data refresh) that starts sharing patients with another
    after the gateway checked the federation. The overlap check runs before the first
    query and then once an hour (``Federation.overlap_ttl``); nothing tells the gateway
    that a site's partition changed, and the sites attest no version of it. For up to an
    hour the federation answers with noise calibrated to one site per patient while 40
    patients are at two. Guarantee asserted (docs/federated.md, "refuse a federation
    whose declared bound is violated"): a query after the change is refused."""
    parts = _overlapping_parts(cluster, tmp_path / "parts", 0, declared=1)
    names = {"rf-north": "north", "rf-south": "south", "rf-east": "east"}
    gateway = _federation(cluster, parts, names, tmp_path / "sites")
    try:
        gw = Gateway(gateway.url, grant(gateway, project="refresh")["token"])
        assert gw.federated.mean(DATASET, "total_cost", epsilon=1.0).df["count"][0] > 0
        # south's refreshed extract now also holds 40 of north's patients; the site
        # reloads it (as a restart or a withdrawal does)
        refreshed = _overlapping_parts(cluster, tmp_path / "refreshed", 40, declared=1)
        for name in ("records", "consent"):
            shutil.copy(refreshed / "south" / "restricted" / f"{name}.parquet",
                        parts / "south" / "restricted" / f"{name}.parquet")
        [south] = [p.service for p in cluster.processes.values()
                   if isinstance(p, ServedApp) and
                   getattr(getattr(p.service, "settings", None), "site", "") == "rf-south"]
        south.dataset = south._prepare()
        try:
            answer = gw.federated.mean(DATASET, "total_cost", epsilon=2.0)
        except GatewayError as refused:
            assert "share more patients than the federation declares" in refused.reason
        else:
            raise AssertionError(f"answered with noise for one site per patient while 40 "
                                 f"patients are at two: {answer.df.to_dicts()}")
    finally:
        gateway.close()
