"""What the browser tests share: Chromium (Debian's, driven by Playwright), and a portal
served as its own process beside a gateway process and a real SMTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from portal.config import PortalSettings
from tests.conftest import ROOT
from tests.mail import Inbox, start_smtp
from tests.services import GatewayProcess, free_port, portal_env
from tests.tiers import tier

ARTIFACTS = ROOT / "test-artifacts" / "browser"
PASSWORD = "Browser-test-42"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CTL = str(Path(sys.executable).parent / "sandboxctl")


@dataclass
class PortalStack:
    url: str
    env: dict[str, str]
    gateway: GatewayProcess
    inbox: Inbox
    root: Path

    @property
    def settings(self) -> PortalSettings:
        return PortalSettings(**{k.removeprefix("SANDBOX_PORTAL_").lower(): v
                                 for k, v in self.env.items()
                                 if k.startswith("SANDBOX_PORTAL_")})

    def create_user(self, email: str, name: str, role: str, institution: str) -> None:
        """An account made from the command line; ``institution`` names a registry entry
        (any of its spellings) or is empty."""
        subprocess.run([CTL, "portal", "create-user", "--email", email, "--name", name,
                        "--role", role, "--institution", institution, "--password",
                        PASSWORD], env=self.env, check=True, capture_output=True, cwd=ROOT)

    def add_institution(self, name_zh: str, name_en: str, *aliases: str) -> None:
        """A registry entry, added the way an admin does from the command line."""
        subprocess.run([CTL, "portal", "institution", "add", "--zh", name_zh, "--en", name_en,
                        *(a for alias in aliases for a in ("--alias", alias))],
                       env=self.env, check=True, capture_output=True, cwd=ROOT)


def portal_stack(dataset: Path, root: Path, before_serving=None,
                 env: dict[str, str] | None = None,
                 sign_in_rate: str | None = "300 per minute") -> Iterator[PortalStack]:
    """Gateway, SMTP and ``sandboxctl portal serve`` over ``dataset``; ``before_serving``
    (given the stack) runs once the database exists and before the portal starts; ``env``
    adds or overrides SANDBOX_PORTAL_* settings. One browser session signs many people in
    from 127.0.0.1 within a minute, so the per-address sign-in limit is raised to
    ``sign_in_rate``; None keeps the portal's own limit (as the sign-in attacks need)."""
    served = root / "datasets"
    served.mkdir()
    os.symlink(dataset, served / "emr-visits")
    gateway = GatewayProcess(served, root / "gateway", f"sqlite:///{root / 'gw.db'}").start()
    smtp, inbox = start_smtp()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    raised = {"SANDBOX_PORTAL_LOGIN_RATE": sign_in_rate} if sign_in_rate else {}
    stack = PortalStack(url, os.environ | portal_env(root, served, gateway, inbox.port, url)
                        | raised | (env or {}), gateway, inbox, root)
    if before_serving is not None:
        before_serving(stack)
    portal = subprocess.Popen([CTL, "portal", "serve", "--port", str(port)], env=stack.env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield stack
    portal.terminate()
    portal.wait(10)
    smtp.stop()
    gateway.stop()


def confirm_export(page, url: str, application_id: int, code: str, shot=None) -> None:
    """The researcher (signed in on ``page``) confirms the request their sandbox sent, as
    the project page offers it: **Confirm export request**, a fresh code, confirm (the page
    collects the request from the gateway when it opens). ``shot`` photographs the
    confirmation page with the code typed."""
    page.goto(f"{url}/applications/{application_id}")
    page.locator(".confirm-export").first.click()
    expect(page.locator("#export-state")).to_have_attribute("data-state", "unconfirmed")
    expect(page.locator(".responsibility")).to_have_text("数据安全责任由本人承担")
    page.fill("#code", code)
    if shot:
        shot(page)
    page.click("#confirm")
    expect(page.locator(".flash")).to_contain_text("导出申请已确认")


@pytest.fixture(scope="module")
@tier("browser")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield instance
        instance.close()
