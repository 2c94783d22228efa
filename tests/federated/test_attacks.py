"""Attacks on the federated path, played over the real process boundary (site and key
service processes, gateways served over HTTP): a researcher who re-asks a refused query
for fresh noise, a gateway (or anyone with its signing key) that forges the noise to have
one site's exact aggregate decrypted, and a federation whose sites share more patients than
its noise is calibrated to (docs/threat-model.md)."""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import numpy as np
import polars as pl
import pytest
import tenseal as ts
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, select

from sandbox import audit
from sandbox.client import Gateway, GatewayError
from sandbox.federated import authorization, ckks, messages
from sandbox.federated.plan import local_vector, make_plan
from sandbox.federated.spec import FederatedSpec
from sandbox.gateway.service import GatewayService
from sandbox.queries import view
from tests.federated.cluster import ServedApp, serve_sites
from tests.federated.conftest import DATASET, grant
from tests.federated.test_federated import (
    GRANT,
    PURPOSE,
    _ask,
    authorized,
    public_context,
)

RARE = {"length_of_stay": (364, 365)}  # about no patient stays a whole year


def entries(database_url: str, subject: str) -> list[tuple[str, dict]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(audit.audit_log).where(
            audit.audit_log.c.subject == subject).order_by(audit.audit_log.c.seq)).all()
    engine.dispose()
    return [(r.action, json.loads(r.details)) for r in rows]


def test_a_refused_query_is_its_release_charged_once_and_never_redrawn(cluster, noisy):
    """A mean over too few patients is refused after decryption. That refusal is the
    release: the identical query returns the same stored refusal with the same receipt,
    costs nothing more, and the key service decrypted once — where before, each retry
    drew fresh noise for a new noisy threshold test, for free."""
    project = grant(noisy, epsilon=10.0)
    gw = Gateway(noisy.url, project["token"])
    answers = []
    for _ in range(4):
        with pytest.raises(GatewayError) as refused:
            gw.federated.mean(DATASET, "total_cost", epsilon=10.0, where=RARE)
        answers.append(refused.value)
    first = answers[0]
    assert first.code == "refused_release" and "fewer than 5 patients" in first.reason
    assert not first.details["repeated"]
    for again in answers[1:]:
        assert again.code == "refused_release" and again.details["repeated"]
        assert again.details["release"] == first.details["release"]
        assert again.details["receipt"] == first.details["receipt"]
    payload = gw.verify(first.details["receipt"])
    assert "fewer than 5 patients" in payload["refused"] and payload["result"] == []
    assert gw.budget()["epsilon"]["spent"] == pytest.approx(10.0)
    [listed] = gw.releases()
    assert listed["status"] == "released" and listed["receipt"] == first.details["receipt"]

    # one decision, one decryption for the query id at the key service; one noise draw
    # at each site
    subject = "query:" + authorization.query_id(project["authorization"]["payload"]["id"],
                                                payload["query_hash"])
    decided = entries(cluster.keys_db, subject)
    assert [(a, d["decrypted"], d["outcome"]) for a, d in decided] == [
        ("keys.refused", True, "refused")]
    for name in cluster.sites:
        drawn = entries(f"sqlite:///{cluster.root / f'site-{name}' / 'site.db'}", subject)
        assert [(a, d["noise"]) for a, d in drawn] == [("site.aggregated", "drawn")]


def test_a_retry_after_a_site_failed_reuses_every_share_and_decision(cluster, tmp_path):
    """Two of three sites answer: nothing is decrypted, the charge stands. The retry under
    that charge asks about the same query id: the two sites give their stored shares, the
    third draws once, and the key service decides once."""
    config = json.loads(cluster.federation_file.read_text())
    sites = config["datasets"][DATASET]["sites"]
    flaky = ServedApp(_failing_aggregates(sites["east"]))
    down = tmp_path / "down.json"
    down.write_text(json.dumps({**config, "datasets": {DATASET: {
        **config["datasets"][DATASET], "sites": {**sites, "east": flaky.url}}}}))
    outage = ServedApp(GatewayService(cluster.gateway_settings(
        "outage", federation_file=down)))
    try:
        project = grant(outage)
        gw = Gateway(outage.url, project["token"])
        with pytest.raises(GatewayError, match="only 2 of 3 sites answered") as failed:
            gw.federated.mean(DATASET, "total_cost", epsilon=0.5)
        assert failed.value.status == 503
        assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.5)
    finally:
        outage.close()
        flaky.close()
    restored = ServedApp(GatewayService(cluster.gateway_settings("outage")))
    try:
        gw = Gateway(restored.url, project["token"])
        answer = gw.federated.mean(DATASET, "total_cost", epsilon=0.5)
        assert answer.df["count"][0] > 0
        assert gw.budget()["epsilon"]["spent"] == pytest.approx(0.5)
    finally:
        restored.close()
    payload = answer.receipt["payload"]
    subject = "query:" + authorization.query_id(project["authorization"]["payload"]["id"],
                                                payload["query_hash"])
    noise = {name: [d["noise"] for _, d in entries(
        f"sqlite:///{cluster.root / f'site-{name}' / 'site.db'}", subject)]
        for name in cluster.sites}
    assert noise == {"north": ["drawn", "stored"], "south": ["drawn", "stored"],
                     "east": ["drawn"]}
    assert [a for a, _ in entries(cluster.keys_db, subject)] == ["keys.decrypted"]


def _failing_aggregates(site_url: str) -> FastAPI:
    """The way to a site on which aggregates fail (a network that drops them) while its
    overlap check still answers: the site fails after the gateway has charged."""
    app = FastAPI()

    @app.post("/v1/overlap")
    def overlap(message: dict) -> dict:
        return httpx.post(f"{site_url}/v1/overlap", json=message, timeout=60).json()

    @app.post("/v1/aggregate")
    def aggregate() -> JSONResponse:
        return JSONResponse({"error": "unavailable", "reason": "connection reset"}, 503)

    return app


def _exact_part(cluster, site: str, spec: FederatedSpec, tmp_path) -> np.ndarray:
    """What a site's part would be without noise (computed here from its partition)."""
    dataset = view.prepare(cluster.parts / site, tmp_path / f"view-{site}")
    plan = make_plan(spec, dataset.metadata)
    return local_vector(plan, dataset, PURPOSE) * np.asarray(plan.sensitivity)


def test_a_gateway_forging_the_noise_never_gets_a_sites_exact_aggregate(cluster, tmp_path):
    """Anyone with the gateway's signing key tries the attack that worked before: send
    ``Enc(0) − south − east`` as the noise, so that the total is north's part alone. The
    key service takes no noise from the gateway and adds the attested parts itself; each
    part carries its site's own noise, so whatever it decrypts is noisy."""
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 500000))
    plan = make_plan(spec, json.loads((cluster.parts / "metadata.json").read_text()))
    context = public_context(cluster)
    north_exact = _exact_part(cluster, "north", spec, tmp_path)
    total_exact = sum(_exact_part(cluster, s, spec, tmp_path) for s in cluster.sites)

    # a compromised gateway holds the portal's authorizations of its real grants: one
    # for each attempt here
    granted: dict[str, dict] = {}  # query id → the authorization it was asked under

    def attempt(parts: dict[str, dict], extra: dict | None = None) -> httpx.Response:
        qid = next(iter(parts.values()))["attestation"]["payload"]["query_id"]
        body = {"query_id": qid, "spec": spec.model_dump(mode="json"),
                "layout": plan.describe(), "grant": GRANT,
                "attestations": [p["attestation"] for p in parts.values()],
                "authorization": granted[qid]}
        if extra:
            body |= {k: v for k, v in extra.items() if k.endswith("sha256")}
        return httpx.post(f"{cluster.keys_url}/v1/decrypt", timeout=120, json={
            "request": messages.sign(cluster.signer(), "keys", "decrypt", body),
            "parts": [p["ciphertext"] for p in parts.values()]}
            | {k: v for k, v in (extra or {}).items() if not k.endswith("sha256")})

    def vector(part: dict) -> ts.CKKSVector:
        return ts.ckks_vector_from(context, ckks.unb64(part["ciphertext"]))

    def ask(sites: list[str]) -> dict[str, dict]:
        authorized_ = authorized(cluster)
        granted[authorization.query_id(authorized_["payload"]["id"], spec.fingerprint())] \
            = authorized_
        return {s: _ask(cluster, s, spec, authorized_) for s in sites}

    everyone = list(cluster.sites)
    parts = ask(everyone)
    zero = ts.ckks_vector(context, [0.0] * ckks.SLOTS)
    forged = (zero - vector(parts["south"]) - vector(parts["east"])).serialize()
    combined = ckks.add(context, [ckks.unb64(p["ciphertext"]) for p in parts.values()]
                        + [forged])
    outcomes = [attempt(parts, {"noise": ckks.b64(forged), "combined": ckks.b64(combined),
                                "noise_sha256": messages.digest(forged),
                                "combined_sha256": messages.digest(combined)})]
    # north's part alone; north's thrice; north's beside two parts of another query
    outcomes.append(attempt(ask(["north"])))
    thrice = ask(["north"])["north"]
    outcomes.append(httpx.post(f"{cluster.keys_url}/v1/decrypt", timeout=120, json={
        "request": messages.sign(cluster.signer(), "keys", "decrypt", {
            "query_id": thrice["attestation"]["payload"]["query_id"],
            "spec": spec.model_dump(mode="json"), "layout": plan.describe(),
            "grant": GRANT, "attestations": [thrice["attestation"]] * 3,
            "authorization": granted[thrice["attestation"]["payload"]["query_id"]]}),
        "parts": [thrice["ciphertext"]] * 3}))
    outcomes.append(attempt(ask(["north"]) | ask(["south", "east"])))
    # and the honest assembly, which is what the key service decrypts: the noisy total
    outcomes.append(attempt(ask(everyone)))

    released = []
    for response in outcomes:
        assert response.status_code in (200, 401, 422), response.text
        if response.status_code == 200 and response.json()["outcome"] == "released":
            values = np.asarray(response.json()["values"]) * np.asarray(plan.sensitivity)
            released.append(values)
    assert len(released) == 1, "only the honest assembly of all three parts decrypts"
    [values] = released
    assert not np.allclose(values, north_exact, rtol=1e-6), "north's exact aggregate leaked"
    assert not np.allclose(values, total_exact, rtol=1e-9), "the total was not noised"
    assert abs(values[0] - total_exact[0]) > 1e-3  # the count carries the sites' noise


def _overlapping_parts(cluster, root, shared: int, declared: int):
    """The cluster's partitions with ``shared`` of north's patients also held by south
    (their rows copied there), declaring ``declared`` sites per patient."""
    root.mkdir(parents=True)
    for name in [*cluster.sites, "metadata.json"]:
        source = cluster.parts / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    north = pl.read_parquet(root / "north" / "restricted" / "records.parquet")
    chosen = north["pseudonym"].unique().sort()[:shared]
    for table in ("records", "consent"):
        path = root / "south" / "restricted" / f"{table}.parquet"
        extra = pl.read_parquet(root / "north" / "restricted" / f"{table}.parquet").filter(
            pl.col("pseudonym").is_in(chosen.implode()))
        pl.concat([pl.read_parquet(path), extra]).write_parquet(path)
    for meta in [root / "metadata.json", *(root / s / "metadata.json" for s in cluster.sites)]:
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps(data | {"sites_per_patient": declared}))
    return root


def _federation(cluster, parts, names: dict[str, str], tmp_path) -> ServedApp:
    """Sites over ``parts`` (served here, registered with the cluster's key service) and
    a gateway over them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    urls = serve_sites(cluster, parts, names, cluster.keys_url, cluster.keys_db,
                       cluster.root / "keys", tmp_path)
    federation = tmp_path / "federation.json"
    federation.write_text(json.dumps({"keys_url": cluster.keys_url, "datasets": {
        DATASET: {"metadata": str(parts / "metadata.json"), "sites": urls}}}))
    return ServedApp(GatewayService(cluster.gateway_settings(
        f"overlap-{uuid.uuid4().hex[:6]}", federation_file=federation)))


def test_a_federation_sharing_more_patients_than_declared_is_refused(cluster, tmp_path):
    """40 patients are at two sites, the federation declares one: the noise is calibrated
    to one site per patient, so nothing is released (and nothing charged) until the
    controllers declare two — after which every share carries twice the noise."""
    understated = _overlapping_parts(cluster, tmp_path / "one", 40, declared=1)
    gateway = _federation(cluster, understated, {"ov-north": "north", "ov-south": "south",
                                                 "ov-east": "east"}, tmp_path / "s1")
    try:
        gw = Gateway(gateway.url, grant(gateway)["token"])
        with pytest.raises(GatewayError) as refused:
            gw.federated.mean(DATASET, "total_cost", epsilon=1.0)
        assert refused.value.status == 403
        assert "share more patients than the federation declares" in refused.value.reason
        assert not any(c.isdigit() for c in refused.value.reason.split("(at most")[0]), \
            refused.value.reason  # the exact counts stay with the controllers
        assert gw.budget()["epsilon"]["spent"] == 0
        checks = [d for a, d in entries(gateway.service.settings.database_url,
                                        f"dataset:{DATASET}") if a == "federation.checked"]
        assert checks and checks[-1]["ok"] is False
        assert checks[-1]["observed_sites_per_patient"] == 2
        assert checks[-1]["patients_by_sites"]["2"] == 40
    finally:
        gateway.close()

    declared = _overlapping_parts(cluster, tmp_path / "two", 40, declared=2)
    gateway = _federation(cluster, declared, {"dv-north": "north", "dv-south": "south",
                                              "dv-east": "east"}, tmp_path / "s2")
    try:
        gw = Gateway(gateway.url, grant(gateway)["token"])
        preview = gw.federated.preview_mean(DATASET, "total_cost", epsilon=1.0)
        r = json.loads((cluster.parts / "metadata.json").read_text())["contribution_bound"]
        assert preview["noise_scale"][0] == pytest.approx(5 * r * 2 / 1.0)  # m = 2
        answer = gw.federated.mean(DATASET, "total_cost", epsilon=1.0)
        assert answer.df["count"][0] > 0
    finally:
        gateway.close()
