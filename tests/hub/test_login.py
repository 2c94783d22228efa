"""A researcher signs in to the portal in a real browser (password and TOTP code), sees the
project's sandbox ready, clicks "Open sandbox" and lands in JupyterLab — the hub signs them
in through the portal (OAuth2). Someone else's sandbox stays closed to them."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from sandbox.hub.names import server_name
from tests.browser.conftest import ARTIFACTS, browser  # noqa: F401  (fixture)


def test_open_the_sandbox_from_the_portal(stack, browser):  # noqa: F811
    project, researcher = stack.approved_project()
    assert stack.hub().wait_ready(f"user-{researcher.id}", server_name(project)).ready
    page = browser.new_page(locale="zh-CN")
    page.goto(f"{stack.portal_url}/login")
    page.fill("#email", researcher.email)
    page.fill("#password", "Hub-test-42")
    page.click("button.primary")
    page.fill("#code", stack.keys.code(researcher.email))  # every account: a TOTP code
    page.click("button.primary")
    expect(page).not_to_have_url(re.compile(r"/(mfa|login)$"))
    page.goto(f"{stack.portal_url}/applications/{project}")
    expect(page.locator("#sandbox-status")).to_have_attribute("data-status", "ready")
    page.screenshot(path=str(ARTIFACTS / "hub-01-project-sandbox-ready.png"), full_page=True)
    with page.expect_popup() as opened:
        page.click("#open-sandbox")
    lab = opened.value
    expect(lab.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
    assert lab.url.startswith(f"{stack.hub_url}/user/user-{researcher.id}/{server_name(project)}")
    expect(lab.get_by_text("getting-started.ipynb")).to_be_visible()
    lab.screenshot(path=str(ARTIFACTS / "hub-02-jupyterlab.png"))

    # another researcher's sandbox is not theirs to open
    other_project, other = stack.approved_project()
    other_status = stack.hub().wait_ready(f"user-{other.id}", server_name(other_project))
    response = lab.goto(f"{other_status.url}lab")
    refused = response is not None and response.status in (403, 404)
    sent_away = "jp-Launcher" not in lab.content()
    assert refused or sent_away, (lab.url, response.status if response else None)
    lab.screenshot(path=str(ARTIFACTS / "hub-03-other-sandbox-refused.png"))
    page.close()
