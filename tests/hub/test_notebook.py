"""The example notebook runs inside a live sandbox (nbclient, the sandbox's own kernel and
environment) and its DP results carry receipts that verify against the gateway's key; the
researcher then asks, from the project page, to export the plot it saved."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

from portal.models import ExportRequest
from sandbox import receipts
from sandbox.hub.names import server_name
from tests.hub.stack import WORK, run_notebook

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PLOT = "mean-cost-by-age.png"


@pytest.fixture(scope="module")
def executed(stack):
    """A project whose sandbox ran the example notebook: (project, researcher, container,
    the receipts the notebook printed)."""
    project, researcher = stack.approved_project()
    assert stack.hub().wait_ready(f"user-{researcher.id}", server_name(project)).ready
    box = stack.container(project, researcher)
    # the workspace starts with the example notebook, identical to the repository's
    _printed, released = run_notebook(box, "getting-started.ipynb")
    return project, researcher, box, released


def test_getting_started_runs_in_a_sandbox(stack, executed):
    project, _researcher, box, released = executed
    public_key = httpx.get(f"{stack.gateway.url}/v1/public-key").text.encode()
    payloads = [receipts.verify(r, public_key, receipts.Domain.RECEIPT) for r in released]
    assert {p["project"] for p in payloads} == {f"application-{project}"}
    assert sum(p["epsilon"] for p in payloads) == 0.5
    code, _ = box.exec_run(["test", "-s", PLOT], user="1000:1000", workdir=WORK)
    assert code == 0, "the plot was saved in the workspace"


def test_researcher_requests_an_export_from_the_project_page(stack, executed):
    project, researcher, box, released = executed
    client = stack.app.test_client()  # the served portal's app, with CSRF protection on
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    client.post("/login", data={"email": researcher.email, "password": "Hub-test-42",
                                "csrf_token": token})
    token = CSRF.search(client.get("/mfa").get_data(as_text=True)).group(1)
    signed_in = client.post("/mfa", data={"code": stack.keys.code(researcher.email),
                                          "csrf_token": token})
    assert signed_in.status_code == 302 and not signed_in.headers["Location"].endswith(
        "/mfa")
    show = client.get(f"/applications/{project}").get_data(as_text=True)
    assert f"/applications/{project}/exports/new" in show, "the button is on the page"

    page = client.get(f"/applications/{project}/exports/new")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    token = CSRF.search(text).group(1)
    release_ids = [r["payload"]["release"] for r in released]
    assert f'value="{PLOT}"' in text and 'value="getting-started.ipynb"' in text
    assert all(f'value="{r}"' in text for r in release_ids)

    def requests() -> int:
        with stack.app.extensions["portal.sessions"]() as db:
            return db.query(ExportRequest).filter_by(application_id=project).count()

    # without a fresh TOTP code (step-up), nothing is sent
    assert "数据安全责任由本人承担" in text or "You bear personal responsibility" in text
    no_code = client.post(f"/applications/{project}/exports/new", data={
        "file": [PLOT], "release": release_ids, "csrf_token": token})
    assert no_code.status_code == 401 and 'role="alert"' in no_code.get_data(as_text=True)
    assert requests() == 0
    # a path outside the workspace, or a release of no such project: refused, nothing sent
    for form in ({"file": "../../etc/passwd", "release": release_ids},
                 {"file": PLOT, "release": ["0" * 32]}, {"release": release_ids}):
        refused = client.post(f"/applications/{project}/exports/new", data=form | {
            "csrf_token": token, "code": stack.keys.code(researcher.email)})
        assert refused.status_code == 422, form
        assert 'role="alert"' in refused.get_data(as_text=True)
    assert requests() == 0

    sent = client.post(f"/applications/{project}/exports/new", data={
        "file": [PLOT], "release": release_ids, "note": "图：各年龄组平均费用",
        "csrf_token": token, "code": stack.keys.code(researcher.email)})
    assert sent.status_code == 302, sent.get_data(as_text=True)[-2000:]
    _, plot = box.exec_run(["cat", PLOT], user="1000:1000", workdir=WORK)
    with stack.app.extensions["portal.sessions"]() as db:
        request = db.query(ExportRequest).filter_by(application_id=project).one()
        assert [(f.name, f.sha256) for f in request.files] == [
            (PLOT, hashlib.sha256(plot).hexdigest())]
        assert [r["payload"]["release"] for r in request.receipts] == release_ids
        assert request.note == "图：各年龄组平均费用"
        assert request.state == "under_review", request.checks
        assert {c["outcome"] for c in request.checks} <= {"pass", "review"}
        request_id = request.id
    # the code typed on the request form was the author's confirmation: unlike a bundle
    # sent with gw.export, nothing waits for another one
    shown = client.get(f"/applications/{project}").get_data(as_text=True)
    assert f"/exports/{request_id}/confirm" not in shown
    audit = httpx.get(f"{stack.gateway.url}/v1/admin/audit", headers={
        "Authorization": f"Bearer {stack.gateway.admin_token}"}).json()["entries"]
    submitted = [e for e in audit if e["action"] == "export.submitted"]
    assert [e["actor"] for e in submitted] == ["service"], "recorded as the portal's request"
