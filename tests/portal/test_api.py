"""The JSON API: the same actions and the same authorisation as the pages, described in
OpenAPI, and fuzzed by schemathesis — which must never see a server error."""

from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import ROOT
from tests.portal.conftest import PASSWORD, make_user
from tests.signin import fresh_code

ELIGIBLE = {"title": "研究员", "years_experience": 15, "credit_grade": "A",
            "institution": "岭南医学院"}


def api_client(app):
    """A program's client: it says so (X-Requested-With), as a cross-site form cannot."""
    client = app.test_client()
    client.environ_base["HTTP_X_REQUESTED_WITH"] = "test"
    return client


def api_login(client, email: str, code: str | None = None):
    if code is None:
        code = fresh_code(client.application.extensions["portal.sessions"], email)
    body = {"email": email, "password": PASSWORD} | ({"code": code} if code else {})
    return client.post("/api/v1/session", json=body)


def privileged(app, role: str, institution: str) -> tuple:
    email = f"{role}-{uuid.uuid4().hex[:6]}@example.cn"
    user = make_user(app, email, role=role, institution=institution)
    client = api_client(app)
    assert api_login(client, email, code="").status_code == 401  # the code is required
    assert api_login(client, email).status_code == 200
    return client, user


def test_api_flow_with_reasons_and_roles(app):
    researcher = api_client(app)
    email = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, **ELIGIBLE)
    assert researcher.get("/api/v1/applications").status_code == 401
    assert api_login(researcher, email).json["role"] == "researcher"
    bad = researcher.post("/api/v1/applications", json={"dataset": "emr-visits"})
    assert bad.status_code == 422 and "title" in bad.json["reason"]
    unknown = researcher.post("/api/v1/applications", json={
        "dataset": "emr-visits", "title": "t", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 6,
        "fields": [{"field": "name", "justification": "x"}]})
    assert unknown.status_code == 422 and "unknown fields ['name']" in unknown.json["reason"]
    created = researcher.post("/api/v1/applications", json={
        "dataset": "emr-visits", "title": "API 申请", "purpose": "public_health",
        "non_profit": True, "epsilon": 1.5, "term_months": 6,
        "fields": [{"field": "sex", "justification": "分层"},
                   {"field": "total_cost", "justification": "结局"}]})
    assert created.status_code == 201
    app_id = created.json["id"]
    detail = researcher.get(f"/api/v1/applications/{app_id}").json
    assert detail["eligibility"] == [] and detail["actions"] == ["submit"]
    assert researcher.post(f"/api/v1/applications/{app_id}/submit", json={}).json["state"] == \
        "submitted"

    chair, _ = privileged(app, "chair", "卫健委")
    panel = [privileged(app, "expert", f"医院{i}") for i in range(3)]
    conflicted = privileged(app, "expert", "岭南医学院")
    refused = chair.post(f"/api/v1/applications/{app_id}/assign",
                         json={"experts": [conflicted[1].id, panel[0][1].id, panel[1][1].id]})
    assert refused.status_code == 403 and "institution" in refused.json["reason"]
    assert researcher.post(f"/api/v1/applications/{app_id}/assign",
                           json={"experts": [1]}).status_code == 403
    assert chair.post(f"/api/v1/applications/{app_id}/assign",
                      json={"experts": [e.id for _, e in panel]}).json["state"] == \
        "under_review"
    for client, _ in panel:
        scored = client.post(f"/api/v1/applications/{app_id}/scores", json={
            "scores": {"legality": 4, "consistency": 4, "value": 5, "leakage_risk": 1,
                       "cost": 3}, "remove_fields": ["sex"]})
        assert scored.status_code == 200
    summary = chair.get(f"/api/v1/applications/{app_id}/summary").json
    assert summary["quorum_met"] and summary["field_removals"] == {"sex": 3}
    early_sign = researcher.post(f"/api/v1/applications/{app_id}/agreement",
                                 json={"accept": True})
    assert early_sign.status_code == 422 and "approved" in early_sign.json["reason"]
    decided = chair.post(f"/api/v1/applications/{app_id}/decision", json={
        "verdict": "revise", "reasons": "请补充伦理批件"})
    assert decided.json["application"]["state"] == "revision_requested"
    again = researcher.post(f"/api/v1/applications/{app_id}/submit", json={})
    assert again.status_code == 200 and again.json["state"] == "submitted"
    twice = researcher.post(f"/api/v1/applications/{app_id}/submit", json={})
    assert twice.status_code == 403 and "cannot submit" in twice.json["reason"]


def test_openapi_document_is_published_and_current(client, cli):
    served = client.get("/api/v1/openapi.json").json
    committed = json.loads((ROOT / "docs" / "portal-openapi.json").read_text())
    assert served == committed, \
        "regenerate: sandboxctl portal openapi > docs/portal-openapi.json"
    assert "/api/v1/applications/{application_id}/decision" in served["paths"]


@pytest.fixture(scope="module")
def identities(app):
    """Session cookies of a researcher and a chair, so fuzzed bodies reach validation."""
    cookies = {}
    researcher = api_client(app)
    email = f"fuzz-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, **ELIGIBLE)
    api_login(researcher, email)
    cookies["researcher"] = researcher.get_cookie("session").value
    chair, _ = privileged(app, "chair", "卫健委")
    cookies["chair"] = chair.get_cookie("session").value
    return cookies


def test_no_server_errors(app, identities):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            for cookie in (None, *identities.values()):
                headers = {"X-Requested-With": "fuzz"} | (
                    {"Cookie": f"session={cookie}"} if cookie else {})
                response = case.call(headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

        fuzz()


def test_an_expert_declared_conflict_blocks_assignment(app):
    researcher = api_client(app)
    email = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    owner = make_user(app, email, **ELIGIBLE)
    api_login(researcher, email)
    app_id = researcher.post("/api/v1/applications", json={
        "dataset": "emr-visits", "title": "冲突测试", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 3,
        "fields": [{"field": "sex", "justification": "x"}]}).json["id"]
    researcher.post(f"/api/v1/applications/{app_id}/submit", json={})
    declaring, expert = privileged(app, "expert", "别的医院")
    page = declaring.post("/profile", data={"conflicts": f"{owner.name}\n某机构"})
    assert page.status_code == 302
    others = [privileged(app, "expert", f"其他{i}")[1] for i in range(2)]
    chair, _ = privileged(app, "chair", "卫健委")
    refused = chair.post(f"/api/v1/applications/{app_id}/assign",
                         json={"experts": [expert.id, *(e.id for e in others)]})
    assert refused.status_code == 403
    assert refused.json["reason"].endswith("declared a conflict of interest")
    assert refused.json["zh"].endswith("已声明利益冲突")


def test_nul_characters_are_refused_everywhere(client):
    json_body = client.post("/api/v1/session", json={"email": "\x00", "password": "x"})
    form = client.post("/login", data={"email": "a\x00@b.cn", "password": "x"})
    query = client.get("/?q=%00")
    for response in (json_body, form, query):
        assert response.status_code == 422
    assert json_body.json == {"error": "invalid_input",
                              "reason": "text may not contain NUL characters"}


def test_bearer_calls_are_not_held_to_the_cookie_rules(client):
    # the hub's service calls authenticate with a token, never the cookie: no Origin or
    # X-Requested-With needed (this token is wrong, so the call's own check refuses it)
    answer = client.post("/api/v1/hub/grant", json={"user": "u", "project": 1},
                         headers={"Authorization": "Bearer not-the-token"})
    assert answer.status_code == 401 and answer.json["error"] == "unauthenticated"
    cookie_call = client.post("/api/v1/applications", json={})
    assert cookie_call.status_code == 403 and cookie_call.json["error"] == "cross_site"
