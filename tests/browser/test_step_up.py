"""Step-up in a real browser (Playwright, Debian's Chromium) against the portal, the
gateway and a Jupyter server holding the project's workspace, each its own process: a
fresh TOTP code is asked — under the red "数据安全责任由本人承担" / "You bear personal
responsibility for the security of this data" — before an export is requested, before it
is released, and before the released bundle or the signed agreement is downloaded. A wrong
code and the code the user signed in with are refused, changing nothing; a fresh code
goes through. Screenshots go to test-artifacts/browser/stepup-*.png."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyotp
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal import create_app, exports
from portal import gateway as portal_gateway
from portal.models import (
    Agreement,
    Application,
    DecisionRecord,
    ExportRequest,
    Profile,
    Sandbox,
    User,
)
from portal.security import hash_password
from sandbox import audit
from sandbox.client import Gateway
from sandbox.exports import bundle
from sandbox.hub.names import server_name
from sandbox.hub.settings import shared_secret
from tests import committee
from tests.browser import screenshots
from tests.browser.conftest import ARTIFACTS, PASSWORD, PortalStack, portal_stack
from tests.browser.test_approval_flow import sign_in
from tests.services import free_port
from tests.signin import Authenticators

RESEARCHER, CONTROLLER = "stepup-researcher@lingnan.cn", "stepup-controller@lingnan.cn"
WARNING_ZH = "数据安全责任由本人承担"
WARNING_EN = "You bear personal responsibility for the security of this data"
RED = "rgb(192, 0, 0)"
DUA = b"%PDF-1.4\n% the signed agreement of the step-up test\n%%EOF\n"


def shot(page: Page, name: str) -> None:
    screenshots.save(page, ARTIFACTS / f"stepup-{name}.png")


def _workspace(root: Path, hub_port: int, user: str, server: str, token: str
               ) -> subprocess.Popen:
    """A Jupyter server serving the project's workspace where the hub would route it
    (``/user/<user>/<server>/``), answering the hub's API token — what the portal reads
    the sandbox's files through."""
    work = root / "workspace"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter-server"), "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={hub_port}", f"--ServerApp.root_dir={work}",
         f"--ServerApp.base_url=/user/{user}/{server}/",
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    contents = f"http://127.0.0.1:{hub_port}/user/{user}/{server}/api/contents/"
    for _ in range(300):
        try:
            if httpx.get(contents, headers={"Authorization": f"token {token}"},
                         timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the workspace's Jupyter server did not start")


def _seed(stack: PortalStack, keys: Authenticators, hub_port: int) -> dict:
    """A researcher's active project with a real grant, a release and a result table in
    its workspace; a controller. Both have enrolled authenticators."""
    app = create_app(stack.settings)
    now = datetime.now(UTC)
    with app.extensions["portal.sessions"]() as db:
        people = {}
        for email, role, name in ((RESEARCHER, "researcher", "林研究员"),
                                  (CONTROLLER, "controller", "审核员周")):
            secret = pyotp.random_base32()
            keys.add(email, secret)
            person = User(email=email, name=name, role=role,
                          password_hash=hash_password(PASSWORD), totp_secret=secret,
                          totp_enabled=True, profile=Profile(
                              institution=committee.entry(db, "岭南大学"), title="主任医师",
                              years_experience=12, credit_grade="A"))
            db.add(person)
            db.flush()
            people[role] = person
        application = Application(researcher_id=people["researcher"].id, title="门诊费用研究",
                                  purpose="medical_research", non_profit=True,
                                  state="active")
        db.add(application)
        db.flush()
        decision = DecisionRecord(application_id=application.id, verdict="approve",
                                  reasons="同意", fields=["sex", "visit_type"], epsilon=2.0,
                                  delta=0.0, term_months=6, decided_by=people["controller"].id)
        db.add(decision)
        grant_id, token = portal_gateway.create_grant(
            stack.settings, application.id, "medical_research", decision, ["emr-visits"],
            now + timedelta(days=90))
        db.add(Agreement(application_id=application.id, pdf=DUA, sha256="0" * 64,
                         signed_by=people["researcher"].id, grant_id=grant_id,
                         expires_at=now + timedelta(days=90)))
        hub_user, server = f"user-{people['researcher'].id}", server_name(application.id)
        db.add(Sandbox(application_id=application.id, hub_user=hub_user, server=server,
                       status="ready"))
        db.commit()
        project = application.id
    counts = Gateway(stack.settings.gateway_url, token).count(
        "emr-visits", group_by=["sex"], epsilon=0.2)
    work = stack.root / "workspace"
    work.mkdir()
    (work / "by-sex.csv").write_text("sex,n\n" + "\n".join(
        f"{r['sex']},{r['count']}" for r in counts.df.to_dicts()))
    jupyter = _workspace(stack.root, hub_port, hub_user, server,
                         shared_secret(stack.settings.secrets_dir, "hub-api.token"))
    return {"app": app, "project": project, "release": counts.release_id,
            "jupyter": jupyter}


@pytest.fixture(scope="module")
def world(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("step-up")
    keys, seeded, hub_port = Authenticators(), {}, free_port()
    for stack in portal_stack(dataset, root, lambda s: seeded.update(_seed(s, keys, hub_port)),
                              env={"SANDBOX_PORTAL_HUB_URL": f"http://127.0.0.1:{hub_port}",
                                   "SANDBOX_PORTAL_SECRETS_DIR": str(root / "secrets"),
                                   "SANDBOX_PORTAL_EXPORT_REVIEWERS": "1"}):
        yield {"url": stack.url, "keys": keys, "settings": stack.settings, **seeded}
    seeded["jupyter"].terminate()
    seeded["jupyter"].wait(10)


def _warned(page: Page, text: str) -> None:
    warning = page.locator(".responsibility")
    expect(warning).to_have_text(text)
    assert warning.evaluate("e => getComputedStyle(e).color") == RED


def _requests(world) -> list[ExportRequest]:
    with world["app"].extensions["portal.sessions"]() as db:
        return db.scalars(select(ExportRequest).where(
            ExportRequest.application_id == world["project"])).all()


def _entries(world, action: str) -> list[str]:
    with world["app"].extensions["portal.engine"].connect() as conn:
        return conn.execute(select(audit.audit_log.c.details).where(
            audit.audit_log.c.action == action)).scalars().all()


def test_step_up_before_export_request_release_and_downloads(world, browser):
    url, keys, project = world["url"], world["keys"], world["project"]

    # 1. the researcher requests an export of a result table from the workspace
    researcher = sign_in(browser, url, RESEARCHER, keys)
    sign_in_code = keys.used.get(RESEARCHER, "")
    researcher.goto(f"{url}/applications/{project}/exports/new")
    _warned(researcher, WARNING_ZH)
    researcher.check("input[name=file][value='by-sex.csv']")
    researcher.check(f"input[name=release][value='{world['release']}']")
    researcher.fill("#note", "表1 按性别")
    shot(researcher, "01-export-request-asks-for-a-fresh-code")
    researcher.fill("#code", keys.wrong(RESEARCHER))
    researcher.click("#export-form button.primary")
    expect(researcher.locator(".problems")).to_contain_text("验证码错误")
    expect(researcher.locator("input[name=file][value='by-sex.csv']")).to_be_checked()
    shot(researcher, "02-export-request-wrong-code-refused")
    researcher.fill("#code", sign_in_code)  # the code typed at sign-in is spent
    researcher.click("#export-form button.primary")
    expect(researcher.locator(".problems")).to_contain_text("已使用过")
    assert _requests(world) == [], "a refused code sends nothing"
    researcher.fill("#code", keys.code(RESEARCHER))
    researcher.click("#export-form button.primary")
    expect(researcher.locator("#exports tr")).to_have_count(1)
    shot(researcher, "03-export-requested-with-a-fresh-code")
    [request] = _requests(world)
    assert request.state == "under_review", request.checks

    # 2. a controller (English pages) approves, then releases with a fresh code
    controller = sign_in(browser, url, CONTROLLER, keys, locale="en-US")
    controller.goto(f"{url}/controller/exports/{request.id}")
    controller.click("button[value=approve]")
    expect(controller.locator("#export-state")).to_have_attribute("data-state", "approved")
    _warned(controller, WARNING_EN)
    shot(controller, "04-release-asks-for-a-fresh-code")
    controller.fill("#code", keys.wrong(CONTROLLER))
    controller.click("#release")
    expect(controller.locator(".problems")).to_contain_text("Wrong code")
    expect(controller.locator("#export-state")).to_have_attribute("data-state", "approved")
    shot(controller, "05-release-wrong-code-refused")
    controller.fill("#code", keys.code(CONTROLLER))
    controller.click("#release")
    expect(controller.locator("#export-state")).to_have_attribute("data-state", "released")
    shot(controller, "06-released-with-a-fresh-code")

    # 3. downloading the released bundle asks again
    controller.click("#bundle")
    _warned(controller, WARNING_EN)
    shot(controller, "07-bundle-download-asks-for-a-fresh-code")
    controller.fill("#code", keys.wrong(CONTROLLER))
    controller.click("#step-up button.primary")
    expect(controller.locator(".problems")).to_contain_text("Wrong code")
    shot(controller, "08-bundle-download-wrong-code-refused")
    manifest = bundle.verify(_download(controller, keys, CONTROLLER),
                             exports.signer(world["settings"]).public_pem)
    assert manifest["project"] == f"application-{project}"
    assert manifest["downloaded_by"]["account"] == CONTROLLER

    # the author fetches their own copy from the project page: a fresh code, their mark
    researcher.goto(f"{url}/applications/{project}")
    researcher.click("#exports a.bundle")
    _warned(researcher, WARNING_ZH)
    own = bundle.verify(_download(researcher, keys, RESEARCHER),
                        exports.signer(world["settings"]).public_pem)
    shot(researcher, "08b-researcher-downloaded-own-bundle")
    assert own["downloaded_by"]["account"] == RESEARCHER and RESEARCHER in own["watermark"]

    # 4. and so does the signed agreement (the researcher's pages, in Chinese)
    researcher.goto(f"{url}/applications/{project}/agreement")
    researcher.click("text=下载已签署的协议（PDF）")
    _warned(researcher, WARNING_ZH)
    shot(researcher, "09-agreement-download-asks-for-a-fresh-code")
    researcher.fill("#code", keys.wrong(RESEARCHER))
    researcher.click("#step-up button.primary")
    expect(researcher.locator(".problems")).to_contain_text("验证码错误")
    shot(researcher, "10-agreement-download-wrong-code-refused")
    assert _download(researcher, keys, RESEARCHER) == DUA

    passed = _entries(world, "step_up.passed")
    assert len(passed) == 5 and all(any(p in d for d in passed) for p in (
        "export_request", "export_release", "bundle_download", "agreement_download"))
    assert len(_entries(world, "step_up.failed")) == 4
    assert len(_entries(world, "totp.replay_refused")) == 1
    with world["app"].extensions["portal.engine"].connect() as conn:
        assert audit.verify(conn).ok


def _download(page: Page, keys: Authenticators, who: str) -> bytes:
    """A fresh code typed into the step-up form in front of a download: the file."""
    page.fill("#code", keys.code(who))
    with page.expect_download() as downloaded:
        page.click("#step-up button.primary")
    return Path(downloaded.value.path()).read_bytes()


def test_a_download_link_alone_gives_no_file(world, browser):
    """The download addresses answer a GET with the step-up form, never the file: a link
    followed with a stolen session cookie gets nothing."""
    url, keys, project = world["url"], world["keys"], world["project"]
    page = sign_in(browser, url, RESEARCHER, keys)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    path = f"/applications/{project}/agreement.pdf"
    answer = httpx.get(url + path, cookies=cookies)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(
        "text/html") and 'name="code"' in answer.text
    assert DUA not in answer.content
