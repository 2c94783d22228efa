"""A researcher signs in to the hub through the portal (OAuth2) in a real browser and opens
their project's sandbox in JupyterLab; someone else's sandbox stays closed to them."""

from __future__ import annotations

from playwright.sync_api import expect

from sandbox.hub.names import server_name
from tests.browser.test_approval_flow import ARTIFACTS, browser  # noqa: F401  (fixture)


def test_sign_in_through_the_portal_and_open_the_sandbox(stack, browser):  # noqa: F811
    project, researcher = stack.approved_project()
    status = stack.hub().wait_ready(f"user-{researcher.id}", server_name(project))
    assert status.ready
    page = browser.new_page(locale="zh-CN")
    page.goto(f"{stack.hub_url}/hub/oauth_login")
    assert page.url.startswith(f"{stack.portal_url}/login")
    page.fill("#email", researcher.email)
    page.fill("#password", "Hub-test-42")
    page.click("button.primary")
    page.wait_for_url(f"{stack.hub_url}/hub/**")
    page.goto(f"{status.url}lab")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "hub-01-jupyterlab.png"))

    # another researcher's sandbox is not theirs to open
    other_project, other = stack.approved_project()
    other_status = stack.hub().wait_ready(f"user-{other.id}", server_name(other_project))
    response = page.goto(f"{other_status.url}lab")
    refused = response is not None and response.status in (403, 404)
    sent_away = "/hub/" in page.url and "jp-main-dock-panel" not in page.content()
    assert refused or sent_away, (page.url, response.status if response else None)
    page.close()
