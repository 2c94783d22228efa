"""Federated queries end to end: three site processes, the key service and the gateway over
real HTTP. Without noise (sites and a key service built with the test-only switches) the
answers match the pooled computation within the CKKS error bound; the gateway holds no
secret key; the key service decrypts only what its policy allows, and says why not."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import polars as pl
import pytest
import tenseal as ts
from sqlalchemy import create_engine, select

from sandbox import audit, receipts
from sandbox.client import Gateway, GatewayError
from sandbox.errors import PolicyRefusal
from sandbox.federated import authorization, ckks, messages
from sandbox.federated.plan import make_plan
from sandbox.federated.spec import FederatedSpec
from sandbox.queries import bounded
from sandbox.queries.view import consent_column
from tests.conftest import run_cli
from tests.federated.cluster import authorize
from tests.federated.conftest import DATASET, grant

BINS = [0, 1, 3, 7, 30, 365]
PURPOSE = "medical_research"


def pooled(cluster) -> pl.DataFrame:
    """Every exact site's view (its rows after per-patient bounding, chosen by that
    site's own rank key), pooled: what a central computation would see, consented rows
    only."""
    views = [next(p.parent for p in (cluster.root / "exact" / f"site-{name}" / "views").glob(
        f"*/{bounded.MANIFEST}")) for name in cluster.sites]
    return pl.concat([pl.read_parquet(f"{v}/**/*.parquet", hive_partitioning=False)
                      for v in views]).filter(pl.col(consent_column(PURPOSE)))


def test_answers_match_the_pooled_computation(cluster, exact):
    project = grant(exact)
    gw = Gateway(exact.url, project["token"])
    rows = pooled(cluster)
    stay = rows["length_of_stay"].cast(pl.Float64).fill_null(0).clip(0, 365).to_numpy()
    cost = rows["total_cost"].fill_null(0).clip(0, 500_000).to_numpy()

    histogram = gw.federated.histogram(DATASET, "length_of_stay", BINS, epsilon=0.5)
    counts = np.bincount(np.searchsorted(BINS[1:-1], stay, side="right"), minlength=5)
    min_count = 5 * int(json.loads((cluster.parts / "metadata.json").read_text())[
        "contribution_bound"])
    for row, count in zip(histogram.df.iter_rows(named=True), counts, strict=True):
        if count >= min_count:
            assert row["count"] == count and not row["suppressed"], row
        else:  # withheld by the key service: fewer than 5 patients could be in it
            assert row["count"] is None and row["suppressed"], row
    assert set(histogram.df["sites"]) == {3}

    metadata = json.loads((cluster.parts / "metadata.json").read_text())
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=0.5,
                         bounds=(0, 500000))
    error = ckks.error_bound(make_plan(spec, metadata).limits())  # per normalised slot
    mean = gw.federated.mean(DATASET, "total_cost", epsilon=0.5).df.row(0, named=True)
    assert mean["count"] == len(cost)
    # Σx is off by at most 500 000 · error, n by at most error
    assert abs(mean["mean"] - cost.mean()) <= (500_000 + cost.mean()) * error / len(cost)
    assert mean["std"] == pytest.approx(cost.std(), rel=1e-6)

    fit = gw.federated.linear_regression(DATASET, "total_cost",
                                         ["length_of_stay", "sex", "visit_type"],
                                         epsilon=1.0).df
    design = np.column_stack([
        np.ones(rows.height), stay,
        (rows["sex"].cast(pl.String) == "男").fill_null(False).to_numpy(),
        *((rows["visit_type"].cast(pl.String) == v).fill_null(False).to_numpy()
          for v in ("急诊", "住院"))]).astype(float)
    beta, *_ = np.linalg.lstsq(design, cost, rcond=None)
    assert fit["term"].to_list() == ["intercept", "length_of_stay", "sex=男",
                                     "visit_type=急诊", "visit_type=住院"]
    # Within what the CKKS error bound allows: each slot of XᵀX and Xᵀy is off by at
    # most its sensitivity times the bound; perturbation theory of linear systems.
    magnitude = np.array([1, 365, 1, 1, 1.0])
    d_xtx = np.outer(magnitude, magnitude) * error
    d_xty = magnitude * 500_000 * error
    xtx, xty = design.T @ design, design.T @ cost
    allowed = np.linalg.cond(xtx) * (np.linalg.norm(d_xtx) / np.linalg.norm(xtx)
                                     + np.linalg.norm(d_xty) / np.linalg.norm(xty))
    deviation = np.linalg.norm(fit["coefficient"].to_numpy() - beta) / np.linalg.norm(beta)
    assert deviation <= allowed + 1e-12, (deviation, allowed)
    assert np.allclose(fit["coefficient"].to_numpy(), beta, rtol=1e-6)
    assert fit["n"][0] == rows.height
    residual, centred = cost - design @ beta, cost - cost.mean()
    assert fit["r2"][0] == pytest.approx(1 - residual @ residual / (centred @ centred),
                                         abs=1e-6)

    # every answer is a release: charged, receipted, listed
    budget = gw.budget()["epsilon"]
    assert budget["spent"] == pytest.approx(2.0)
    payload = gw.verify(histogram.receipt)
    assert payload["dataset"] == DATASET and payload["query"]["federated"] is True
    assert len(gw.releases()) == 3


def public_context(cluster) -> ts.Context:
    return ckks.load(httpx.get(f"{cluster.keys_url}/v1/context").content)


def test_the_gateway_cannot_decrypt_what_a_site_sends(cluster):
    context = public_context(cluster)
    assert not context.has_secret_key()
    assert not any(b"secret" in p.name.encode() or p.suffix == ".context"
                   for p in cluster.gateway_state.rglob("*") if p.is_file())
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 500000))
    part = _ask(cluster, "north", spec)
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(context, ckks.unb64(part["ciphertext"])).decrypt()
    # and the site's attestation binds that very ciphertext to the query
    attested = receipts.verify(part["attestation"], httpx.get(
        f"{cluster.sites['north']}/v1/public-key").text.encode(), receipts.Domain.ATTESTATION)
    assert attested["sha256"] == messages.digest(ckks.unb64(part["ciphertext"]))
    assert attested["fingerprint"] == spec.fingerprint()


def test_a_site_answers_only_the_gateway(cluster, tmp_path):
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 500000))
    url = cluster.sites["south"]
    unsigned = httpx.post(f"{url}/v1/aggregate", json={"payload": {
        "spec": spec.model_dump(mode="json")}})
    assert unsigned.status_code == 401
    granted = authorized(cluster)
    qid = authorization.query_id(granted["payload"]["id"], spec.fingerprint())

    def message(audience: str, **body: object) -> dict:
        return messages.sign(cluster.signer(), audience, "aggregate", {
            "query_id": qid, "spec": spec.model_dump(mode="json"), "purpose": PURPOSE,
            "fields": ["total_cost"], "authorization": granted} | body)

    misdirected = httpx.post(f"{url}/v1/aggregate", json=message("site:north"))
    assert misdirected.status_code == 401 and "site:north" in misdirected.json()["reason"]
    cases = {  # the portal's authorization, not the gateway's word, says what is granted
        "no authorization": (message("site:south", authorization=None), 401,
                             "needs the portal's signed authorization"),
        "one the portal never signed": (message("site:south", authorization=authorize(
            receipts.Signer(tmp_path / "not-the-portal.pem"), GRANT_TERMS)), 401,
            "not the portal's"),
        "fields outside it": (message("site:south", authorization=(other := authorized(
            cluster, fields=["sex"])), query_id=authorization.query_id(
            other["payload"]["id"], spec.fingerprint())), 403, "outside authorization"),
        "another query id": (message("site:south", query_id="q-of-the-gateways-choosing"),
                             401, "one question, one id"),
    }
    for case, (body, status, reason) in cases.items():
        refused = httpx.post(f"{url}/v1/aggregate", json=body)
        assert refused.status_code == status and reason in refused.json()["reason"], \
            (case, refused.text)


GRANT_TERMS = {"project": "fed-project", "datasets": [DATASET],
               "fields": ["total_cost", "length_of_stay"], "purpose": PURPOSE,
               "epsilon": 100.0, "expires_at": "2030-01-01T00:00:00+00:00"}
GRANT = {"id": "g-test", "project": "fed-project", "status": "active",
         "expires_at": "2030-01-01T00:00:00+00:00", "datasets": [DATASET],
         "fields": ["total_cost", "length_of_stay"], "epsilon_total": 100.0,
         "epsilon_spent": 1.0}


def authorized(cluster, **terms: object) -> dict:
    """A new authorization signed with the federation's portal grant key — what the portal
    issues with each grant (and what a gateway holds one of per grant)."""
    return authorize(cluster.portal_signer(), GRANT_TERMS | terms)


def _ask(cluster, site: str, spec: FederatedSpec, granted: dict | None = None) -> dict:
    """Act as the gateway: ask ``site`` for its part of ``spec`` under ``granted`` (a new
    authorization unless given), with the query id they give."""
    granted = granted or authorized(cluster)
    body = messages.sign(cluster.signer(), f"site:{site}", "aggregate", {
        "query_id": authorization.query_id(granted["payload"]["id"], spec.fingerprint()),
        "spec": spec.model_dump(mode="json"), "purpose": PURPOSE,
        "fields": ["total_cost", "length_of_stay"], "authorization": granted})
    response = httpx.post(f"{cluster.sites[site]}/v1/aggregate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def decrypt(cluster, spec: FederatedSpec, sites: list[str], *, signer=None,
            grant_: dict | None = None, granted: dict | None = None,
            layout: dict | None = None, extra: dict | None = None,
            send_authorization: bool = True) -> httpx.Response:
    """Act as the gateway (with its signing key, or ``signer``): collect the noisy parts
    of ``sites`` under ``granted`` (a new authorization unless given), sign the request
    (with the authorization unless ``send_authorization`` is false), send it to the key
    service."""
    granted = granted or authorized(cluster)
    query_id = authorization.query_id(granted["payload"]["id"], spec.fingerprint())
    plan = make_plan(spec, json.loads((cluster.parts / "metadata.json").read_text()))
    parts = [_ask(cluster, s, spec, granted) for s in sites]
    request = messages.sign(signer or cluster.signer(), "keys", "decrypt", {
        "query_id": query_id, "spec": spec.model_dump(mode="json"),
        "layout": plan.describe() | (layout or {}), "grant": grant_ or GRANT,
        "attestations": [p["attestation"] for p in parts],
        **({"authorization": granted} if send_authorization else {})})
    return httpx.post(f"{cluster.keys_url}/v1/decrypt", timeout=120, json={
        "request": request, "parts": [p["ciphertext"] for p in parts]} | (extra or {}))


def test_the_key_service_decrypts_only_within_policy(cluster, tmp_path):
    """Whatever the key service decides for a gateway-signed query — values or a refusal —
    is that query's final outcome; requests it cannot attribute are refused undecided."""
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 500000))
    everyone = list(cluster.sites)

    once = authorized(cluster)
    ok = decrypt(cluster, spec, everyone, granted=once)
    assert ok.status_code == 200 and ok.json()["outcome"] == "released", ok.text
    assert set(ok.json()["sites"]) == set(everyone) and len(ok.json()["values"]) == 5

    undecided = {
        "unsigned": (httpx.post(f"{cluster.keys_url}/v1/decrypt", json={
            "request": {"payload": {"query_id": "x"}}, "parts": ["AA=="]}), 401,
            "signature"),
        "another key": (decrypt(cluster, spec, everyone,
                                signer=receipts.Signer(tmp_path / "forged.pem")), 401,
                        "signature"),
        "a noise of the gateway's": (decrypt(cluster, spec, everyone, extra={
            "noise": "AA==", "combined": "AA=="}), 422, "extra"),
    }
    for case, (response, status, reason) in undecided.items():
        assert response.status_code == status, (case, response.text)
        assert reason in response.json()["reason"].lower(), (case, response.json())

    # an authorization of ε = 1, spent by one question: the key service's own budget
    spent = authorized(cluster, epsilon=1.0)
    assert decrypt(cluster, spec, everyone, granted=spent).json()["outcome"] == "released"
    refusals = {
        "no authorization": (decrypt(cluster, spec, everyone, send_authorization=False),
                             "needs the portal's signed authorization"),
        "two sites": (decrypt(cluster, spec, everyone[:2]),
                      "2 sites contributed; the policy needs at least 3"),
        "a site twice": (decrypt(cluster, spec, [everyone[0], everyone[0], everyone[1]]),
                         "contributed twice"),
        "outside the grant": (decrypt(cluster, spec, everyone,
                                      grant_=GRANT | {"datasets": ["emr-visits"]}),
                              "outside grant"),
        "suspended": (decrypt(cluster, spec, everyone,
                              grant_=GRANT | {"status": "suspended"}), "suspended"),
        "overspent": (decrypt(cluster, spec, everyone,
                              grant_=GRANT | {"epsilon_spent": 101.0}), "more than its ε"),
        "no count slot": (decrypt(cluster, spec, everyone, layout={"count_checks": []}),
                          "layout does not fit"),
        "a laxer minimum": (decrypt(cluster, spec, everyone, layout={"min_count": 1}),
                            "covers fewer than 5 patients"),
        "fewer sites per patient": (decrypt(cluster, spec, everyone,
                                            layout={"sites_per_patient": 2,
                                                    "min_count": 10_000}),
                                    "other public parameters"),
        "beyond the authorization's ε": (decrypt(cluster, FederatedSpec(
            dataset=DATASET, kind="mean", field="length_of_stay", epsilon=1.0, bounds=(0, 365)),
            everyone,
            granted=spent), "spent what the portal granted"),
        # (ε = 10: the noisy count of about no patients stays far below 5 patients' rows)
        "too few patients": (decrypt(cluster, FederatedSpec(
            dataset=DATASET, kind="mean", field="total_cost", epsilon=10.0, bounds=(0, 500000),
            filters=[{"field": "length_of_stay", "op": "between", "value": [364, 365]}]),
            everyone), "fewer than 5 patients"),
    }
    for case, (response, reason) in refusals.items():
        assert response.status_code == 200, (case, response.text)
        assert response.json()["outcome"] == "refused", (case, response.json())
        assert reason in response.json()["reason"], (case, response.json())

    # the same question under the same authorization: its query id, its stored outcome,
    # never a new decision or decryption
    replayed = decrypt(cluster, spec, everyone, granted=once)
    assert replayed.json() | {"repeated": False} == ok.json()
    assert replayed.json()["repeated"] is True

    # every decryption and every refusal is in the key service's own chain, which verifies
    verified = run_cli("audit", "verify", "--database-url", cluster.keys_db)
    assert verified.code == 0, verified.stderr
    engine = create_engine(cluster.keys_db)
    with engine.connect() as conn:
        actions = [r.action for r in conn.execute(select(audit.audit_log.c.action))]
    engine.dispose()
    # (a body that does not parse, the gateway's noise fields, never reaches the service)
    assert actions.count("keys.refused") >= len(undecided) - 1 + len(refusals)
    assert actions.count("keys.decrypted") >= 1 and "keys.repeated" in actions


def test_values_beyond_the_encrypted_range_are_refused(cluster, exact):
    metadata = json.loads((cluster.parts / "metadata.json").read_text())
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 500000))
    huge = {**metadata, "sample_size": {"patients": 10**18, "records": 10**19}}
    with pytest.raises(PolicyRefusal, match="beyond the encrypted range"):
        make_plan(spec, huge)
    large = {**metadata, "sample_size": {"patients": 10**8, "records": 10**9}}
    assert make_plan(spec, large).size == 5
    project = grant(exact)
    gw = Gateway(exact.url, project["token"])
    with pytest.raises(GatewayError, match="outside the public bounds"):
        gw.federated.mean(DATASET, "total_cost", epsilon=0.1, bounds=(0, 1e9))
    assert ckks.error_bound([1.0, 1e15]) < 1e15 * 1e-13
    assert gw.budget()["epsilon"]["spent"] == 0


def test_noise_is_on_as_deployed(cluster, noisy):
    project = grant(noisy)
    gw = Gateway(noisy.url, project["token"])
    rows = pooled(cluster)
    preview = gw.federated.preview_mean(DATASET, "total_cost", epsilon=1.0,
                                        bounds=(0, 20_000))
    assert preview["slot"].to_list() == ["n", "sum total_cost", "sum total_cost²",
                                         "rows total_cost > 0", "rows total_cost < 20000"]
    assert (preview["ckks_error_bound"] > 0).all() and (preview["noise_scale"] > 0).all()
    # three sites, three shares: the total's noise is √3 times one share's
    assert preview["shares"].to_list() == [3] * 5
    r = json.loads((cluster.parts / "metadata.json").read_text())["contribution_bound"]
    assert preview["noise_scale"][0] == pytest.approx(5 * r / 1.0)  # row_l1 · r · m / ε
    assert preview["noise_std"][0] == pytest.approx(preview["noise_scale"][0] * math.sqrt(6))
    first = gw.federated.mean(DATASET, "total_cost", epsilon=1.0, bounds=(0, 20_000))
    again = gw.federated.mean(DATASET, "total_cost", epsilon=1.0, bounds=(0, 20_000))
    assert again.repeated and again.df.equals(first.df)  # no second decryption, no charge
    n = first.df["count"][0]
    assert n != rows.height, "the released count is noisy"
    assert abs(n - rows.height) < preview["noise_bound_95"][0] * 5
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(1.0)


def test_a_withdrawal_reaches_the_sites(cluster, exact):
    project = grant(exact, fields=["length_of_stay"])
    gw = Gateway(exact.url, project["token"])
    before = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.1)
    records = pl.concat([pl.read_parquet(cluster.parts / name / "restricted" /
                                         "records.parquet") for name in cluster.sites])
    patient = records.group_by("pseudonym").len().sort("len", descending=True)[
        "pseudonym"][0]
    # a transparency report finds the patient in the federated dataset (the sites say so)
    version = json.loads((cluster.parts / "metadata.json").read_text())["version"]
    held = exact.admin("GET", f"/v1/admin/patients/{patient}/datasets").json()
    assert held["containing"] == [{"id": DATASET, "version": version}]
    nobody = exact.admin("GET", f"/v1/admin/patients/{'0' * 64}/datasets").json()
    assert nobody["containing"] == []
    answer = exact.admin("POST", "/v1/admin/consent-withdrawals",
                         {"pseudonym": patient, "purposes": None})
    assert answer.status_code == 201 and answer.json()["sites_missed"] == []
    assert answer.json()["containing"] == [{"id": DATASET, "version": version}]
    after = gw.federated.histogram(DATASET, "length_of_stay", [0, 365], epsilon=0.2)
    removed = before.df["count"][0] - after.df["count"][0]
    bound = json.loads((cluster.parts / "metadata.json").read_text())["contribution_bound"]
    assert 1 <= removed <= bound
    assert math.isfinite(after.df["count"][0])


def test_split_needs_three_sites(dataset, tmp_path):
    refused = run_cli("site", "split", dataset, "--sites", "a,b", "--out", tmp_path / "x")
    assert refused.code != 0 and "at least 3 distinct sites" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_no_setting_turns_the_noise_off(cli):
    from sandbox.federated.keys import KeySettings
    from sandbox.federated.site import SiteSettings
    from sandbox.gateway.settings import GatewaySettings
    for settings in (GatewaySettings, SiteSettings, KeySettings):
        assert not [name for name in settings.model_fields if "noise" in name], settings
    for command in (("gateway", "serve"), ("site", "serve"), ("keys", "serve")):
        served = cli(*command, "--help")
        assert served.code == 0 and "noise" not in served.stdout.lower(), command


def test_the_portal_lists_it_and_the_gateway_serves_it_through_its_sites(cluster, exact):
    from portal import catalog
    [entry] = [e for e in catalog.load(cluster.root / "central") if e["id"] == DATASET]
    assert entry["federated"] and entry["sites"] == list(cluster.sites)
    assert "federated" in entry["title"]["en"] and "联邦" in entry["title"]["zh"]
    assert (cluster.root / "central" / DATASET / "dummy").is_dir()  # for the sandbox image
    assert DATASET not in exact.service.datasets  # no rows to serve centrally
    gw = Gateway(exact.url, grant(exact)["token"])
    [listed] = gw.datasets()
    assert listed["federated"] and listed["sites"] == 3
    with pytest.raises(GatewayError, match="federated: its rows stay at its sites"):
        gw.count(DATASET, epsilon=0.1)
