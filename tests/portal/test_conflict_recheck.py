"""Conflicts of interest checked again at scoring and at decision, through the JSON API:
an expert who moves to the applicant's institution after assignment is refused with a
reason, their earlier score stops counting, and the chair replaces them."""

from __future__ import annotations

import uuid

from portal.models import Institution
from tests.portal.conftest import make_user
from tests.portal.test_api import ELIGIBLE, api_client, api_login, privileged

SCORES = {"legality": 5, "consistency": 4, "value": 4, "leakage_risk": 2, "cost": 3}


def test_a_conflict_after_assignment_is_refused_and_excluded(app):
    researcher = api_client(app)
    email = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, verified=True, **ELIGIBLE)
    api_login(researcher, email)
    app_id = researcher.post("/api/v1/applications", json={
        "dataset": "emr-visits", "title": "复查冲突", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 6,
        "fields": [{"field": "sex", "justification": "分层"}]}).json["id"]
    assert researcher.post(f"/api/v1/applications/{app_id}/submit", json={}).status_code == 200
    chair, _ = privileged(app, "chair", "卫健委")
    panel = [privileged(app, "expert", f"复查医院{i}") for i in range(3)]
    assert chair.post(f"/api/v1/applications/{app_id}/assign",
                      json={"experts": [e.id for _, e in panel]}).status_code == 200
    mover = panel[0][0]
    assert mover.post(f"/api/v1/applications/{app_id}/scores",
                      json={"scores": SCORES}).status_code == 200
    with app.extensions["portal.sessions"]() as db:
        target = db.query(Institution).filter_by(name_zh=ELIGIBLE["institution"]).one().id
    assert mover.post("/profile", data={"institution": str(target)}).status_code == 302

    refused = mover.post(f"/api/v1/applications/{app_id}/scores", json={"scores": SCORES})
    assert refused.status_code == 403
    assert refused.json["error"] == "conflict_of_interest"
    assert refused.json["conflict"] == "institution"
    assert "与申请人同属岭南医学院" in refused.json["zh"]
    for client, _ in panel[1:]:
        assert client.post(f"/api/v1/applications/{app_id}/scores",
                           json={"scores": SCORES}).status_code == 200
    summary = chair.get(f"/api/v1/applications/{app_id}/summary").json
    assert [e["expert"] for e in summary["excluded"]] == [panel[0][1].id]
    assert str(panel[0][1].id) not in summary["per_expert"] and not summary["quorum_met"]
    decision = {"verdict": "approve", "reasons": "同意", "epsilon": 1, "term_months": 6}
    short = chair.post(f"/api/v1/applications/{app_id}/decision", json=decision)
    assert short.status_code == 422 and "no longer count" in short.json["reason"]

    # The mover cannot be added back; a replacement can, and the decision goes through.
    again = chair.post(f"/api/v1/applications/{app_id}/assign",
                       json={"experts": [panel[0][1].id]})
    assert again.status_code == 422  # already on the panel
    replacement, expert = privileged(app, "expert", "复查医院9")
    added = chair.post(f"/api/v1/applications/{app_id}/assign", json={"experts": [expert.id]})
    assert added.status_code == 200 and added.json["state"] == "under_review"
    assert replacement.post(f"/api/v1/applications/{app_id}/scores",
                            json={"scores": SCORES}).status_code == 200
    done = chair.post(f"/api/v1/applications/{app_id}/decision", json=decision)
    assert done.status_code == 200, done.json
    assert done.json["application"]["state"] == "approved"


def test_an_approval_on_self_declared_claims_is_refused(app):
    researcher = api_client(app)
    email = f"r-{uuid.uuid4().hex[:6]}@example.cn"
    make_user(app, email, **ELIGIBLE)  # title and credit grade not verified
    api_login(researcher, email)
    app_id = researcher.post("/api/v1/applications", json={
        "dataset": "emr-visits", "title": "自报资质", "purpose": "medical_research",
        "non_profit": True, "epsilon": 1, "term_months": 6,
        "fields": [{"field": "sex", "justification": "分层"}]}).json["id"]
    detail = researcher.get(f"/api/v1/applications/{app_id}").json
    assert detail["applicant"]["eligibility"]["eligible"]
    assert not detail["applicant"]["eligibility"]["approvable"]
    assert researcher.post(f"/api/v1/applications/{app_id}/submit", json={}).status_code == 200
    chair, _ = privileged(app, "chair", "卫健委")
    panel = [privileged(app, "expert", f"自报医院{i}") for i in range(3)]
    chair.post(f"/api/v1/applications/{app_id}/assign",
               json={"experts": [e.id for _, e in panel]})
    for client, _ in panel:
        client.post(f"/api/v1/applications/{app_id}/scores", json={"scores": SCORES})
    refused = chair.post(f"/api/v1/applications/{app_id}/decision", json={
        "verdict": "approve", "reasons": "同意", "epsilon": 1, "term_months": 6})
    assert refused.status_code == 403 and refused.json["error"] == "ineligible"
    assert "self-declared" in refused.json["reason"] and "自报" in refused.json["zh"]
    # Rejecting needs no verified claims.
    assert chair.post(f"/api/v1/applications/{app_id}/decision", json={
        "verdict": "reject", "reasons": "价值不足"}).status_code == 200
