"""Every route tried by every role and by anonymous users: only the allowed succeed."""

from __future__ import annotations

import uuid

import pytest

from portal.models import Application, Assignment, RequestedField
from tests.portal.conftest import login, make_user, sign_in

ROLES = ("anonymous", "researcher", "expert", "chair", "controller", "admin")
PUBLIC = frozenset(ROLES)
SIGNED_IN = PUBLIC - {"anonymous"}
NOBODY: frozenset[str] = frozenset()

# endpoint → roles that may use it
ACCESS: dict[str, frozenset[str]] = {
    "catalog.index": PUBLIC,
    "catalog.dataset": PUBLIC,
    "auth.login": PUBLIC,
    "auth.register": PUBLIC,
    "auth.language": PUBLIC,
    "auth.logout": PUBLIC,
    "auth.mfa": SIGNED_IN,
    "auth.profile": SIGNED_IN,
    "researcher.mine": frozenset({"researcher"}),
    "researcher.new": frozenset({"researcher"}),
    "researcher.show": frozenset({"researcher"}),
    "researcher.submit": frozenset({"researcher"}),
    "researcher.agreement": frozenset({"researcher"}),
    "researcher.sign": frozenset({"researcher"}),
    "researcher.agreement_pdf": frozenset({"researcher"}),
    "committee.queue": frozenset({"chair", "expert"}),
    "committee.show": frozenset({"chair"}),
    "committee.assign": frozenset({"chair"}),
    "committee.review": frozenset({"expert"}),
    "committee.decide": frozenset({"chair"}),
    "api.sign_in": PUBLIC,
    "api.sign_out": PUBLIC,
    "api.catalog": PUBLIC,
    "api.openapi": PUBLIC,
    "api.list_applications": frozenset({"researcher", "chair", "expert"}),
    "api.create_application": frozenset({"researcher"}),
    "api.get_application": frozenset({"researcher", "chair", "expert"}),
    "api.submit": frozenset({"researcher"}),
    "api.assign": frozenset({"chair"}),
    "api.score": frozenset({"expert"}),
    "api.summary": frozenset({"chair"}),
    "api.decide": frozenset({"chair"}),
    "api.sign": frozenset({"researcher"}),
    "hub.authorize": SIGNED_IN,
    "hub.issue_token": NOBODY,       # the hub's client credentials only
    "hub.userinfo": NOBODY,          # an OAuth bearer token only
    "hub.grant": NOBODY,             # the hub's service token only
    "hub.destruction": NOBODY,
    "hub.start": frozenset({"researcher"}),
    "researcher.destruction_form": frozenset({"researcher"}),
    "researcher.destruction_upload": frozenset({"researcher"}),
    "researcher.export_withdraw": frozenset({"researcher"}),
    "researcher.export_new": frozenset({"researcher"}),
    "researcher.export_bundle": frozenset({"researcher"}),
    "researcher.export_confirm": frozenset({"researcher"}),
    "controller.audit_page": frozenset({"controller"}),
    "controller.audit_verify": frozenset({"controller"}),
    "controller.audit_csv": frozenset({"controller"}),
    "controller.projects_page": frozenset({"controller"}),
    "controller.alerts_page": frozenset({"controller"}),
    "controller.exports_page": frozenset({"controller"}),
    "controller.export_page": frozenset({"controller"}),
    "controller.export_vote": frozenset({"controller"}),
    "controller.export_release": frozenset({"controller"}),
    "controller.export_bundle": frozenset({"controller"}),
    "controller.export_file_picture": frozenset({"controller"}),
    "controller.control": frozenset({"controller"}),
    "controller.destruction_page": frozenset({"controller"}),
    "controller.certificate": frozenset({"controller"}),
    "controller.decide": frozenset({"controller"}),
    "controller.blacklist_user": frozenset({"controller"}),
    "committee.claims": frozenset({"chair"}),
    "committee.confirm_claim": frozenset({"chair"}),
    "admin.institutions": frozenset({"admin"}),
    "admin.institution": frozenset({"admin"}),
    "admin.credentials": frozenset({"admin"}),
    "admin.verify": frozenset({"admin"}),
    "admin.evidence": frozenset({"admin", "chair"}),
}


@pytest.fixture(scope="module")
def world(app):
    """One user per role, and an application the researcher owns and the expert reviews."""
    users = {}
    for role in ROLES[1:]:
        users[role] = make_user(app, f"{role}-{uuid.uuid4().hex[:6]}@example.cn", role=role,
                                institution=f"{role} institute", title="研究员",
                                years_experience=20, credit_grade="A")
    ids = {}
    with app.extensions["portal.sessions"]() as db:
        for state in ("draft", "api_draft", "under_review"):
            application = Application(researcher_id=users["researcher"].id, title="matrix",
                                      purpose="medical_research", non_profit=True,
                                      state=state.removeprefix("api_"),
                                      fields=[RequestedField(
                                          dataset="emr-visits", field="sex",
                                          justification="x")])
            db.add(application)
            db.flush()
            ids[state] = application.id
        db.add(Assignment(application_id=ids["under_review"], expert_id=users["expert"].id))
        db.commit()
    return users, ids


def test_every_route_is_in_the_matrix(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()
                 if rule.endpoint != "static"}
    assert endpoints == set(ACCESS), "add new routes to ACCESS"


def _which(endpoint: str) -> str:
    """The application a route is tried on: one still a draft for the researcher's pages,
    another for the API's submit, one under review for everything else."""
    if endpoint.startswith("researcher."):
        return "draft"
    if endpoint == "api.submit":
        return "api_draft"
    return "under_review"


def _url(rule, app_id: int) -> str:
    values = {}
    for arg in rule.arguments:
        values[arg] = {"application_id": app_id, "dataset_id": "emr-visits",
                       "code": "en", "action": "suspend", "user_id": 1,
                       "export_id": 999, "claim_id": 999, "institution_id": 999,
                       "verification_id": 999, "file_id": 999}[arg]
    return rule.rule.replace("<int:application_id>", str(app_id)).replace(
        "<dataset_id>", "emr-visits").replace("<code>", "en").replace(
        "<action>", "suspend").replace("<int:user_id>", "1").replace(
        "<int:export_id>", "999").replace("<int:claim_id>", "999").replace(
        "<int:institution_id>", "999").replace(
        "<int:verification_id>", "999").replace(
        "<int:file_id>", "999") if values else rule.rule


SIGN_OUT = ("auth.logout", "api.sign_out")


@pytest.mark.parametrize("role", ROLES)
def test_only_allowed_roles_get_through(app, world, role):
    users, app_id = world
    signed_in = None
    if role != "anonymous":  # one complete sign-in (each TOTP step works once), shared
        first = app.test_client()
        sign_in(first, users[role].email)
        signed_in = first.get_cookie("session").value
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        client = app.test_client()
        if rule.endpoint in SIGN_OUT and role != "anonymous":
            login(client, users[role].email)  # signing out ends a session: its own one
        elif signed_in is not None:
            client.set_cookie("session", signed_in)
        url = _url(rule, app_id[_which(rule.endpoint)])
        method = "GET" if "GET" in rule.methods else sorted(rule.methods - {"OPTIONS"})[0]
        if rule.rule.startswith("/api/") and method != "GET":  # as the portal's own pages
            response = client.open(url, method=method, json={},
                                   headers={"X-Requested-With": "fetch"})
        else:
            response = client.open(url, method=method, data={})
        location = response.headers.get("Location", "")
        assert response.status_code != 405, (method, url)
        denied = (response.status_code in (401, 403, 404)
                  or (response.status_code == 302 and "/login" in location))
        allowed = role in ACCESS[rule.endpoint]
        if rule.endpoint == "auth.logout":  # always succeeds, by sending you to sign in
            assert response.status_code == 302
            continue
        if (rule.endpoint in ("researcher.agreement", "researcher.agreement_pdf",
                             "researcher.destruction_form", "researcher.destruction_upload",
                             "researcher.export_withdraw", "researcher.export_bundle",
                             "researcher.export_confirm",
                             "controller.certificate", "controller.decide",
                             "controller.export_page", "controller.export_vote",
                             "controller.export_release", "controller.export_bundle",
                             "controller.export_file_picture",
                             "committee.confirm_claim", "admin.institution", "admin.evidence")
                and allowed):
            # no decision, agreement or destruction task exists yet: a 404, never a 403
            assert response.status_code == 404, (role, url)
            continue
        if rule.endpoint in ("hub.start", "researcher.export_new") and allowed:
            # the owner may ask, but a draft has no sandbox: refused with the reason
            assert response.status_code == 403 and (
                b"active project" in response.data
                or "有效项目".encode() in response.data), (rule.endpoint, response.data)
            continue
        if rule.endpoint == "admin.verify" and allowed:
            # an admin may, but an empty form is refused with a reason (or no such researcher)
            assert response.status_code in (404, 422), (role, url)
            continue
        if rule.endpoint == "controller.control" and allowed:
            # a controller may, but not on a project under review: refused with the reason
            assert response.status_code == 403 and b"cannot suspend" in response.data
            continue
        assert denied != allowed, (role, method, url, response.status_code, location)
