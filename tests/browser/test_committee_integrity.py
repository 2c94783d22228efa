"""Attacks on the committee's integrity, played in a real browser (Playwright driving
Debian's Chromium) against the portal served as its own process (``sandboxctl portal
serve``) beside a gateway process:

- an applicant's institution spelled another way ("lingnan university", full-width, the
  Chinese name for the English one, traditional characters) to slip an expert from the same
  institution past the conflict check;
- an expert who joins the applicant's institution, or declares a conflict, after being
  assigned: refused at scoring, a score already given no longer counts at decision, and
  the chair's page shows the institution the expert had at assignment and has now;
- a self-declared professional title and credit grade: shown as such to the committee
  (pages and JSON API), and an approval refused until an admin verifies them against an
  evidence file — after which the pages and the API say what the eligibility relied on.

Screenshots go to test-artifacts/browser/integrity-*.png."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.db import connect
from portal.models import User
from sandbox import audit
from tests.browser import screenshots
from tests.browser.conftest import ARTIFACTS, PortalStack, portal_stack
from tests.browser.test_approval_flow import LINGNAN, REGISTRY, draft, register, sign_in
from tests.signin import Authenticators

CERTIFICATE = Path(__file__).with_name("certificate.pdf")
STAFF = [("chair@integrity.cn", "何主任", "chair", ""),
         ("admin@integrity.cn", "管理员钱", "admin", "")]
DIMENSIONS = ("legality", "consistency", "value", "leakage_risk", "cost")


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshots.save(page, ARTIFACTS / f"integrity-{name}.png")


@pytest.fixture(scope="module")
def stack(dataset, tmp_path_factory):
    def prepare(served: PortalStack) -> None:
        for names in REGISTRY:
            served.add_institution(*names)
        for account in STAFF:
            served.create_user(*account)

    yield from portal_stack(dataset, tmp_path_factory.mktemp("integrity"), prepare)


@pytest.fixture(scope="module")
def totp() -> Authenticators:
    return Authenticators()


def expert(stack: PortalStack, institution: str) -> tuple[str, str]:
    """A new expert, made from the command line with ``institution`` as typed there."""
    tag = uuid.uuid4().hex[:6]
    email, name = f"expert-{tag}@integrity.cn", f"专家{tag}"
    stack.create_user(email, name, "expert", institution)
    return email, name


def submitted(browser, stack: PortalStack, keys: Authenticators, institution: str = LINGNAN,
              other: str = "") -> tuple[Page, str, str]:
    """A researcher registered through the form (title 副主任医师, credit grade A, both
    self-declared) with a submitted application: (page, e-mail, application id)."""
    email = f"r-{uuid.uuid4().hex[:6]}@integrity.cn"
    page = register(browser, stack.url, email, "副主任医师", "9", keys, institution, other)
    app_id = draft(page, stack.url)
    page.click("text=提交数据委员会审查")
    expect(page.locator("#state")).to_have_attribute("data-state", "submitted")
    return page, email, app_id


def assign(chair: Page, url: str, app_id: str, names: list[str]) -> Page:
    chair.goto(f"{url}/committee/applications/{app_id}")
    for name in names:
        chair.check(f"label:has-text('{name}') input")
    chair.click("form[action$='/assign'] button.primary")
    return chair


def score(browser, url: str, email: str, totp: Authenticators, app_id: str) -> Page:
    page = sign_in(browser, url, email, totp)
    page.goto(f"{url}/committee/applications/{app_id}/review")
    for dimension, value in zip(DIMENSIONS, ("5", "4", "4", "2", "3"), strict=True):
        page.select_option(f"#{dimension}", value)
    page.fill("#comments", "方法可行")
    page.click("button.primary")
    return page


def decide(chair: Page, url: str, app_id: str) -> Page:
    chair.goto(f"{url}/committee/applications/{app_id}")
    chair.select_option("#verdict", "approve")
    chair.fill("#epsilon", "1")
    chair.fill("#reasons", "科学价值明确")
    chair.click("text=记录决定")
    return chair


def api_application(page: Page, url: str, app_id: str) -> dict:
    """The JSON API's view of an application, with the page's session, over HTTP."""
    response = page.request.get(f"{url}/api/v1/applications/{app_id}")
    assert response.status == 200, response.text()
    return response.json()


def audited(stack: PortalStack, action: str) -> list[dict]:
    engine, _ = connect(stack.env["SANDBOX_PORTAL_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(select(audit.audit_log).where(audit.audit_log.c.action == action)
                            .order_by(audit.audit_log.c.seq)).all()
        assert audit.verify(conn).ok
    engine.dispose()
    return [json.loads(r.details) | {"subject": r.subject, "actor": r.actor} for r in rows]


def researcher_id(stack: PortalStack, email: str) -> int:
    _engine, sessions = connect(stack.env["SANDBOX_PORTAL_DATABASE_URL"])
    with sessions() as db:
        return db.scalar(select(User.id).where(User.email == email))


def test_spellings_of_the_applicant_institution_are_the_same_institution(stack, browser,
                                                                        totp):
    url = stack.url
    # The applicant types her institution in lower case as "other": it is the registry's
    # entry at once, not a new institution.
    researcher, _, app_id = submitted(browser, stack, totp, "other", "lingnan university")
    researcher.goto(f"{url}/profile")
    expect(researcher.locator("#institution-now")).to_have_text(LINGNAN)
    # Experts made with the full-width English name and with the Chinese name.
    full_width = expert(stack, "Ｌｉｎｇｎａｎ　Ｕｎｉｖｅｒｓｉｔｙ")
    chinese = expert(stack, "岭 南 大 学")
    clean = [expert(stack, hospital) for hospital in ("中山医院", "南方医院", "珠江医院")]

    chair = sign_in(browser, url, "chair@integrity.cn", totp)
    chair.goto(f"{url}/committee/applications/{app_id}")
    for _, name in (full_width, chinese):
        expect(chair.locator(f"label:has-text('{name}')")).to_contain_text(
            f"{name}与申请人同属岭南大学")
    for sneaked in (full_width, chinese):
        assign(chair, url, app_id, [sneaked[1], clean[0][1], clean[1][1]])
        expect(chair.locator(".problems")).to_contain_text(f"{sneaked[1]}与申请人同属岭南大学")
    shot(chair, "case-variant-refused")

    # Traditional characters are not a folding of 岭南大学: a second applicant's "other"
    # waits for a chair, and until then no expert can be assigned to her application.
    _, _, second = submitted(browser, stack, totp, "other", "嶺南大學")
    assign(chair, url, second, [name for _, name in clean])
    expect(chair.locator(".problems")).to_contain_text("申请人的单位尚待主任委员确认")
    chair.goto(f"{url}/committee/applications/{second}")
    shot(chair, "institution-to-confirm")
    claim = chair.locator("#claim form.claim")
    # Adding it as a new institution under another spelling of the entry is refused.
    claim.locator("select[name=action]").select_option("add")
    claim.locator("input[name=name_en]").fill("LINGNAN UNIVERSITY")
    claim.locator("button.primary").click()
    expect(chair.locator(".problems")).to_contain_text("已在机构名录中：岭南大学")
    chair.goto(f"{url}/committee/applications/{second}")
    claim = chair.locator("#claim form.claim")
    claim.locator("select[name=action]").select_option("map")
    claim.locator("select[name=institution]").select_option(label=LINGNAN)
    claim.locator("button.primary").click()
    expect(chair.locator("#applicant-institution")).to_have_text(LINGNAN)
    assign(chair, url, second, [full_width[1], clean[0][1], clean[1][1]])
    expect(chair.locator(".problems")).to_contain_text(f"{full_width[1]}与申请人同属岭南大学")
    confirmed = audited(stack, "institution.confirmed")
    assert confirmed[-1]["text"] == "嶺南大學" and confirmed[-1]["action"] == "map"


def test_a_conflict_arising_after_assignment_is_refused_at_scoring_and_decision(
        stack, browser, totp):
    url = stack.url
    researcher, researcher_email, app_id = submitted(browser, stack, totp)
    panel = [expert(stack, hospital) for hospital in ("中山医院", "南方医院", "珠江医院")]
    (first, _), (mover, mover_name), (declarer, declarer_name) = panel
    chair = sign_in(browser, url, "chair@integrity.cn", totp)
    assign(chair, url, app_id, [name for _, name in panel])
    expect(chair.locator("#state")).to_have_attribute("data-state", "under_review")
    for email in (first, mover):
        expect(score(browser, url, email, totp, app_id).locator(".flash")).to_contain_text(
            "评分已记录")

    # After assignment one expert moves to the applicant's institution, another declares a
    # conflict with it (spelled in lower case): neither may score now.
    moved = sign_in(browser, url, mover, totp)
    moved.goto(f"{url}/profile")
    moved.select_option("#institution", label=LINGNAN)
    moved.click("text=保存所在机构")
    declaring = sign_in(browser, url, declarer, totp)
    declaring.goto(f"{url}/profile")
    declaring.fill("#conflicts", "lingnan university")
    declaring.click("form:has(#conflicts) button.primary")
    expect(declaring.locator("#declared")).to_contain_text(LINGNAN)
    shot(declaring, "expert-declares-conflict")
    for email, reason in ((mover, f"{mover_name}与申请人同属岭南大学"),
                          (declarer, f"{declarer_name}已声明利益冲突")):
        refused = score(browser, url, email, totp, app_id)
        expect(refused.locator("h1")).to_have_text("403")
        expect(refused.locator(".problems")).to_contain_text(reason)
    shot(refused, "conflict-after-assignment-refused-at-scoring")
    refusals = [e for e in audited(stack, "application.score_refused")
                if e["subject"] == f"application:{app_id}"]
    assert [e["conflict"] for e in refusals] == ["institution", "declared"]

    # At decision the mover's earlier score does not count: the quorum is not met. The
    # chair's page shows the mover's institution since assignment.
    chair.goto(f"{url}/committee/applications/{app_id}")
    expect(chair.locator("#excluded")).to_contain_text(f"{mover_name} 的评分不计入")
    changed = chair.locator("#institution-changes li[data-role=expert]")
    expect(changed).to_have_count(1)
    expect(changed).to_contain_text(
        f"专家{mover_name}，自分配以来：南方医院 / Nanfang Hospital → {LINGNAN}")
    shot(chair, "conflicted-score-flagged")
    summary = chair.request.get(f"{url}/api/v1/applications/{app_id}/summary").json()
    assert [e["code"] for e in summary["excluded"]] == ["institution"]
    assert not summary["quorum_met"] and len(summary["per_expert"]) == 1
    decide(chair, url, app_id)
    expect(chair.locator(".problems")).to_contain_text("1 份评分因利益冲突不再计入")
    shot(chair, "conflicted-score-excluded-at-decision")

    # Replacements join the panel; the decision then rests on three unconflicted scores.
    replacements = [expert(stack, hospital) for hospital in ("中山医院", "南方医院")]
    assign(chair, url, app_id, [name for _, name in replacements])
    expect(chair.locator(".flash")).to_be_visible()
    for email, _ in replacements:
        score(browser, url, email, totp, app_id)
    verify(browser, stack, researcher_email, totp)
    decide(chair, url, app_id)
    expect(chair.locator("#decision")).to_have_attribute("data-verdict", "approve")
    decided = [e for e in audited(stack, "application.decided")
               if e["subject"] == f"application:{app_id}"][-1]
    assert list(decided["excluded_scores"].values()) == ["institution"]
    summary = chair.request.get(f"{url}/api/v1/applications/{app_id}/summary").json()
    assert len(summary["per_expert"]) == 3 and summary["quorum_met"]
    researcher.close()


def verify(browser, stack: PortalStack, email: str, totp: Authenticators,
           upload: tuple[str, bytes] | None = None) -> Page:
    """The admin verifies both claims of ``email`` with ``upload`` (name, bytes) — the real
    certificate PDF by default."""
    admin = sign_in(browser, stack.url, "admin@integrity.cn", totp)
    admin.goto(f"{stack.url}/admin/credentials?q={email}")
    name, content = upload or ("职称证书.pdf", CERTIFICATE.read_bytes())
    for kind in ("title", "credit_grade"):
        claim = admin.locator(f"section.person[data-email='{email}'] .claim[data-claim='{kind}']")
        claim.locator("input[type=file]").set_input_files(
            {"name": name, "mimeType": "application/pdf", "buffer": content})
        claim.locator("button.primary").click()
        if upload is not None:
            return admin
        expect(admin.locator(".flash")).to_contain_text("SHA-256")
    return admin


def test_self_declared_claims_are_shown_as_such_and_verification_changes_that(
        stack, browser, totp):
    url = stack.url
    researcher, email, app_id = submitted(browser, stack, totp)
    expect(researcher.locator("#unverified")).to_contain_text("职称（副主任医师）为本人自报")
    panel = [expert(stack, hospital) for hospital in ("中山医院", "南方医院", "珠江医院")]
    chair = sign_in(browser, url, "chair@integrity.cn", totp)
    assign(chair, url, app_id, [name for _, name in panel])

    # What committee members see: each claim beside what it rests on, on the chair's page,
    # on each expert's scoring page, and in the JSON API.
    reviewer = sign_in(browser, url, panel[0][0], totp)
    reviewer.goto(f"{url}/committee/applications/{app_id}/review")
    for page in (chair, reviewer):
        if page is chair:
            page.goto(f"{url}/committee/applications/{app_id}")
        for kind in ("title", "credit_grade"):
            expect(page.locator(f"#claim-{kind} [data-basis]")).to_have_attribute(
                "data-basis", "self_declared")
            expect(page.locator(f"#claim-{kind}")).to_contain_text("本人自报")
        expect(page.locator("#eligibility")).to_have_attribute("data-eligible", "true")
        expect(page.locator("#eligibility")).to_have_attribute("data-approvable", "false")
    shot(reviewer, "self-declared-on-the-expert-page")
    for page in (chair, reviewer):
        standing = api_application(page, url, app_id)["applicant"]["eligibility"]
        assert standing["eligible"] and not standing["approvable"]
        assert {k: v["basis"] for k, v in standing["relied_on"].items()} == {
            "title": "self_declared", "credit_grade": "self_declared"}
        assert [u["code"] for u in standing["unverified"]] == ["title_unverified",
                                                              "credit_unverified"]

    for email_, _ in panel:
        score(browser, url, email_, totp, app_id)
    decide(chair, url, app_id)
    expect(chair.locator("h1")).to_have_text("403")
    expect(chair.locator(".problems")).to_contain_text("职称（副主任医师）为本人自报")
    shot(chair, "approval-refused-on-self-declared-claims")

    # A file that only claims to be a PDF is not evidence.
    fake = verify(browser, stack, email, totp, ("职称证书.pdf", b"PK\x03\x04" + b"\x00" * 64))
    expect(fake.locator(".problems")).to_contain_text("证明材料须为 PDF、PNG 或 JPEG 文件")
    shot(fake, "disguised-evidence-refused")
    subject = f"user:{researcher_id(stack, email)}"
    assert not [e for e in audited(stack, "credential.verified") if e["subject"] == subject]

    admin = verify(browser, stack, email, totp)
    shot(admin, "credentials-verified")
    digest = hashlib.sha256(CERTIFICATE.read_bytes()).hexdigest()
    chair.goto(f"{url}/committee/applications/{app_id}")
    for kind in ("title", "credit_grade"):
        expect(chair.locator(f"#claim-{kind} [data-basis]")).to_have_attribute(
            "data-basis", "verified")
        expect(chair.locator(f"#claim-{kind} code.sha")).to_have_text(digest)
    expect(chair.locator("#eligibility")).to_have_attribute("data-approvable", "true")
    standing = api_application(chair, url, app_id)["applicant"]["eligibility"]
    assert standing["approvable"]
    assert {k: (v["basis"], v["evidence_sha256"]) for k, v in standing["relied_on"].items()} \
        == {"title": ("verified", digest), "credit_grade": ("verified", digest)}
    verified = [e for e in audited(stack, "credential.verified") if e["subject"] == subject]
    assert [(e["kind"], e["sha256"]) for e in verified] == [("title", digest),
                                                            ("credit_grade", digest)]
    decide(chair, url, app_id)
    expect(chair.locator("#decision")).to_have_attribute("data-verdict", "approve")
    shot(chair, "approved-on-verified-claims")

    # A verification covers the value it saw: a title changed afterwards is the
    # researcher's word again.
    researcher.goto(f"{url}/profile")
    researcher.fill("#title", "主任医师")
    researcher.click("form:has(#title) button.primary")
    expect(researcher.locator("[data-claim=title]")).to_have_attribute("data-basis",
                                                                       "self_declared")
    standing = api_application(chair, url, app_id)["applicant"]["eligibility"]
    assert standing["relied_on"]["title"]["basis"] == "self_declared"
    assert standing["relied_on"]["credit_grade"]["basis"] == "verified"

