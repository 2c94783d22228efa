"""The whole approval path through the portal, against a running gateway and a real SMTP
server: apply, assign a conflict-free panel, score, decide with a field removed, sign the
DUA, and the grant exists on the gateway with the removed field refused."""

from __future__ import annotations

import hashlib
import html
import io
import uuid

import httpx
import pytest
from pypdf import PdfReader

from portal import create_app
from portal.models import Agreement, Application
from sandbox.client import Gateway, GatewayError
from tests.mail import start_smtp
from tests.portal.conftest import make_user, sign_in
from tests.signin import fresh_code

ELIGIBLE = {"title": "主任医师", "years_experience": 12, "credit_grade": "A",
            "institution": "岭南大学", "research_field": "卫生经济学"}


@pytest.fixture(scope="module")
def smtp():
    controller, inbox = start_smtp()
    yield inbox
    controller.stop()


@pytest.fixture(scope="module")
def flow_app(portal_settings, gateway, smtp):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token",
        "smtp_port": smtp_port(smtp)})
    return create_app(settings)


def smtp_port(inbox) -> int:
    return inbox.port


def person(app, role: str, **profile):
    address = f"{role}-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, address, role=role, enrolled=False, **profile)
    client = app.test_client()
    sign_in(client, address)  # every role enrols an authenticator at its first sign-in
    return client, address


def test_apply_review_decide_sign_and_query(flow_app, gateway, smtp):
    app = flow_app
    researcher, researcher_email = person(app, "researcher", verified=True, **ELIGIBLE)
    response = researcher.post("/applications/new", data={
        "dataset": "emr-visits", "title": "住院费用的年龄差异", "summary": "横断面研究",
        "purpose": "medical_research", "non_profit": "1", "epsilon": "2", "term_months": "6",
        "field:age_band": "1", "why:age_band": "分层",
        "field:total_cost": "1", "why:total_cost": "结局",
        "field:department": "1", "why:department": "混杂因素"})
    app_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert researcher.post(f"/applications/{app_id}/submit").status_code == 302

    chair, _ = person(app, "chair", institution="岭南卫健委")
    experts = [person(app, "expert", institution=f"医院{i}") for i in range(3)]
    _conflicted, conflicted_email = person(app, "expert", institution="岭南大学")
    with app.extensions["portal.sessions"]() as db:
        from sqlalchemy import select

        from portal.models import User
        ids = {u.email: u.id for u in db.scalars(select(User))}
    panel = [ids[e] for _, e in experts]
    conflicted_id = ids[conflicted_email]
    refused = chair.post(f"/committee/applications/{app_id}/assign",
                         data={"expert": [str(i) for i in [conflicted_id, *panel[:2]]]})
    assert refused.status_code == 422
    assert "与申请人同属岭南大学" in html.unescape(refused.get_data(as_text=True))
    assert chair.post(f"/committee/applications/{app_id}/assign",
                      data={"expert": [str(i) for i in panel]}).status_code == 302
    assert all(smtp.to(address) for _, address in experts)

    for number, (client, _) in enumerate(experts):
        scored = client.post(f"/committee/applications/{app_id}/review", data={
            "legality": "5", "consistency": "4", "value": str(3 + number % 2),
            "leakage_risk": "2", "cost": "3", "comments": "方法可行",
            "remove": ["department"] if number < 2 else []})
        assert scored.status_code == 302
    page = chair.get(f"/committee/applications/{app_id}").get_data(as_text=True)
    assert all(e.split("@")[0] in page for _, e in experts)
    assert 'data-recommendation="approve"' in page

    decided = chair.post(f"/committee/applications/{app_id}/decide", data={
        "verdict": "approve", "remove": ["department"], "epsilon": "1", "delta": "0",
        "term_months": "6", "reasons": "科学价值高；删除非必要字段"})
    assert decided.status_code == 302
    assert any("approved" in m["Subject"] + m.get_content() for m in smtp.to(researcher_email))

    assert researcher.post(f"/applications/{app_id}/sign", data={}).status_code == 422
    assert researcher.post(f"/applications/{app_id}/sign",
                           data={"accept": "1"}).status_code == 302
    asked = researcher.get(f"/applications/{app_id}/agreement.pdf")
    assert asked.status_code == 200 and b'name="code"' in asked.data  # step-up first
    pdf = researcher.post(f"/applications/{app_id}/agreement.pdf", data={
        "code": fresh_code(app.extensions["portal.sessions"], researcher_email)})
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.data)).pages)
    assert "住院费用的年龄差异" in text and "No resale" in text
    with app.extensions["portal.sessions"]() as db:
        assert db.get(Application, app_id).state == "active"
        record = db.get(Agreement, app_id)
        assert hashlib.sha256(pdf.data).hexdigest() == record.sha256 == \
            pdf.headers["X-Content-SHA256"]
        from portal.workflow import grant_token
        token = grant_token(app.extensions["portal.settings"], record)

    grant = gateway.admin("GET", f"/v1/admin/grants/{record.grant_id}").json()
    assert grant["fields"] == ["age_band", "total_cost"] and grant["epsilon_total"] == 1.0
    gw = Gateway(gateway.url, token)
    assert gw.mean("emr-visits", "total_cost", group_by=["age_band"], epsilon=0.5).df.height
    with pytest.raises(GatewayError, match="outside this project's grant"):
        gw.count("emr-visits", where={"department": "儿科"}, epsilon=0.1)
    assert httpx.get(f"{gateway.url}/v1/health").status_code == 200

