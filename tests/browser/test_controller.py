"""A controller's day in a real browser (Playwright, Debian's Chromium) against the portal
and the gateway as their own processes: verify the audit chain, watch ε spent against ε
granted, reject and then verify a destruction certificate the researcher uploads, confirm
a blacklisting — which suspends the researcher's grant on the running gateway — and see a
tampered audit row caught. Screenshots go to test-artifacts/browser/controller-*.png."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from sqlalchemy import update

from portal import create_app, exports, projects
from portal import gateway as portal_gateway
from portal.config import PortalSettings
from portal.models import (
    Agreement,
    Application,
    DecisionRecord,
    DestructionTask,
    Profile,
    User,
)
from portal.security import hash_password
from sandbox import audit
from sandbox.client import Gateway
from sandbox.exports import bundle
from tests import committee
from tests.browser import screenshots
from tests.browser.conftest import (
    ARTIFACTS,
    PASSWORD,
    PortalStack,
    confirm_export,
    portal_stack,
)
from tests.browser.test_approval_flow import sign_in
from tests.signin import Authenticators

CERTIFICATE = Path(__file__).with_name("certificate.pdf")
TOTP = Authenticators()  # each account's TOTP secret, once enrolled at its first sign-in


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshots.save(page, ARTIFACTS / f"controller-{name}.png")


@pytest.fixture(scope="module")
def world(dataset, tmp_path_factory):
    seeded = {}

    def prepare(stack: PortalStack) -> None:
        app = create_app(stack.settings)
        seeded.update(seed(app, stack.settings), app=app, settings=stack.settings)
        stack.create_user("controller@lingnan.cn", "管理员刘", "controller", "")
        stack.create_user("reviewer@lingnan.cn", "审核员孙", "controller", "")

    for stack in portal_stack(dataset, tmp_path_factory.mktemp("controller"), prepare):
        yield {"url": stack.url, "gateway": stack.gateway, **seeded}


def seed(app, settings: PortalSettings) -> dict:
    """Three researchers' projects with real grants: one running (some ε spent), one whose
    term has ended (destruction task open), one closed long ago with its certificate
    overdue — whose researcher also runs a fourth, active project."""
    now = datetime.now(UTC)
    made = {}
    with app.extensions["portal.sessions"]() as db:
        for key, name, title, expires in (
                ("running", "陈研究员", "糖尿病门诊费用", now + timedelta(days=90)),
                ("ended", "王研究员", "住院天数分析", now - timedelta(minutes=5)),
                ("overdue", "赵研究员", "急诊就诊趋势", now - timedelta(days=60)),
                ("other", "赵研究员", "慢病管理研究", now + timedelta(days=90))):
            email = f"{key if key != 'other' else 'overdue'}@lingnan.cn"
            user = db.query(User).filter_by(email=email).first()
            if user is None:
                user = User(email=email, name=name, role="researcher",
                            password_hash=hash_password(PASSWORD),
                            profile=Profile(institution=committee.entry(db, "岭南大学"),
                                            title="主任医师",
                                            years_experience=12, credit_grade="A"))
                db.add(user)
                db.flush()
            application = Application(researcher_id=user.id, title=title,
                                      purpose="medical_research", non_profit=True,
                                      state="active")
            db.add(application)
            db.flush()
            decision = DecisionRecord(application_id=application.id, verdict="approve",
                                      reasons="同意", fields=["sex", "visit_type"],
                                      epsilon=2.0, delta=1e-6 if key == "other" else 0.0,
                                      term_months=6,
                                      decided_by=user.id)
            db.add(decision)
            grant_id, token = portal_gateway.create_grant(
                settings, application.id, "medical_research", decision, ["emr-visits"],
                now + timedelta(days=90))
            db.add(Agreement(application_id=application.id, pdf=b"%PDF-", sha256="0",
                             signed_by=user.id, grant_id=grant_id, expires_at=expires,
                             signed_at=now - timedelta(days=120)))
            db.commit()
            made[key] = {"id": application.id, "token": token, "grant": grant_id,
                         "email": email}
        Gateway(settings.gateway_url, made["running"]["token"]).count(
            "emr-visits", group_by=["visit_type"], epsilon=1.5)
        # a Gaussian first release: that grant accounts in zCDP at δ = 1e-7 (ADR 0017)
        Gateway(settings.gateway_url, made["other"]["token"]).count(
            "emr-visits", epsilon=0.5, delta=1e-7, noise="gaussian")
        projects.end_terms(db, settings, now)
        task = db.get(DestructionTask, made["overdue"]["id"])
        task.due_at = now - timedelta(days=2)
        db.commit()
    return made


def test_a_controllers_day(world, browser):
    url = world["url"]
    controller = sign_in(browser, url, "controller@lingnan.cn", TOTP)
    controller.goto(f"{url}/controller/audit")
    controller.click("#verify")
    expect(controller.locator("#verify-result")).to_have_attribute("data-ok", "true")
    expect(controller.locator("#audit")).to_contain_text("term.ended")
    shot(controller, "01-audit-verified")

    controller.goto(f"{url}/controller/projects")
    running = controller.locator(f"tr[data-project='{world['running']['id']}']")
    expect(running).to_contain_text("ε 1.5 / 2")
    pooled = controller.locator(f"tr[data-project='{world['other']['id']}'] .zcdp")
    expect(pooled).to_contain_text("zCDP ρ 0.0")  # ρ of ε = 0.5 at δ = 1e-7: about 0.005
    expect(pooled).to_contain_text("δ 1e-07")
    expect(controller.locator(f"tr[data-project='{world['running']['id']}'] .zcdp")
           ).to_have_count(0)
    shot(controller, "02-projects-budget")

    # the researcher of the ended project uploads a certificate; it is rejected, then
    # uploaded again and verified — which closes the project
    ended = world["ended"]
    researcher = sign_in(browser, url, ended["email"], TOTP)
    researcher.goto(f"{url}/applications/{ended['id']}")
    expect(researcher.locator("#destruction-state")).to_have_attribute("data-state", "open")
    researcher.set_input_files("#certificate", str(CERTIFICATE))
    researcher.click("text=提交销毁证明")
    expect(researcher.locator("#destruction-state")).to_have_attribute("data-state",
                                                                     "submitted")
    controller.goto(f"{url}/controller/destruction")
    row = controller.locator(f"#tasks tr[data-project='{ended['id']}']")
    row.locator("textarea[name=reasons]").fill("缺少导出副本存放位置")
    row.locator("button[value=reject]").click()
    expect(controller.locator(f"#tasks tr[data-project='{ended['id']}']")).to_have_attribute(
        "data-state", "open")
    shot(controller, "03-destruction-rejected")
    researcher.reload()
    expect(researcher.locator(".problems")).to_contain_text("缺少导出副本存放位置")
    shot(researcher, "researcher-certificate-returned")
    researcher.set_input_files("#certificate", str(CERTIFICATE))
    researcher.click("text=提交销毁证明")
    controller.reload()
    controller.locator(f"#tasks tr[data-project='{ended['id']}'] button[value=verify]").click()
    expect(controller.locator(f"#tasks tr[data-project='{ended['id']}']")).to_have_attribute(
        "data-state", "verified")
    shot(controller, "04-destruction-verified")
    with world["app"].extensions["portal.sessions"]() as db:
        assert db.get(Application, ended["id"]).state == "closed"

    # the overdue certificate is a blacklist proposal; confirming it suspends the
    # researcher's other, active project on the running gateway
    overdue, other = world["overdue"], world["other"]
    assert Gateway(world["gateway"].url, other["token"]).budget()["epsilon"]["total"] == 2.0
    controller.locator(f"#proposals tr[data-project='{overdue['id']}'] button").click()
    expect(controller.locator(".flash")).to_contain_text("已暂停 1 个")
    shot(controller, "05-blacklisted")
    grant = world["gateway"].admin("GET", f"/v1/admin/grants/{other['grant']}").json()
    assert grant["status"] == "suspended"
    with world["app"].extensions["portal.sessions"]() as db:
        assert db.get(Application, other["id"]).state == "suspended"
        assert db.query(User).filter_by(email=overdue["email"]).one().profile.blacklisted

    # someone edits one audit row in the database: verification says where
    with world["app"].extensions["portal.engine"].begin() as conn:
        conn.execute(update(audit.audit_log).where(audit.audit_log.c.seq == 3)
                     .values(actor="user:999"))
    controller.goto(f"{url}/controller/audit")
    controller.click("#verify")
    expect(controller.locator("#verify-result")).to_have_attribute("data-ok", "false")
    expect(controller.locator("#verify-result")).to_contain_text("第 3 条记录被篡改")
    shot(controller, "06-audit-tampering-caught")
    csv = httpx.get(f"{url}/controller/audit.csv", cookies={
        c["name"]: c["value"] for c in controller.context.cookies()})
    assert csv.status_code == 200 and "destruction.verified" in csv.text


def test_export_review_with_two_blinded_reviewers(world, browser, tmp_path):
    url, running = world["url"], world["running"]
    gw = Gateway(world["gateway"].url, running["token"])
    counts = gw.count("emr-visits", group_by=["sex"], epsilon=0.2)
    table = tmp_path / "by-sex.csv"
    table.write_text("sex,n\n" + "\n".join(f"{r['sex']},{r['count']}"
                                             for r in counts.df.to_dicts()))
    figure = tmp_path / "by-sex.png"
    Image.new("RGB", (360, 220), "white").save(figure)
    gw.export([table, figure], [counts], note="表2 按性别")
    # sent from the sandbox: its author confirms it on the project page with a fresh code
    researcher = sign_in(browser, url, running["email"], TOTP)
    confirm_export(researcher, url, running["id"], TOTP.code(running["email"]),
                   shot=lambda page: shot(page, "researcher-export-confirm"))

    first = sign_in(browser, url, "controller@lingnan.cn", TOTP)
    first.goto(f"{url}/controller/exports")
    first.click("#exports a")
    expect(first.locator("#export-state")).to_have_attribute("data-state", "under_review")
    expect(first.locator("#checks")).to_contain_text("traceable numbers")
    first.click("button[value=approve]")
    expect(first.locator("#votes li")).to_have_count(1)  # only their own vote so far
    shot(first, "07-export-first-vote")

    second = sign_in(browser, url, "reviewer@lingnan.cn", TOTP)
    second.goto(first.url)
    expect(second.locator("#votes")).to_contain_text("彼此不可见")  # the first vote is hidden
    second.fill("#comment", "数字均可追溯到发布结果")
    second.click("button[value=approve]")
    expect(second.locator("#export-state")).to_have_attribute("data-state", "approved")
    expect(second.locator("#votes li")).to_have_count(2)
    shot(second, "08-export-approved")

    first.reload()
    expect(first.locator(".responsibility")).to_have_text("数据安全责任由本人承担")
    first.fill("#code", TOTP.code("controller@lingnan.cn"))  # step-up: a fresh code
    first.click("#release")
    expect(first.locator("#export-state")).to_have_attribute("data-state", "released")
    shot(first, "09-export-released")
    first.click("#bundle")
    first.fill("#code", TOTP.code("controller@lingnan.cn"))
    with first.expect_download() as downloaded:
        first.click("#step-up button.primary")
    zipped = Path(downloaded.value.path()).read_bytes()
    manifest = bundle.verify(zipped, exports.signer(world["settings"]).public_pem)
    assert manifest["project"] == f"application-{running['id']}"
    assert [r["choice"] for r in manifest["reviewers"]] == ["approve", "approve"]
