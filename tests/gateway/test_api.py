"""The gateway over real HTTP, on SQLite and PostgreSQL: grants, answers, receipts, and a
4xx with a reason — never a charge — for every kind of bad request."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from sandbox import audit
from sandbox.client import Gateway, GatewayError
from sandbox.db import make_engine

COUNT = {"dataset": "emr-visits", "kind": "count", "epsilon": 0.5}


def client(gateway, grant) -> Gateway:
    return Gateway(gateway.url, grant["token"])


def spent(gateway, grant) -> float:
    return gateway.admin("GET", f"/v1/admin/grants/{grant['grant']['id']}").json()[
        "epsilon_spent"]


def test_a_query_is_charged_answered_and_receipted(gateway):
    grant = gateway.grant(epsilon=2.0)
    gw = client(gateway, grant)
    before = gw.budget()
    result = gw.count("emr-visits", where={"visit_type": "住院"}, epsilon=0.5)
    assert isinstance(result.value, int) and result.value > 0
    assert gw.budget()["epsilon"]["spent"] == before["epsilon"]["spent"] + 0.5
    payload = gw.verify(result.receipt)
    assert payload["release"] == result.release_id
    assert payload["result"] == [{"count": result.value}]
    assert payload["epsilon"] == 0.5 and payload["dataset"] == "emr-visits"
    listed = {r["release"]: r for r in gw.releases()}
    assert listed[result.release_id]["status"] == "released"


def test_an_identical_query_returns_the_stored_release_without_charge(gateway):
    grant = gateway.grant(epsilon=1.0)
    gw = client(gateway, grant)
    first = gw.mean("emr-visits", "total_cost", epsilon=0.4)
    again = gw.mean("emr-visits", "total_cost", epsilon=0.4)
    assert again.repeated and again.value == first.value
    assert again.release_id == first.release_id
    assert spent(gateway, grant) == pytest.approx(0.4)


def test_every_query_kind(gateway, backend):
    grant = gateway.grant(epsilon=10.0)
    gw = client(gateway, grant)
    assert gw.sum("emr-visits", "total_cost", bounds=(0, 50_000), epsilon=0.5).value > 0
    if backend == "spark":
        # OpenDP scores quantile candidates itself: refused on Spark, with the way round
        with pytest.raises(GatewayError, match="histogram over the same range") as refused:
            gw.quantiles("emr-visits", "length_of_stay", [0.5], bounds=(0, 60), epsilon=0.5)
        assert refused.value.status == 422 and spent(gateway, grant) == pytest.approx(0.5)
    else:
        quartiles = gw.quantiles("emr-visits", "length_of_stay", [0.25, 0.5, 0.75],
                                 bounds=(0, 60), epsilon=0.5).df
        assert quartiles.columns == ["q0.25", "q0.5", "q0.75"]
        assert quartiles.row(0)[0] <= quartiles.row(0)[2]
    hist = gw.histogram("emr-visits", "length_of_stay", [0, 1, 7, 30, 365], epsilon=0.5).df
    assert hist["bin"].to_list() == ["[0, 1)", "[1, 7)", "[7, 30)", "[30, 365]"]
    grouped = gw.count("emr-visits", group_by=["sex", "visit_type"], epsilon=0.5).df
    assert grouped.height == 6 and set(grouped["sex"]) == {"男", "女"}
    means = gw.mean("emr-visits", "total_cost", group_by=["visit_type"], bounds=(0, 100_000),
                    epsilon=0.5).df
    by_type = dict(zip(means["visit_type"], means["mean"], strict=True))
    assert by_type["住院"] > by_type["门诊"]  # inpatient stays cost more, noise or not
    private = gw.count("emr-visits", group_by=["diagnosis_code"], keys="private",
                       delta=1e-6, epsilon=1.0).df
    assert private.height > 0 and private["count"].drop_nulls().min() >= 5
    ranged = gw.count("emr-visits", where={"length_of_stay": (1, 10),
                                           "visit_type": ["住院", "急诊"]}, epsilon=0.5)
    assert ranged.value >= 0


def test_small_cells_are_suppressed(gateway):
    gw = client(gateway, gateway.grant(epsilon=10.0))
    cells = gw.count("emr-visits", group_by=["diagnosis_code", "age_band"], epsilon=1.0).df
    small = cells.filter(cells["suppressed"])
    assert small.height > 0
    assert small["count"].null_count() == small.height
    assert cells.filter(~cells["suppressed"])["count"].min() >= 5


def test_preview_reports_scale_and_error_bound_and_spends_nothing(gateway):
    grant = gateway.grant(epsilon=1.0)
    gw = client(gateway, grant)
    stats = gw.preview_count("emr-visits", epsilon=0.5)
    row = stats.row(0, named=True)
    assert row["distribution"] == "Integer Laplace"
    assert row["scale"] == pytest.approx(20 / 0.5)  # contribution bound 20, ε 0.5
    assert row["accuracy"] > row["scale"]
    assert spent(gateway, grant) == 0


def test_grant_lifecycle_refuses_with_reasons(gateway):
    grant = gateway.grant()
    gw = client(gateway, grant)
    gid = grant["grant"]["id"]
    assert gateway.admin("POST", f"/v1/admin/grants/{gid}/suspend",
                         {"reason": "DUA under review"}).json()["status"] == "suspended"
    with pytest.raises(GatewayError) as refused:
        gw.count("emr-visits", epsilon=0.1)
    assert refused.value.status == 403 and "suspended: DUA under review" in str(refused.value)
    gateway.admin("POST", f"/v1/admin/grants/{gid}/resume", {"reason": "ok"})
    assert gw.count("emr-visits", epsilon=0.1).value > 0
    gateway.admin("POST", f"/v1/admin/grants/{gid}/revoke", {"reason": "blacklisted"})
    with pytest.raises(GatewayError, match="revoked: blacklisted"):
        gw.count("emr-visits", epsilon=0.2)
    illegal = gateway.admin("POST", f"/v1/admin/grants/{gid}/resume", {"reason": "x"})
    assert illegal.status_code == 403 and "cannot resume a grant that is revoked" in \
        illegal.json()["reason"]


def test_a_grant_bound_to_networks_answers_only_from_them(gateway):
    grant = gateway.grant(epsilon=1.0)
    grant_id, gw = grant["grant"]["id"], client(gateway, grant)
    assert gw.budget()["epsilon"]["total"] == 1.0  # unbound: from anywhere
    bound = gateway.admin("PUT", f"/v1/admin/grants/{grant_id}/networks",
                          {"networks": ["10.99.0.16/28"]})
    assert bound.status_code == 200 and bound.json()["networks"] == ["10.99.0.16/28"]
    with pytest.raises(GatewayError, match="only from the project's sandbox") as refused:
        gw.budget()
    assert refused.value.status == 403
    assert gateway.admin("PUT", f"/v1/admin/grants/{grant_id}/networks",
                         {"networks": ["127.0.0.1/32"]}).status_code == 200
    assert gw.budget()["epsilon"]["total"] == 1.0
    bad = gateway.admin("PUT", f"/v1/admin/grants/{grant_id}/networks",
                        {"networks": ["not-a-network"]})
    assert bad.status_code == 422 and "not a network" in bad.json()["reason"]
    assert gateway.admin("PUT", "/v1/admin/grants/nope/networks",
                         {"networks": ["127.0.0.1/32"]}).status_code == 404
    assert httpx.put(f"{gateway.url}/v1/admin/grants/{grant_id}/networks",
                     json={"networks": ["0.0.0.0/0"]}).status_code == 401


def test_expired_grant_is_refused(gateway):
    past = gateway.admin("POST", "/v1/admin/grants", {
        "project": "old", "datasets": ["emr-visits"], "fields": ["sex"],
        "purpose": "medical_research", "epsilon": 1, "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422 and "in the past" in past.json()["reason"]


def test_admin_routes_need_the_service_token(gateway):
    grant = gateway.grant()
    for token in (None, "wrong", grant["token"]):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(f"{gateway.url}/v1/admin/grants", json={}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthenticated"
    response = httpx.get(f"{gateway.url}/v1/budget", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.json()["reason"] == "unknown project token"


BAD = [
    ({"dataset": "nope", "kind": "count", "epsilon": 0.1}, 403, "outside this project"),
    ({**COUNT, "filters": [{"field": "nope", "op": "eq", "value": 1}]}, 422,
     "unknown field 'nope'; allowed fields: age_band"),
    ({**COUNT, "filters": [{"field": "residence", "op": "eq", "value": "广东省"}]}, 403,
     "outside this project's grant"),
    ({**COUNT, "filters": [{"field": "length_of_stay", "op": "eq", "value": "ten"}]}, 422,
     "needs numbers"),
    ({**COUNT, "filters": [{"field": "visit_type", "op": "eq", "value": "火星"}]}, 422,
     "not among the public categories"),
    ({"dataset": "emr-visits", "kind": "mean", "field": "visit_type", "epsilon": 0.1}, 422,
     "needs a numeric field"),
    ({"dataset": "emr-visits", "kind": "mean", "field": "total_cost", "bounds": [0, 1e12],
      "epsilon": 0.1}, 422, "outside the public bounds"),
    ({"dataset": "emr-visits", "kind": "mean", "field": "total_cost", "bounds": [5, 1],
      "epsilon": 0.1}, 422, "low < high"),
    ({"dataset": "emr-visits", "kind": "histogram", "field": "length_of_stay",
      "bins": list(range(200)), "epsilon": 0.1}, 422, "too many bins"),
    ({**COUNT, "epsilon": 0}, 422, "greater than 0"),
    ({**COUNT, "epsilon": -1}, 422, "greater than 0"),
    ({**COUNT, "epsilon": 3.0}, 403, "only ε = 2, δ = 1e-05 remain"),
    ({**COUNT, "group_by": ["total_cost"]}, 422, "group_by needs text fields"),
    ({**COUNT, "sql": "select * from records"}, 422, "Extra inputs are not permitted"),
    ({**COUNT, "filters": [{"field": "length_of_stay", "op": "in", "value": [1, 2**64]}]},
     422, "within 64 bits"),
    ({**COUNT, "filters": [{"field": "length_of_stay", "op": "between",
                            "value": [0, 2**63]}]}, 422, "within 64 bits"),
    ({**COUNT, "filters": [{"field": "length_of_stay", "op": "ge", "value": -(2**63) - 1}]},
     422, "within 64 bits"),
]


@pytest.mark.parametrize(("spec", "status", "reason"), BAD)
def test_bad_queries_get_a_reason_and_cost_nothing(gateway, spec, status, reason):
    grant = gateway.grant(epsilon=2.0)
    response = httpx.post(f"{gateway.url}/v1/query", json=spec,
                          headers={"Authorization": f"Bearer {grant['token']}"})
    assert response.status_code == status, response.text
    body = response.json()
    assert reason in body["reason"] and "Traceback" not in response.text
    assert spent(gateway, grant) == 0
    assert client(gateway, grant).releases() == []


def test_malformed_and_oversized_bodies(gateway):
    grant = gateway.grant()
    headers = {"Authorization": f"Bearer {grant['token']}", "content-type": "application/json"}
    broken = httpx.post(f"{gateway.url}/v1/query", content=b"{not json", headers=headers)
    assert broken.status_code == 422 and broken.json()["error"] == "invalid_input"
    huge = httpx.post(f"{gateway.url}/v1/query", content=b" " * 100_000, headers=headers)
    assert huge.status_code == 413 and "over" in huge.json()["reason"]
    assert spent(gateway, grant) == 0


def test_client_errors_are_friendly(gateway):
    gw = client(gateway, gateway.grant(epsilon=1.0))
    with pytest.raises(GatewayError) as exhausted:
        gw.count("emr-visits", epsilon=5)
    assert "only ε = 1, δ = 1e-05 remain" in str(exhausted.value)
    assert exhausted.value.details["epsilon_remaining"] == 1.0
    with pytest.raises(GatewayError) as unknown:
        gw.mean("emr-visits", "weight", epsilon=0.1)
    assert unknown.value.details["allowed"][:2] == ["age_band", "department"]
    fields = gw.fields("emr-visits")
    assert "total_cost" in fields["name"].to_list()


def test_receipts_verify_offline_and_forgeries_fail(gateway, cli, tmp_path):
    gw = client(gateway, gateway.grant())
    result = gw.count("emr-visits", where={"sex": "女"}, epsilon=0.3)
    key = tmp_path / "gateway.pem"
    key.write_bytes(gw.public_key())
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(result.receipt, ensure_ascii=False))
    ok = cli("gateway", "verify-receipt", good, "--public-key", key)
    assert ok.code == 0 and f"release {result.release_id}" in ok.stdout
    forged = dict(result.receipt, payload={**result.receipt["payload"],
                                           "result": [{"count": 1}]})
    bad = tmp_path / "forged.json"
    bad.write_text(json.dumps(forged))
    refused = cli("gateway", "verify-receipt", bad, "--public-key", key)
    assert refused.code != 0 and "signature does not match" in refused.stderr
    with pytest.raises(Exception, match="signature does not match"):
        gw.verify(forged)


def test_rate_limit_per_token(fresh_gateway):
    fresh_gateway.rate_limit = 2
    fresh_gateway.start()
    gw = client(fresh_gateway, fresh_gateway.grant())
    codes = []
    for _ in range(15):
        try:
            gw.budget()
            codes.append(200)
        except GatewayError as exc:
            codes.append(exc.status)
    assert 429 in codes and codes[0] == 200


def test_audit_chain_records_and_verifies(gateway, cli):
    grant = gateway.grant()
    gw = client(gateway, grant)
    release = gw.count("emr-visits", where={"department": "儿科"}, epsilon=0.2)
    result = cli("audit", "verify", "--database-url", gateway.database_url)
    assert result.code == 0 and "chain intact" in result.stdout
    engine = make_engine(gateway.database_url)
    with engine.connect() as conn:  # who, what, and from where
        row = conn.execute(select(audit.audit_log).where(
            audit.audit_log.c.subject == f"release:{release.release_id}")).first()
    engine.dispose()
    assert row.actor == f"grant:{grant['grant']['id']}"
    assert json.loads(row.details)["ip"] == "127.0.0.1"


def test_nul_characters_never_reach_the_database(gateway):
    grant = gateway.grant()
    bad_project = gateway.admin("POST", "/v1/admin/grants", {
        "project": "p\x00", "datasets": ["emr-visits"], "fields": ["sex"],
        "purpose": "medical_research", "epsilon": 1, "expires_at": "2030-01-01T00:00:00Z"})
    bad_reason = gateway.admin("POST", f"/v1/admin/grants/{grant['grant']['id']}/suspend",
                               {"reason": "x\x00"})
    assert bad_project.status_code == bad_reason.status_code == 422
    assert gateway.admin("GET", f"/v1/admin/grants/{grant['grant']['id']}").json()[
        "status"] == "active"


def test_an_export_request_is_recorded_for_review(gateway, tmp_path):
    grant = gateway.grant()
    gw = client(gateway, grant)
    result = gw.count("emr-visits", group_by=["sex"], epsilon=0.3)
    table = tmp_path / "by-sex.csv"
    table.write_text("sex,n\n" + "\n".join(f"{r['sex']},{r['count']}"
                                             for r in result.df.to_dicts()))
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    answer = gw.export([table, figure], [result], note="表1")
    assert [f["name"] for f in answer["files"]] == ["by-sex.csv", "figure.png"]
    listed = gateway.admin("GET", "/v1/admin/exports").json()["exports"]
    mine = next(e for e in listed if e["id"] == answer["export"])
    assert mine["project"] == grant["grant"]["project"] and mine["note"] == "表1"
    assert mine["receipts"] == [result.receipt]
    later = gateway.admin("GET", "/v1/admin/exports?" + urlencode(
        {"after": mine["created_at"]})).json()
    assert answer["export"] not in {e["id"] for e in later["exports"]}
    with pytest.raises(GatewayError, match="hidden or given twice"):
        gw.export([table, table], [result])
    assert httpx.post(f"{gateway.url}/v1/exports", json={"files": [{
        "name": "../x", "content": ""}]}, headers={
        "Authorization": f"Bearer {grant['token']}"}).status_code == 422


def test_the_portal_records_an_export_for_a_project(gateway):
    """What the researcher picks on the project page: the project's releases listed with
    their receipts, and a request recorded on the project's behalf (not by its token)."""
    grant = gateway.grant()
    grant_id = grant["grant"]["id"]
    result = client(gateway, grant).count("emr-visits", epsilon=0.2)
    listed = gateway.admin("GET", f"/v1/admin/grants/{grant_id}/releases").json()
    assert [(r["release"], r["receipt"]) for r in listed] == [
        (result.release_id, result.receipt)]
    body = {"files": [{"name": "n.txt",  # larger than a query body may be
                       "content": base64.b64encode(b"n" * 100_000).decode()}],
            "receipts": [result.receipt], "note": ""}
    for token in (None, grant["token"]):  # the project's own token may not
        assert httpx.post(f"{gateway.url}/v1/admin/grants/{grant_id}/exports", json=body,
                          headers={"Authorization": f"Bearer {token}"} if token else {}
                          ).status_code == 401
    answer = gateway.admin("POST", f"/v1/admin/grants/{grant_id}/exports", body)
    assert answer.status_code == 201
    recent = gateway.admin("GET", "/v1/admin/audit?" + urlencode(
        {"since": listed[0]["created_at"]})).json()["entries"]
    [entry] = [e for e in recent if e["subject"] == f"export:{answer.json()['export']}"]
    assert entry["action"] == "export.submitted" and entry["actor"] == "service"
    assert json.loads(entry["details"])["grant"] == grant_id
    assert gateway.admin("GET", "/v1/admin/grants/nope/releases").status_code == 404
    gateway.admin("POST", f"/v1/admin/grants/{grant_id}/revoke", {"reason": "违规"})
    refused = gateway.admin("POST", f"/v1/admin/grants/{grant_id}/exports", body)
    assert refused.status_code == 403 and "revoked" in refused.json()["reason"]


def test_a_message_signed_by_the_gateway_never_passes_as_a_receipt(gateway, cli, tmp_path):
    """One key signs receipts and the gateway's messages to sites and the key service: a
    message carrying every field of a receipt (signed through the gateway's message path)
    is still refused as a receipt, by the CLI and by the export checks."""
    from sandbox.exports.checks import Outcome, check_bundle
    from sandbox.federated import messages
    from sandbox.receipts import Signer

    gw = client(gateway, gateway.grant())
    genuine = gw.count("emr-visits", epsilon=0.2).receipt
    signer = Signer(gateway.state_dir / "signing-key.pem")
    message = messages.sign(signer, "site:north", "aggregate", {
        k: v for k, v in genuine["payload"].items() if k != "domain"})
    disguised = tmp_path / "message.json"
    disguised.write_text(json.dumps(message, ensure_ascii=False))
    key = tmp_path / "gateway.pem"
    key.write_bytes(gw.public_key())
    refused = cli("gateway", "verify-receipt", disguised, "--public-key", key)
    assert refused.code != 0 and "not as a release-receipt" in refused.stderr
    project = genuine["payload"]["project"]
    checks = check_bundle([], [message], project, gw.public_key())
    assert [c.outcome for c in checks if c.check == "receipt"] == [Outcome.FAIL]
