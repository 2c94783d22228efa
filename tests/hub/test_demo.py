"""A newcomer's first ten minutes, from `make run`'s seeded state (the stack seeded by
`sandboxctl demo seed`, see conftest.py): sign in as the demo researcher in Chromium with
the password and TOTP secret the seed printed, open the demo project's sandbox from the
portal, and get a DP answer by typing a query into JupyterLab."""

from __future__ import annotations

import re

import httpx
import pyotp
from playwright.sync_api import expect
from sqlalchemy import select

from portal import demo
from portal.models import Agreement, Application
from sandbox import receipts
from sandbox.audit import audit_log
from sandbox.hub.names import server_name
from tests.browser.conftest import ARTIFACTS, browser  # noqa: F401  (fixture)

QUERY = 'from sandbox.client import Gateway; gw = Gateway.from_env(); ' \
        'gw.count("emr-visits", epsilon=0.1)'
TITLE = "门诊与住院费用的人群差异研究"


def printed_account(output: str, role: str) -> dict[str, str]:
    """A row of the accounts table the seed printed, as the newcomer reads it."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == role and len(cells) == 4:
            return {"email": cells[1], "password": cells[2], "totp_secret": cells[3]}
    raise AssertionError(f"no {role} row in:\n{output}")


def test_sign_in_open_the_sandbox_and_get_a_dp_answer(stack, browser):  # noqa: F811
    assert "first ten minutes" in stack.demo
    researcher = printed_account(stack.demo, "researcher")
    page = browser.new_page(locale="zh-CN")
    page.goto(f"{stack.portal_url}/login")
    page.fill("#email", researcher["email"])
    page.fill("#password", researcher["password"])
    page.screenshot(path=str(ARTIFACTS / "demo-01-sign-in.png"), full_page=True)
    page.click("button.primary")
    if "/mfa" in page.url:  # as with an authenticator app holding the printed secret
        expect(page.locator("#totp-secret")).to_have_count(0)  # enrolled: no QR code
        page.fill("#code", pyotp.TOTP(researcher["totp_secret"]).now())
        page.screenshot(path=str(ARTIFACTS / "demo-02-code.png"), full_page=True)
        page.click("button.primary")
    expect(page).not_to_have_url(re.compile(r"/(mfa|login)"))
    page.goto(f"{stack.portal_url}/applications/")
    page.screenshot(path=str(ARTIFACTS / "demo-03a-my-applications.png"), full_page=True)
    page.click(f"text={TITLE}")
    expect(page.locator("#sandbox-status")).to_have_attribute("data-status", "ready",
                                                               timeout=120_000)
    project = int(re.search(r"/applications/(\d+)", page.url)[1])
    page.screenshot(path=str(ARTIFACTS / "demo-03-project-ready.png"), full_page=True)

    with page.expect_popup() as opened:
        page.click("#open-sandbox")
    lab = opened.value
    expect(lab.locator(".jp-Launcher")).to_be_visible(timeout=90_000)
    lab.screenshot(path=str(ARTIFACTS / "demo-04-jupyterlab.png"))
    lab.locator('.jp-LauncherCard[data-category="Console"]').first.click()
    prompt = lab.locator(".jp-CodeConsole-promptCell .cm-content")
    expect(prompt).to_be_visible(timeout=60_000)
    expect(lab.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
    prompt.click()
    lab.keyboard.insert_text(QUERY)
    expect(prompt).to_have_text(QUERY)  # typed into the prompt, nowhere else
    prompt.press("Shift+Enter")
    answer = lab.locator(".jp-CodeConsole-content .jp-OutputArea-output").last
    expect(answer).to_contain_text("ε = 0.1", timeout=120_000)
    lab.screenshot(path=str(ARTIFACTS / "demo-05-dp-answer.png"))
    shown = answer.inner_text()
    assert "Error" not in shown, shown

    # what the page shows is a release the gateway recorded and signed, charged to the
    # demo project's grant
    release = re.search(r"release\s+(\S+):\s*ε = 0\.1", shown)[1]
    with stack.app.extensions["portal.sessions"]() as db:
        grant = db.get(Agreement, project).grant_id
    released = stack.gateway.admin("GET", f"/v1/admin/grants/{grant}/releases").json()
    mine = next(r for r in released if r["release"] == release)
    assert (mine["status"], mine["epsilon"], mine["dataset"]) == ("released", 0.1,
                                                                  "emr-visits")
    public_key = httpx.get(f"{stack.gateway.url}/v1/public-key").text.encode()
    payload = receipts.verify(mine["receipt"], public_key, receipts.Domain.RECEIPT)
    (count,) = payload["result"][0].values()
    assert f"{count}" in shown.replace(",", ""), (count, shown)
    page.close()


def test_a_stopped_demo_sandbox_is_started_again(stack):
    """What the seed does on a later `make run`: the restarted hub left the sandbox
    stopped, and it is started again through the portal (audited), ready to open."""
    researcher = printed_account(stack.demo, "researcher")
    with stack.app.extensions["portal.sessions"]() as db:
        project = db.query(Application).filter(Application.title == TITLE).one()
        user = f"user-{project.researcher_id}"
        assert project.researcher.email == researcher["email"]
    hub = stack.hub()
    hub.stop(user, server_name(project.id))
    assert not hub.status(user, server_name(project.id)).ready
    with stack.app.extensions["portal.sessions"]() as db:
        status = demo.sandbox(db, stack.settings, project.id, "cli:demo-test")
        entries = db.execute(select(audit_log.c.action, audit_log.c.actor)
                             .where(audit_log.c.subject == f"application:{project.id}")
                             .order_by(audit_log.c.seq)).all()
    assert status.ready and status.url.endswith(f"/user/{user}/{server_name(project.id)}/")
    assert tuple(entries[-1]) == ("sandbox.requested", "cli:demo-test")
