"""The approval path clicked through in a real browser (Playwright driving Debian's
Chromium) against the portal and the gateway as their own processes, with a real SMTP
server. A screenshot of each step goes to test-artifacts/browser/."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.config import PortalSettings
from portal.db import connect
from portal.models import Agreement
from portal.workflow import grant_token
from sandbox import audit
from sandbox.client import Gateway, GatewayError
from tests.browser import screenshots
from tests.browser.conftest import ARTIFACTS, PASSWORD, PortalStack, portal_stack
from tests.signin import Authenticators

REGISTRY = [("岭南卫健委", "Lingnan Health Commission"), ("中山医院", "Zhongshan Hospital"),
            ("南方医院", "Nanfang Hospital"), ("珠江医院", "Zhujiang Hospital"),
            ("岭南大学", "Lingnan University")]
LINGNAN = "岭南大学 / Lingnan University"  # as the institution picker lists it
ACCOUNTS = [("chair@lingnan.cn", "周主任", "chair", "岭南卫健委"),
            ("expert1@lingnan.cn", "专家甲", "expert", "中山医院"),
            ("expert2@lingnan.cn", "专家乙", "expert", "南方医院"),
            ("expert3@lingnan.cn", "专家丙", "expert", "珠江医院"),
            ("expert4@lingnan.cn", "专家丁", "expert", "岭南大学"),
            ("admin@lingnan.cn", "管理员吴", "admin", "")]
CERTIFICATE = Path(__file__).with_name("certificate.pdf")  # evidence an admin verifies


def _committee(stack: PortalStack) -> None:
    for names in REGISTRY:
        stack.add_institution(*names)
    for account in ACCOUNTS:
        stack.create_user(*account)


@pytest.fixture(scope="module")
def stack(dataset, tmp_path_factory):
    for served in portal_stack(dataset, tmp_path_factory.mktemp("browser"), _committee):
        engine, _ = connect(served.env["SANDBOX_PORTAL_DATABASE_URL"])
        with engine.connect() as conn:  # accounts made from the command line are audited
            created = conn.execute(select(audit.audit_log.c.subject).where(
                audit.audit_log.c.action == "user.registered")).scalars().all()
        assert len(created) == len(ACCOUNTS)
        yield {"url": served.url, "gateway": served.gateway, "inbox": served.inbox,
               "root": served.root}


class Shots:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, page: Page, name: str) -> None:
        self.n += 1
        screenshots.save(page, ARTIFACTS / f"{self.n:02d}-{name}.png")


def sign_in(browser, url: str, email: str, keys: Authenticators,
            locale: str = "zh-CN", shot=None) -> Page:
    """Password, then the authenticator's code — enrolling it from the page's key at the
    account's first sign-in (every role); ``shot`` photographs the enrolment page."""
    page = browser.new_page(locale=locale)
    page.goto(f"{url}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button.primary")
    page.wait_for_load_state()
    if page.url.endswith("/mfa"):
        if email not in keys:  # enrolment: the QR code is drawn, the key shown beside it
            assert page.locator("img[alt]").evaluate("img => img.naturalWidth") > 0
            keys.add(email, page.inner_text("#totp-secret"))
            if shot:
                shot(page, "totp-enrolment")
        page.fill("#code", keys.code(email))
        page.click("button.primary")
    expect(page).not_to_have_url(re.compile(r"/(mfa|login)$"))
    return page


def register(browser, url: str, email: str, title: str, years: str,
             keys: Authenticators, institution: str = LINGNAN, other: str = "",
             shot=None) -> Page:
    """Register through the form: ``institution`` is the picker's label of a registry
    entry, or "other" with the name typed in ``other``; ``shot`` photographs the filled
    form, the TOTP enrolment and the page the first sign-in lands on."""
    page = browser.new_page(locale="zh-CN")
    page.goto(f"{url}/register")
    page.fill("#name", "王芳" if title.startswith("副") else "李雷")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    if institution == "other":
        page.select_option("#institution", "other")
        page.fill("#institution_other", other)
    else:
        page.select_option("#institution", label=institution)
    page.fill("#title", title)
    page.fill("#years_experience", years)
    page.fill("#research_field", "心血管流行病学")
    page.select_option("#credit_grade", "A")
    if shot:
        shot(page, "researcher-register")
    page.click("button.primary")
    page.close()
    signed_in = sign_in(browser, url, email, keys, shot=shot)
    if shot:
        shot(signed_in, "researcher-catalog")
    return signed_in


def draft(page: Page, url: str, shot=None) -> str:
    """A draft application; ``shot`` photographs the filled form before it is saved."""
    page.goto(f"{url}/applications/new?dataset=emr-visits")
    page.fill("#title", "高血压患者住院费用的年龄差异")
    page.fill("#summary", "回顾性横断面研究：按年龄段比较住院费用。")
    page.check("input[name=non_profit]")
    page.fill("#epsilon", "2")
    page.fill("#term_months", "6")
    for name, why in (("age_band", "按年龄分层"), ("total_cost", "主要结局"),
                      ("department", "调整科室差异")):
        page.check(f"input[name='field:{name}']")
        page.fill(f"textarea[name='why:{name}']", why)
    if shot:
        shot(page, "researcher-new-application")
    page.click("button.primary")
    return page.url.rsplit("/", 1)[1]


def verify_claims(browser, url: str, email: str, totp: Authenticators, shot=None) -> None:
    """The admin verifies a researcher's title and credit grade with an evidence file."""
    admin = sign_in(browser, url, "admin@lingnan.cn", totp)
    admin.goto(f"{url}/admin/credentials?q={email}")
    person = admin.locator(f"section.person[data-email='{email}']")
    for kind in ("title", "credit_grade"):
        claim = person.locator(f".claim[data-claim='{kind}']")
        claim.locator("input[type=file]").set_input_files(str(CERTIFICATE))
        claim.locator("button.primary").click()
        expect(admin.locator(".flash")).to_contain_text("SHA-256")
        person = admin.locator(f"section.person[data-email='{email}']")
    expect(person.locator("[data-basis=verified]")).to_have_count(2)
    if shot:
        shot(admin, "admin-credentials-verified")
    admin.close()


def test_researcher_to_grant_in_a_browser(stack, browser):
    url, shot, totp = stack["url"], Shots(), Authenticators()
    researcher_email = f"wang-{uuid.uuid4().hex[:4]}@lingnan.cn"
    researcher = register(browser, url, researcher_email, "副主任医师", "9", totp,
                          shot=shot)
    app_id = draft(researcher, url, shot)
    shot(researcher, "researcher-draft")
    researcher.click("text=提交数据委员会审查")
    expect(researcher.locator("#state")).to_have_attribute("data-state", "submitted")
    shot(researcher, "researcher-submitted")
    assert stack["inbox"].to("chair@lingnan.cn"), "the chair hears of the new application"

    junior = register(browser, url, f"li-{uuid.uuid4().hex[:4]}@lingnan.cn", "主治医师", "2",
                      totp)
    junior_id = draft(junior, url)
    expect(junior.locator(".problems")).to_contain_text("职称需为副高级及以上")
    expect(junior.locator("text=提交数据委员会审查")).to_have_count(0)
    shot(junior, "ineligible-refused-with-reasons")
    assert junior_id != app_id

    chair = sign_in(browser, url, "chair@lingnan.cn", totp)
    chair.goto(f"{url}/committee/applications/{app_id}")
    expect(chair.locator("text=与申请人同属岭南大学")).to_have_count(1)
    shot(chair, "chair-assign-experts")
    for name in ("专家丁", "专家甲", "专家乙"):
        chair.check(f"label:has-text('{name}') input")
    chair.click("text=分配并开始评审")
    expect(chair.locator(".problems")).to_contain_text("专家丁与申请人同属岭南大学")
    shot(chair, "conflicted-expert-refused")
    chair.goto(f"{url}/committee/applications/{app_id}")
    for name in ("专家甲", "专家乙", "专家丙"):
        chair.check(f"label:has-text('{name}') input")
    chair.click("text=分配并开始评审")
    expect(chair.locator("#state")).to_have_attribute("data-state", "under_review")
    shot(chair, "experts-assigned")

    for number, email in enumerate(("expert1@lingnan.cn", "expert2@lingnan.cn",
                                    "expert3@lingnan.cn")):
        expert = sign_in(browser, url, email, totp)
        expert.goto(f"{url}/committee/applications/{app_id}/review")
        for dimension, value in (("legality", "5"), ("consistency", "4"), ("value", "4"),
                                 ("leakage_risk", "2"), ("cost", "3")):
            expert.select_option(f"#{dimension}", value)
        if number < 2:
            expert.check("input[name=remove][value=department]")
        expert.fill("#comments", "研究设计合理")
        shot(expert, f"expert-{number + 1}-scores")
        expert.click("button.primary")
        expect(expert.locator(".flash")).to_contain_text("评分已记录")
        expert.close()

    chair.goto(f"{url}/committee/applications/{app_id}")
    expect(chair.locator("#recommendation")).to_have_attribute("data-recommendation",
                                                               "approve")
    # The title and credit grade are the applicant's word until an admin verifies them.
    expect(chair.locator("#eligibility")).to_have_attribute("data-approvable", "false")
    expect(chair.locator("#claim-title [data-basis]")).to_have_attribute(
        "data-basis", "self_declared")
    verify_claims(browser, url, researcher_email, totp, shot)
    chair.goto(f"{url}/committee/applications/{app_id}")
    expect(chair.locator("#eligibility")).to_have_attribute("data-approvable", "true")
    chair.select_option("#verdict", "approve")
    chair.check("fieldset input[name=remove][value=department]")
    chair.fill("#epsilon", "1")
    chair.fill("#reasons", "科学价值明确；科室字段非必要，予以删除")
    shot(chair, "chair-side-by-side-decision")
    chair.click("text=记录决定")
    expect(chair.locator("#decision")).to_have_attribute("data-verdict", "approve")

    researcher.goto(f"{url}/applications/{app_id}/agreement")
    researcher.check("input[name=accept]")
    shot(researcher, "researcher-agreement")
    researcher.click("text=签署协议")
    expect(researcher.locator("#signed")).to_contain_text("SHA-256")
    shot(researcher, "dua-signed")

    gateway = stack["gateway"]
    grants = [m for m in stack["inbox"].messages if "项目已启用" in m["Subject"]]
    assert grants, "the researcher is told the project is active"
    listing = httpx.get(f"{gateway.url}/v1/health").json()
    assert listing["datasets"] == ["emr-visits"]
    # The portal holds the project token, encrypted; read it the way provisioning will.
    root = stack["root"]
    settings = PortalSettings(database_url=f"sqlite:///{root / 'portal.db'}",
                              state_dir=root / "portal")
    _engine, sessions = connect(settings.database_url)
    with sessions() as db:
        record = db.get(Agreement, int(app_id))
        token = grant_token(settings, record)
    grant = gateway.admin("GET", f"/v1/admin/grants/{record.grant_id}").json()
    assert grant["fields"] == ["age_band", "total_cost"] and grant["epsilon_total"] == 1.0
    gw = Gateway(gateway.url, token)
    with pytest.raises(GatewayError, match="outside this project's grant"):
        gw.count("emr-visits", where={"department": "儿科"}, epsilon=0.1)
    assert gw.count("emr-visits", group_by=["age_band"], epsilon=0.1).df.height > 0
