"""Accounts (argon2, lockout, TOTP for every role, idle lock), the bilingual catalog, and
applications whose eligibility is shown with reasons and enforced on submit."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select, update

from portal import create_app
from portal.models import Application, SignInSession, User
from sandbox import audit
from tests import committee
from tests.portal.conftest import PASSWORD, enrol_totp, login, make_user, sign_in
from tests.signin import fresh_code, wrong_code

ELIGIBLE = {"title": "副主任医师", "years_experience": 8, "credit_grade": "A",
            "institution": "岭南大学", "research_field": "流行病学"}


def email(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.cn"


def test_register_then_sign_in(client, app):
    address = email()
    with app.extensions["portal.sessions"]() as db:
        lingnan = committee.entry(db, "岭南大学").id
    assert "岭南大学" in client.get("/register").get_data(as_text=True)  # the registry's list
    page = client.post("/register", data={
        "name": "王芳", "email": address, "password": PASSWORD, "institution": str(lingnan),
        "title": "副主任医师", "years_experience": "8", "research_field": "心血管",
        "credit_grade": "A"})
    assert page.status_code == 302
    with app.extensions["portal.sessions"]() as db:
        user = db.scalar(select(User).where(User.email == address))
        assert user.password_hash.startswith("$argon2")
        assert user.profile.title == "副主任医师"
        assert user.profile.institution_id == lingnan
    first = login(client, address)
    assert first.status_code == 302 and first.headers["Location"].endswith("/mfa")
    enrol_totp(client)  # a new researcher enrols an authenticator at the first sign-in
    assert "王芳" in client.get("/applications/").get_data(as_text=True)


def test_registration_problems_are_listed(client):
    page = client.post("/register", data={"name": "", "email": "nope", "password": "short"})
    text = page.get_data(as_text=True)
    assert page.status_code == 422
    assert "Enter a valid e-mail" in text or "请输入有效的电子邮箱" in text


def test_catalog_in_both_languages_and_searchable(client):
    client.get("/lang/zh")
    zh = client.get("/").get_data(as_text=True)
    assert "岭南区域门急诊及住院就诊数据集" in zh and "数据资源目录" in zh
    client.get("/lang/en")
    en = client.get("/").get_data(as_text=True)
    assert "Lingnan regional outpatient and inpatient visits" in en and "Dataset catalog" in en
    assert "Lingnan" in client.get("/?q=total_cost").get_data(as_text=True)
    assert "No dataset matches" in client.get("/?q=genome").get_data(as_text=True)
    detail = client.get("/catalog/emr-visits").get_data(as_text=True)
    assert "diagnosis_code" in detail and "[0.0, 500000.0]" in detail


def test_five_failed_logins_lock_the_account(client, app):
    address = email()
    make_user(app, address, **ELIGIBLE)
    for _ in range(4):
        assert login(client, address, "wrong password 1").status_code == 401
    assert login(client, address, "wrong password 1").status_code == 401
    locked = login(client, address)
    assert locked.status_code == 403
    with app.extensions["portal.engine"].connect() as conn:
        assert audit.verify(conn).ok


@pytest.mark.parametrize("role", ["researcher", "expert", "chair", "controller", "admin"])
def test_every_role_must_use_totp(client, app, role):
    address = email(role)
    make_user(app, address, role=role, enrolled=False)
    response = login(client, address)
    assert response.status_code == 302 and response.headers["Location"].endswith("/mfa")
    assert client.get("/profile").status_code == 302  # not past MFA yet
    page = client.get("/mfa").get_data(as_text=True)
    assert 'id="totp-secret"' in page and "data:image/svg+xml" in page  # key and QR code
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    enrolled_with = pyotp.TOTP(secret).now()
    assert client.post("/mfa", data={"code": enrolled_with}).status_code == 302
    client.post("/logout")
    login(client, address)
    assert 'id="totp-secret"' not in client.get("/mfa").get_data(as_text=True)
    user_sessions = app.extensions["portal.sessions"]
    wrong = client.post("/mfa", data={"code": wrong_code(user_sessions, address)})
    assert wrong.status_code == 401
    assert client.post("/mfa", data={"code": enrolled_with}).status_code == 401, \
        "the enrolment code was used already"
    ok = client.post("/mfa", data={"code": fresh_code(user_sessions, address)})
    assert ok.status_code == 302
    assert client.get("/profile").status_code == 200


def _age_sessions(app, user_id: int, minutes: float) -> None:
    """Pretend the account's sessions were last used ``minutes`` ago."""
    with app.extensions["portal.sessions"]() as db:
        db.execute(update(SignInSession).where(SignInSession.user_id == user_id)
                   .values(last_seen=datetime.now(UTC) - timedelta(minutes=minutes)))
        db.commit()


@pytest.mark.parametrize(("role", "fine", "locks"), [("expert", 9, 11),
                                                     ("researcher", 29, 31)])
def test_sessions_lock_when_idle(client, app, role, fine, locks):
    address = email(role)
    user = make_user(app, address, role=role)
    sign_in(client, address)
    _age_sessions(app, user.id, fine)
    assert client.get("/profile").status_code == 200
    _age_sessions(app, user.id, locks)
    locked = client.get("/profile")
    assert locked.status_code == 302 and "idle=" in locked.headers["Location"]
    with client.session_transaction() as session:
        assert "sid" not in session
    assert client.get("/profile").status_code == 302
    with app.extensions["portal.sessions"]() as db:
        assert {s.ended_why for s in db.query(SignInSession).filter_by(user_id=user.id)
                if s.ended_at} >= {"idle"}


def test_sessions_end_twelve_hours_after_sign_in(client, app):
    address = email()
    user = make_user(app, address)
    sign_in(client, address)
    with app.extensions["portal.sessions"]() as db:
        db.execute(update(SignInSession).where(SignInSession.user_id == user.id).values(
            created_at=datetime.now(UTC) - timedelta(hours=12, minutes=1)))
        db.commit()
    ended = client.get("/profile")  # active a moment ago, but past the absolute lifetime
    assert ended.status_code == 302 and "expired=lifetime" in ended.headers["Location"]
    assert client.get("/profile").status_code == 302


def draft(client, **overrides) -> int:
    form = {"dataset": "emr-visits", "title": "高血压与住院费用", "summary": "队列研究",
            "purpose": "medical_research", "non_profit": "1", "epsilon": "1",
            "term_months": "12", "team": "陈静, 李明",
            "field:age_band": "1", "why:age_band": "年龄分层",
            "field:total_cost": "1", "why:total_cost": "费用结局"} | overrides
    response = client.post("/applications/new", data=form)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return int(response.headers["Location"].rsplit("/", 1)[1])


def test_an_eligible_researcher_applies_and_submits(client, app):
    address = email()
    make_user(app, address, **ELIGIBLE)
    sign_in(client, address)
    app_id = draft(client)
    page = client.get(f"/applications/{app_id}").get_data(as_text=True)
    assert "Submit to the committee" in page or "提交数据委员会审查" in page
    assert client.post(f"/applications/{app_id}/submit").status_code == 302
    with app.extensions["portal.sessions"]() as db:
        application = db.get(Application, app_id)
        assert application.state == "submitted"
        assert [f.field for f in application.fields] == ["age_band", "total_cost"]


def test_event_table_fields_are_listed_and_requested_as_table_and_name(client, app):
    address = email()
    make_user(app, address, **ELIGIBLE)
    sign_in(client, address)
    page = client.get("/catalog/emr-visits").get_data(as_text=True)
    assert "labs.value" in page and "visits.admitted_on" in page and "pseudonym" not in page
    app_id = draft(client, **{"field:labs.value": "1", "why:labs.value": "血糖控制",
                              "field:labs.test_code": "1", "why:labs.test_code": "检验项目"})
    with app.extensions["portal.sessions"]() as db:
        application = db.get(Application, app_id)
        assert [f.field for f in application.fields] == [
            "age_band", "total_cost", "labs.test_code", "labs.value"]


def test_an_ineligible_researcher_is_refused_with_reasons(client, app):
    address = email()
    make_user(app, address, title="主治医师", years_experience=2, credit_grade="B")
    sign_in(client, address)
    client.get("/lang/en")
    app_id = draft(client)
    refused = client.post(f"/applications/{app_id}/submit")
    text = refused.get_data(as_text=True)
    assert refused.status_code == 403
    assert "associate senior professional title" in text and "years of research" in text
    assert "social-credit grade must be A" in text
    with app.extensions["portal.sessions"]() as db:
        assert db.get(Application, app_id).state == "draft"


def test_application_input_is_checked(client, app):
    address = email()
    make_user(app, address, **ELIGIBLE)
    sign_in(client, address)
    client.get("/lang/en")
    bad = client.post("/applications/new", data={
        "dataset": "emr-visits", "title": "", "purpose": "medical_research",
        "field:total_cost": "1", "why:total_cost": "", "epsilon": "99"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 422
    assert "Give the project a title" in text and "Justify why you need the field total_cost" \
        in text and "ε must be between 0 and 10" in text
    fake_pdf = client.post("/applications/new", data={
        "dataset": "emr-visits", "title": "x", "purpose": "medical_research",
        "field:sex": "1", "why:sex": "分层", "ethics": (__import__("io").BytesIO(b"MZ..."),
                                                    "ethics.pdf")},
        content_type="multipart/form-data")
    assert fake_pdf.status_code == 422 and "must be a PDF" in fake_pdf.get_data(as_text=True)


def test_researchers_only_see_their_own_applications(client, app):
    owner, other = email(), email()
    make_user(app, owner, **ELIGIBLE)
    make_user(app, other, **ELIGIBLE)
    sign_in(client, owner)
    app_id = draft(client)
    client.post("/logout")
    sign_in(client, other)
    assert client.get(f"/applications/{app_id}").status_code == 404
    assert client.post(f"/applications/{app_id}/submit").status_code == 404


def test_forms_need_a_csrf_token(portal_settings):
    strict = create_app(portal_settings.model_copy(update={"testing": False}))
    response = strict.test_client().post("/login", data={"email": "a@b.cn", "password": "x"})
    assert response.status_code == 400


def test_the_review_queue_is_paged(client, app):
    chair = make_user(app, email("chair"), role="chair")
    owner = make_user(app, email(), **ELIGIBLE)
    with app.extensions["portal.sessions"]() as db:
        for i in range(60):
            db.add(Application(researcher_id=owner.id, title=f"queued-{i}",
                               purpose="medical_research", state="submitted"))
        db.commit()
    sign_in(client, chair.email)
    first = client.get("/committee/").get_data(as_text=True)
    second = client.get("/committee/?page=2").get_data(as_text=True)
    assert first.count("<tr><td>") == 50 and "page=2" in first
    assert "queued-59" in first + second and "page=1" in second


def test_the_form_refuses_an_unknown_purpose(client, app):
    address = email()
    make_user(app, address, **ELIGIBLE)
    sign_in(client, address)
    refused = client.post("/applications/new", data={
        "dataset": "emr-visits", "title": "x", "purpose": "marketing", "epsilon": "1",
        "term_months": "6", "field:sex": "1", "why:sex": "分层"})
    assert refused.status_code == 422
    assert "unknown purpose 'marketing'" in refused.get_data(as_text=True).replace("&#39;", "'")


def test_session_cookies_are_secure_over_https(portal_settings, app):
    behind_https = create_app(portal_settings.model_copy(
        update={"public_url": "https://portal.example.cn"}))
    address = email()
    make_user(behind_https, address)
    answer = login(behind_https.test_client(), address)
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # the same portal reached over HTTPS directly (its public address still http)
    direct = login(app.test_client(), address, "wrong password 1")
    assert "Secure" not in (direct.headers.get("Set-Cookie") or "")
    over_tls = app.test_client().post("/login", base_url="https://localhost",
                                      data={"email": address, "password": PASSWORD})
    assert "Secure" in over_tls.headers["Set-Cookie"]
