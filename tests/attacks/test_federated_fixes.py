"""Attacks on the fixes of the federated path (portal-signed grant authorizations, query ids
derived from the question, count checks of regressions), over the real process boundary:
site and key-service processes started with ``sandboxctl``, the gateway as its own process.

Each test asserts a guarantee of docs/federated.md or docs/threat-model.md; a test that
fails shows the weakness is there.
"""

from __future__ import annotations

import uuid

import httpx
import polars as pl
import pytest

from portal.config import PortalSettings
from portal.gateway import change_grant
from sandbox.client import Gateway, GatewayError
from sandbox.federated import authorization
from sandbox.federated.spec import FederatedSpec
from sandbox.receipts import Signer
from tests.attacks.test_federated_noise import SMALL_CELL, _assemble, _decrypt, _parts
from tests.federated.conftest import DATASET, PORTAL, grant


def test_a_regression_on_a_numeric_feature_clamped_to_0_1_releases_no_group_under_5(
        cluster, noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: the key service "checks that every count the answer reveals covers
    at least 5 patients (… for a regression also each category of a text feature, its
    reference category, and each pair of categories)"; the threat model: a regression
    whose group covers fewer than 5 patients is not released, "every count the answer
    reveals is checked like n". Only one-hot columns are checked, though, and the
    researcher picks the clamping bounds of a numeric feature: ``length_of_stay`` clamped
    to [0, 1] is the indicator "stayed at least a day", so the diagonal cell Σz² of ZᵀZ
    is the number of rows in that group and the feature's coefficient is the mean
    difference of the target between the group and the rest — a group of 1–4 patients
    inside a large filter, the same group whose mean is refused."""
    rows = pl.concat([pl.read_parquet(cluster.parts / name / "restricted" /
                                      "records.parquet") for name in cluster.sites])
    chosen = rows.filter((pl.col("total_cost") < 5000) & (pl.col("age_band") == "80-99"))
    stayed = chosen.filter(pl.col("length_of_stay") >= 1)["pseudonym"].n_unique()
    assert 1 <= stayed <= 4 and chosen.height >= 300, (stayed, chosen.height)

    gw = Gateway(noisy.url, grant(noisy, project=f"clamp-{uuid.uuid4().hex[:6]}")["token"])
    with pytest.raises(GatewayError) as mean:  # the group on its own: refused
        gw.federated.mean(DATASET, "total_cost", epsilon=5.0,
                          where=[*SMALL_CELL, {"field": "length_of_stay", "op": "ge",
                                               "value": 1}])
    assert "fewer than 5 patients" in mean.value.reason
    try:
        fit = gw.federated.linear_regression(
            DATASET, "total_cost", ["length_of_stay"], epsilon=5.0,
            feature_bounds={"length_of_stay": (0, 1)}, where=SMALL_CELL)
    except GatewayError as refused:
        assert "fewer than 5 patients" in refused.reason
    else:
        raise AssertionError(
            f"released a regression whose indicator 'length_of_stay ≥ 1' covers {stayed} "
            f"patients (its coefficient is their mean difference): {fit.df.to_dicts()}")


def test_one_question_spelled_another_way_gets_no_fresh_noise(cluster, noisy):
    """Adversary: a researcher with a project token (or the gateway's key, which asks the
    same).

    docs/federated.md: "one question under one authorization has one id, so one noise
    share per site and one decision, however often or under whatever id it is asked"; the
    gateway cannot "buy fresh noise for a question". The id is the hash of the spec's JSON,
    not of the question: the same mean with its two filters in the other order, or with
    its bounds written out as the public bounds they default to, is another id — fresh
    shares at every site, a fresh decryption. (Each spelling is charged, so the budget
    holds; what fails is "one question, one noise draw".)"""
    gw = Gateway(noisy.url, grant(noisy, project=f"spell-{uuid.uuid4().hex[:6]}")["token"])
    where = [{"field": "age_band", "op": "eq", "value": "40-59"},
             {"field": "visit_type", "op": "eq", "value": "门诊"}]
    spellings = {
        "as asked": gw.federated.mean(DATASET, "total_cost", epsilon=1.0, where=where),
        "filters the other way round": gw.federated.mean(
            DATASET, "total_cost", epsilon=1.0, where=where[::-1]),
        "the default bounds written out": gw.federated.mean(
            DATASET, "total_cost", epsilon=1.0, where=where, bounds=(0, 500000)),
    }
    answers = {name: (result.df["count"][0], round(result.df["mean"][0], 9))
               for name, result in spellings.items()}
    assert len(set(answers.values())) == 1, (
        f"one question drew {len(set(answers.values()))} different noisy answers: {answers}")


def test_a_revoked_grants_authorization_decrypts_nothing(cluster, noisy):
    """Adversary: anyone holding the gateway's signing key, after the committee revoked
    the project's grant (the portal revokes it on the gateway).

    The threat model: the key service cannot decrypt "outside the grant"; docs/federated.md:
    the gateway "cannot decrypt beyond what the committee granted". The portal's signed
    authorization has no state: the sites check only its term, and the key service reads
    the grant's state "as the gateway signs it". So the revoked grant's authorization keeps
    buying decryptions, up to its ε and until its term ends."""
    granted = grant(noisy, project=f"revoked-{uuid.uuid4().hex[:6]}")
    revoked = _change(noisy, granted, "revoke", "agreement breached")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["key_service_told"] is True
    with pytest.raises(GatewayError):  # the researcher's token is refused, as it should be
        Gateway(noisy.url, granted["token"]).federated.mean(DATASET, "total_cost",
                                                            epsilon=1.0)
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 20000))
    answer = _ask_directly(cluster, granted, spec)  # the grant stated "active"
    assert answer.status_code != 200 or answer.json().get("outcome") != "released", (
        f"the revoked grant's authorization was decrypted: {answer.json()}")
    assert answer.status_code == 403 and "revoked" in answer.json()["reason"]


STATES = {"suspend": "suspended", "resume": "active", "revoke": "revoked"}


def _change(gateway, granted: dict, action: str, reason: str, signer=None,
            project: str | None = None):
    """Suspend, resume or revoke ``granted`` on the gateway as the portal does: with its
    signed statement of the change."""
    statement = authorization.state_statement(
        signer or PORTAL[0], project or granted["grant"]["project"], STATES[action], reason)
    return gateway.admin("POST", f"/v1/admin/grants/{granted['grant']['id']}/{action}",
                         {"reason": reason, "statement": statement})


def _ask_directly(cluster, granted: dict, spec: FederatedSpec, status: str = "active"):
    """The key service's answer to the gateway's key asking ``spec`` under ``granted``'s
    authorization, with the grant stated as ``status``."""
    document = granted["authorization"]
    stated = {k: granted["grant"][k] for k in ("id", "project", "expires_at", "datasets",
                                                "fields", "epsilon_total")} | {
        "status": status, "epsilon_spent": 0.0}
    return _decrypt(cluster, _assemble(cluster, spec, authorization.query_id(
        document["payload"]["id"], spec.fingerprint()), stated, document))


def test_a_suspended_grants_authorization_decrypts_nothing_until_it_resumes(cluster, noisy):
    """Adversary: anyone holding the gateway's signing key while the committee has
    suspended the project. The key service refuses (undecided: the refusal is not the
    query's outcome) until the portal's statement that the grant resumed; then the same
    question is answered once."""
    granted = grant(noisy, project=f"suspended-{uuid.uuid4().hex[:6]}")
    spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                         bounds=(0, 30000))
    suspended = _change(noisy, granted, "suspend", "audit pending")
    assert suspended.status_code == 200 and suspended.json()["key_service_told"], suspended.text
    refused = _ask_directly(cluster, granted, spec)
    assert refused.status_code == 403 and "suspended" in refused.json()["reason"], \
        refused.text
    assert _change(noisy, granted, "resume", "audit closed").status_code == 200
    answered = _ask_directly(cluster, granted, spec)
    assert answered.status_code == 200 and answered.json()["outcome"] == "released", \
        answered.text


def test_a_grant_state_statement_is_the_portals_or_nothing(cluster, noisy):
    """Adversary: anyone who can reach the gateway's admin API or the key service, with a
    statement the portal did not sign, or the portal's statement about another project.
    A forged statement changes nothing at the key service (401); a statement that does
    not match the change asked of the gateway is refused there (4xx, the grant as it
    was)."""
    granted = grant(noisy, project=f"states-{uuid.uuid4().hex[:6]}")
    other = grant(noisy, project=f"states-{uuid.uuid4().hex[:6]}")
    forged = authorization.state_statement(Signer(cluster.root / "forger.pem"),
                                           granted["grant"]["project"], "active", "x")
    posted = httpx.post(f"{cluster.keys_url}/v1/grant-states", json={"statement": forged},
                        timeout=30)
    assert posted.status_code == 401, posted.text
    for mismatched in (_change(noisy, granted, "revoke", "x",
                               project=other["grant"]["project"]),
                       _change(noisy, granted, "revoke", "x", signer=Signer(
                           cluster.root / "forger.pem"))):
        assert mismatched.status_code in (400, 401, 422), mismatched.text
    assert noisy.admin("GET", f"/v1/admin/grants/{granted['grant']['id']}").json()[
        "status"] == "active"


def test_the_gateways_key_cannot_spell_a_question_another_way_at_the_sites(cluster, noisy):
    """Adversary: anyone holding the gateway's signing key, who asks the sites directly.

    The gateway writes a question's public default bounds in before it asks; a site
    refuses a question that leaves them out, so the key holder cannot get a second noise
    share for one question by spelling it without its bounds (other bounds are another
    question, charged at the key service like any other)."""
    granted = grant(noisy, project=f"spelling-{uuid.uuid4().hex[:6]}")
    document = granted["authorization"]
    bare = FederatedSpec(dataset=DATASET, kind="mean", field="length_of_stay", epsilon=1.0)
    parts = _parts(cluster, bare, authorization.query_id(document["payload"]["id"],
                                                         bare.fingerprint()), document)
    assert parts == [], f"{len(parts)} site(s) answered a question without its bounds"
    written = bare.model_copy(update={"bounds": (0.0, 365.0)})
    parts = _parts(cluster, written, authorization.query_id(document["payload"]["id"],
                                                            written.fingerprint()), document)
    assert len(parts) == len(cluster.sites)


def test_the_portals_revocation_reaches_the_key_service(cluster, noisy, tmp_path):
    """The portal's own path (``portal.gateway.change_grant``, what the committee's
    revoke button calls) against the gateway as deployed: the statement it signs passes
    the gateway's check and reaches the key service, which then refuses the gateway's key
    under the revoked project's authorization."""
    application = 9000 + uuid.uuid4().int % 1000
    granted = grant(noisy, project=f"application-{application}")
    settings = PortalSettings(state_dir=cluster.portal_key.parent, gateway_url=noisy.url,
                              gateway_token_file=noisy.state_dir / "admin.token",
                              database_url=f"sqlite:///{tmp_path / 'portal.db'}")
    change_grant(settings, granted["grant"]["id"], application, "revoke", "breach")
    assert noisy.admin("GET", f"/v1/admin/grants/{granted['grant']['id']}").json()[
        "status"] == "revoked"
    answer = _ask_directly(cluster, granted, FederatedSpec(
        dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0, bounds=(0, 40000)))
    assert answer.status_code == 403 and "revoked" in answer.json()["reason"], answer.text
