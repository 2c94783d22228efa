"""Attacks on the federated path after its grant states, one spelling, numeric-feature
counts and 99.9 % margin, over the real process boundary: site and key-service processes
started with ``sandboxctl``, the gateway as its own process.

Each test asserts a guarantee of docs/federated.md, docs/threat-model.md or ADR 0011; a
test that fails shows the weakness is there.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import httpx
import polars as pl

from portal.config import PortalSettings
from portal.gateway import change_grant
from sandbox.client import Gateway, GatewayError
from sandbox.federated import authorization
from sandbox.federated.spec import FederatedSpec
from tests.attacks.test_federated_noise import _assemble
from tests.conftest import run_cli
from tests.federated.conftest import DATASET, grant
from tests.services import GatewayProcess, free_port, start_service, stop_process


def _rows(cluster) -> pl.DataFrame:
    """Every site's consented rows (for medical research), pooled: what the tests check
    their groups against."""
    frames = []
    for name in cluster.sites:
        restricted = cluster.parts / name / "restricted"
        consent = pl.read_parquet(restricted / "consent.parquet").select(
            "pseudonym", "medical_research")
        frames.append(pl.read_parquet(restricted / "records.parquet").join(
            consent, on="pseudonym").filter(pl.col("medical_research")))
    return pl.concat(frames)


def _refused(ask) -> str | None:
    """The refusal's reason, or None when something was released."""
    try:
        ask()
    except GatewayError as refused:
        return refused.reason
    return None


def test_one_filter_spelled_with_an_int_or_a_float_gets_no_fresh_noise(cluster, noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: "One question has one spelling: its filters are a set (their order
    and repeats do not count)"; "one question under one authorization has one id, so one
    noise share per site and one decision, however often or under whatever id it is
    asked". The set is taken over the filters' JSON, not their meaning: ``total_cost <
    5000`` and ``total_cost < 5000.0`` are one filter with two spellings, as are ``age_band
    in [40-59, 60-79]`` and ``in [60-79, 40-59, 60-79]`` (an ``in`` list's order and
    repeats count). Each spelling is another fingerprint, so another query id, fresh noise
    shares at every site and a fresh decryption of one and the same question."""
    gw = Gateway(noisy.url, grant(noisy, project=f"spell3-{uuid.uuid4().hex[:6]}")["token"])

    def ask(cost: float, ages: list[str]) -> tuple[int, float]:
        answer = gw.federated.mean(DATASET, "total_cost", epsilon=1.0, where=[
            {"field": "total_cost", "op": "lt", "value": cost},
            {"field": "age_band", "op": "in", "value": ages}])
        return answer.df["count"][0], round(answer.df["mean"][0], 9)

    answers = {
        "as asked": ask(5000, ["40-59", "60-79"]),
        "5000 as 5000.0": ask(5000.0, ["40-59", "60-79"]),
        "the in-list reordered, one value repeated": ask(5000, ["60-79", "40-59", "60-79"]),
    }
    assert len(set(answers.values())) == 1, (
        f"one question drew {len(set(answers.values()))} different noisy answers: {answers}")


# Cheap visits: ~13,700 rows, of which the few with a stay of a day or more belong to at
# most 4 patients (inpatients whose stay cost under 3,000).
CHEAP = [{"field": "total_cost", "op": "lt", "value": 3000}]
STAYED = {"field": "length_of_stay", "op": "ge", "value": 1}


def _cheap_stays(cluster) -> tuple[int, int]:
    chosen = _rows(cluster).filter(pl.col("total_cost") < 3000)
    stayed = chosen.filter(pl.col("length_of_stay") >= 1)["pseudonym"].n_unique()
    assert 1 <= stayed <= 4 and chosen.height >= 10_000, (stayed, chosen.height)
    return stayed, chosen.height


def test_a_mean_of_a_field_clamped_to_0_1_releases_no_group_under_5(cluster, noisy):
    """Adversary: a researcher with a project token.

    The threat model: a regression "whose numeric feature, clamped to [0, 1], is an
    indicator of such a group" is not released — "every count the answer reveals
    (numeric features' rows away from their bounds included) must exceed 5 patients'
    rows"; docs/federated.md: "clamped to [0, 1], a number is an indicator" and "A
    histogram cell whose noisy count is below 5 × r × m is withheld". The rows away from
    the bounds are counted for a regression's features only. A mean of ``length_of_stay``
    clamped to [0, 1] is the share of rows that stayed a day or more: n × mean is the
    count of a group of at most 4 patients, which the histogram of the same field and
    filter withholds and whose own mean is refused — the mean of the indicator is
    released (only its n, all the cheap visits, is checked)."""
    stayed, _ = _cheap_stays(cluster)
    gw = Gateway(noisy.url, grant(noisy, project=f"mean01-{uuid.uuid4().hex[:6]}")["token"])
    histogram = gw.federated.histogram(DATASET, "length_of_stay", [0, 1, 365],
                                       epsilon=3.0, where=CHEAP)
    assert histogram.df["suppressed"].to_list() == [False, True], histogram.df.to_dicts()
    assert "fewer than 5 patients" in (_refused(lambda: gw.federated.mean(
        DATASET, "total_cost", epsilon=2.0, where=[*CHEAP, STAYED])) or "released")
    reason = _refused(lambda: gw.federated.mean(DATASET, "length_of_stay", epsilon=5.0,
                                                bounds=(0, 1), where=CHEAP))
    assert reason is not None and "fewer than 5 patients" in reason, (
        f"released the mean of 'length_of_stay ≥ 1' (n × mean counts {stayed} patients' "
        "rows, the cell the histogram withholds)")


def test_a_regression_on_a_target_clamped_to_0_1_releases_no_group_under_5(cluster,
                                                                          noisy):
    """Adversary: a researcher with a project token.

    docs/federated.md: the key service checks "that every count the answer reveals covers
    at least 5 patients (… for each numeric feature the rows above its low bound and
    below its high bound — clamped to [0, 1], a number is an indicator …)"; ADR 0011: "A
    numeric feature's coefficient speaks about the rows away from its bounds". So does the
    target's: regressed on ``sex``, the target ``length_of_stay`` clamped to [0, 1] gives
    as intercept the share of women's cheap visits that stayed a day or more, and as
    intercept + coefficient the men's — times the groups' n, the counts of a group of at
    most 4 patients by sex. Only n and the sexes (thousands of rows each) are checked."""
    stayed, _ = _cheap_stays(cluster)
    gw = Gateway(noisy.url, grant(noisy, project=f"target01-{uuid.uuid4().hex[:6]}")["token"])
    reason = _refused(lambda: gw.federated.linear_regression(
        DATASET, "length_of_stay", ["sex"], epsilon=5.0, bounds=(0, 1), where=CHEAP))
    assert reason is not None and "fewer than 5 patients" in reason, (
        f"released a regression whose target 'length_of_stay ≥ 1' covers {stayed} patients")


# Men's visits other than emergencies: every stay of a day or more cost at least 2,400;
# of the visits without a stay, one to four (of as many patients) cost 2,400 or more.
MEN = [{"field": "visit_type", "op": "ne", "value": "急诊"},
       {"field": "sex", "op": "eq", "value": "男"}]


def test_a_revocation_made_while_the_key_service_is_unreachable_still_stops_it(
        cluster, tmp_path):
    """Adversary: anyone holding the gateway's signing key, when the key service could
    not be reached at the moment the committee revoked the project (a restart, a network
    partition — or traffic the adversary sent to make it so).

    The threat model: the portal's signed statement of the change reaches the key service,
    which then refuses the project's authorizations. Relayed once, a statement the key
    service missed was lost, and the revoked project's authorization bought decryptions as
    before once the key service was back. The gateway now keeps each statement until the
    key service has taken it and relays it again every few seconds: once it has, the
    revoked authorization decrypts nothing. (The seconds between the key service's return
    and the next relay remain: docs/threat-model.md, "Still can".)"""
    state, database = tmp_path / "keys", f"sqlite:///{tmp_path / 'keys.db'}"
    shutil.copytree(cluster.root / "keys", state,  # the cluster's secret context
                    ignore=shutil.ignore_patterns("audit-witness*", "audit-peers"))
    for name in cluster.sites:
        registered = run_cli("keys", "register-site", name,
                             cluster.root / f"site-{name}.pub.pem", "--state-dir", state,
                             "--database-url", database)
        assert registered.code == 0, registered.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = ["keys", "serve", "--state-dir", str(state), "--database-url", database,
             "--gateway-key", str(cluster.gateway_key), "--portal-key",
             str(cluster.portal_key), "--port", str(port)]
    keys = start_service(serve, url, tmp_path / "keys.log")
    gateway_state = tmp_path / "gateway"  # the gateway's key, a state of its own
    gateway_state.mkdir()
    for name in ("signing-key.pem", "public-key.pem"):
        shutil.copy(cluster.gateway_state / name, gateway_state / name)
    federation = tmp_path / "federation.json"
    federation.write_text(json.dumps({"keys_url": url, "datasets": {DATASET: {
        "metadata": str(cluster.parts / "metadata.json"), "sites": cluster.sites}}}))
    gateway = GatewayProcess(cluster.root / "central", gateway_state,
                             f"sqlite:///{tmp_path / 'gateway.db'}",
                             federation_file=federation,
                             options=["--portal-key", str(cluster.portal_key)]).start()
    try:
        application = 8000 + uuid.uuid4().int % 1000
        granted = grant(gateway, project=f"application-{application}")
        stop_process(keys)  # the key service is unreachable for a moment
        settings = PortalSettings(state_dir=cluster.portal_key.parent, gateway_url=gateway.url,
                                  gateway_token_file=gateway_state / "admin.token",
                                  database_url=f"sqlite:///{tmp_path / 'portal.db'}")
        change_grant(settings, granted["grant"]["id"], application, "revoke", "breach")
        assert gateway.admin("GET", f"/v1/admin/grants/{granted['grant']['id']}").json()[
            "status"] == "revoked"
        relayed = gateway.admin("GET", "/v1/admin/grant-statements").json()
        assert [s["told_at"] for s in relayed] == [None]  # kept, not yet taken
        keys = start_service(serve, url, tmp_path / "keys.log")  # back
        deadline = time.monotonic() + 60  # the gateway relays it again within seconds
        while gateway.admin("GET", "/v1/admin/grant-statements").json()[0]["told_at"] \
                is None and time.monotonic() < deadline:
            time.sleep(0.5)
        spec = FederatedSpec(dataset=DATASET, kind="mean", field="total_cost", epsilon=1.0,
                             bounds=(0, 50000))
        document = granted["authorization"]
        stated = {k: granted["grant"][k] for k in (
            "id", "project", "expires_at", "datasets", "fields", "epsilon_total")} | {
            "status": "active", "epsilon_spent": 0.0}
        answer = httpx.post(f"{url}/v1/decrypt", timeout=300, json=_assemble(
            cluster, spec, authorization.query_id(document["payload"]["id"],
                                                  spec.fingerprint()), stated, document))
    finally:
        gateway.stop()
        stop_process(keys)
    assert answer.status_code != 200 or answer.json().get("outcome") != "released", (
        f"the revoked project's authorization was decrypted: {answer.json()}")
