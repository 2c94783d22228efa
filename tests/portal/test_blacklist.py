"""Blacklisting a researcher suspends their project's grant on a running gateway (real
HTTP) — their token stops working at once — and they fail eligibility from then on."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from approvals import eligibility
from approvals.states import Role
from portal import blacklist
from portal.models import Application, User
from sandbox import audit
from sandbox.client import Gateway, GatewayError
from sandbox.errors import InputError
from tests.portal.conftest import active_project

ELIGIBLE = {"title": "主任医师", "years_experience": 12, "credit_grade": "A",
            "institution": "岭南大学", "research_field": "流行病学"}


@pytest.fixture
def running(app, portal_settings, gateway):
    settings = portal_settings.model_copy(update={
        "gateway_url": gateway.url, "gateway_token_file": gateway.state_dir / "admin.token"})
    made = active_project(app, settings, ["sex"], epsilon=1.0, project_title="黑名单测试",
                          **ELIGIBLE)
    return settings, made.researcher_id, made.application_id, made.grant_id, made.token


def test_blacklisting_suspends_the_grant_on_the_gateway(app, gateway, running):
    settings, user_id, project, grant_id, token = running
    researcher = Gateway(gateway.url, token)
    assert researcher.budget()["epsilon"]["total"] == 1.0
    with app.extensions["portal.sessions"]() as db:
        suspended = blacklist.confirm(db, settings, db.get(User, user_id), "test:controller",
                                      "销毁证明逾期 30 天")
        assert suspended == [project]
        assert db.get(Application, project).state == "suspended"
        profile = db.get(User, user_id).profile
        applicant = eligibility.Applicant(Role.RESEARCHER, profile.title,
                                          profile.years_experience, profile.research_field,
                                          profile.credit_grade, profile.blacklisted)
        assert "blacklisted" in {r.code for r in eligibility.reasons(
            applicant, "medical_research", True, eligibility.EligibilityPolicy())}
    assert gateway.admin("GET", f"/v1/admin/grants/{grant_id}").json()["status"] == \
        "suspended"
    with pytest.raises(GatewayError) as refused:
        researcher.count("emr-visits", epsilon=0.1)
    assert refused.value.status == 403
    with app.extensions["portal.engine"].connect() as conn:
        actions = set(conn.execute(select(audit.audit_log.c.action)).scalars())
    assert {"researcher.blacklisted", "project.suspended"} <= actions
    with app.extensions["portal.sessions"]() as db:
        blacklist.lift(db, db.get(User, user_id), "test:controller", "已补交")
        assert not db.get(User, user_id).profile.blacklisted
        assert db.get(Application, project).state == "suspended"  # resumed one by one
        with pytest.raises(InputError, match="not blacklisted"):
            blacklist.lift(db, db.get(User, user_id), "test:controller", "again")
