"""Sign-in attacked over real HTTP, against the portal served as its own process
(``sandboxctl portal serve``, CSRF protection and rate limits on): code guessing until the
account locks, a replayed code, a cookie kept after sign-out, open redirects through
``next=``, cross-site calls to the JSON API riding on the session cookie, and the hub's
OAuth sign-in for a session that has not given its code.

Each attacker comes from its own loopback address (127.0.x.y), as different machines
would, so the per-address rate limits of one test do not spill into another."""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from sqlalchemy import select, update

from portal.db import connect
from portal.models import Application, Profile, User
from portal.security import hash_password, is_locked
from sandbox import audit
from sandbox.hub.settings import OAUTH_CLIENT_ID
from tests import committee
from tests.browser.conftest import portal_stack
from tests.signin import fresh_code, wrong_code
from tests.tiers import tier

PASSWORD = "Attack-test-42"
HUB = "http://127.0.0.1:9"  # never contacted: the OAuth callback address the hub would have
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_addresses = iter(f"127.0.{a}.{b}" for a in range(1, 250) for b in range(2, 250))


@pytest.fixture(scope="module")
@tier("service")
def portal(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("signin-attacks")
    for stack in portal_stack(dataset, root, sign_in_rate=None, env={
            "SANDBOX_PORTAL_HUB_URL": HUB,
            "SANDBOX_PORTAL_SECRETS_DIR": str(root / "secrets")}):
        _engine, sessions = connect(stack.env["SANDBOX_PORTAL_DATABASE_URL"])
        yield stack, sessions


def person(sessions, role: str = "researcher") -> str:
    """An enrolled account (its TOTP secret in the database); returns its e-mail."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@lingnan.cn"
    with sessions() as db:
        db.add(User(email=email, name="攻击目标", role=role,
                    password_hash=hash_password(PASSWORD), totp_secret=pyotp.random_base32(),
                    totp_enabled=True, profile=Profile(
                        institution=committee.entry(db, "岭南大学"), title="研究员",
                        years_experience=10, credit_grade="A")))
        db.commit()
    return email


class Visitor:
    """A browser-less client from its own address: keeps cookies, follows nothing."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=30,
                                 transport=httpx.HTTPTransport(local_address=next(_addresses)))

    def form(self, path: str, data: dict, page: str | None = None) -> httpx.Response:
        """POST a form the way its page does (with the CSRF token of this session)."""
        shown = self.http.get(page or path, follow_redirects=True).text
        found = TOKEN.search(shown)
        return self.http.post(path, data=data | {"csrf_token": found.group(1) if found
                                                 else ""})

    def password(self, email: str, query: str = "") -> httpx.Response:
        return self.form(f"/login{query}", {"email": email, "password": PASSWORD})

    def sign_in(self, sessions, email: str, query: str = "") -> httpx.Response:
        """Password, then (if the portal asks) a fresh code; the last answer."""
        answer = self.password(email, query)
        if answer.status_code == 302 and answer.headers["location"].endswith("/mfa"):
            answer = self.form("/mfa", {"code": fresh_code(sessions, email)})
        return answer

    def cookie(self) -> str:
        return self.http.cookies["session"]


def user(sessions, email: str) -> User:
    with sessions() as db:
        return db.scalar(select(User).where(User.email == email))


def entries(sessions, email: str, action: str) -> list[dict]:
    uid = user(sessions, email).id
    with sessions() as db:
        rows = db.execute(select(audit.audit_log).where(
            audit.audit_log.c.action == action,
            audit.audit_log.c.subject == f"user:{uid}")).all()
    return [dict(r._mapping) for r in rows]


def test_sixty_wrong_codes_lock_the_account(portal):
    stack, sessions = portal
    email = person(sessions)
    attacker = Visitor(stack.url)  # has the password, not the authenticator
    first = attacker.password(email)
    assert first.status_code == 302 and first.headers["location"].endswith("/mfa"), \
        "the password alone must not sign a researcher in"
    answers = []
    for _ in range(60):
        answers.append(attacker.form("/mfa", {"code": wrong_code(sessions, email)},
                                     page="/login"))
    statuses = [a.status_code for a in answers]
    assert not [a for a in answers if a.status_code == 302
                and not urlsplit(a.headers["location"]).path.startswith("/login")], statuses
    assert statuses.count(401) == 4 and statuses[4] == 403, statuses  # the 5th code locks
    assert 429 in statuses, "the code form is rate limited per address"
    locked = user(sessions, email)
    assert is_locked(locked.locked_until)
    ended = attacker.http.get("/mfa")  # the lock ended the attacker's half-signed session
    assert ended.status_code == 302 and urlsplit(ended.headers["location"]).path == "/login"
    assert len(entries(sessions, email, "account.locked")) == 1
    assert len([e for e in entries(sessions, email, "login.failed")
                if '"totp"' in e["details"]]) == 5  # each audited, the 5th too

    # while locked, the right password and a right code open nothing, page or API
    owner = Visitor(stack.url)
    assert owner.password(email).status_code == 403
    api = owner.http.post("/api/v1/session", headers={"X-Requested-With": "test"}, json={
        "email": email, "password": PASSWORD, "code": fresh_code(sessions, email)})
    assert api.status_code == 403 and api.json()["error"] == "locked"
    assert owner.http.get("/profile").status_code == 302


def test_api_sign_in_counts_wrong_codes_and_is_rate_limited(portal):
    stack, sessions = portal
    email = person(sessions, "chair")
    attacker = Visitor(stack.url)
    statuses = [attacker.http.post("/api/v1/session", headers={"X-Requested-With": "x"},
                                   json={"email": email, "password": PASSWORD,
                                         "code": wrong_code(sessions, email)}).status_code
                for _ in range(25)]
    assert statuses[:4] == [401] * 4 and statuses[4] == 403, statuses
    assert 429 in statuses
    assert is_locked(user(sessions, email).locked_until)


def test_a_code_is_accepted_once(portal):
    stack, sessions = portal
    email = person(sessions)
    owner, onlooker = Visitor(stack.url), Visitor(stack.url)
    assert owner.password(email).headers["location"].endswith("/mfa")
    code = fresh_code(sessions, email)
    accepted = owner.form("/mfa", {"code": code})
    assert accepted.status_code == 302 and accepted.headers["location"] == "/"
    # someone who saw the code (and knows the password) types it within its 90 seconds
    assert onlooker.password(email).headers["location"].endswith("/mfa")
    replayed = onlooker.form("/mfa", {"code": code})
    assert replayed.status_code == 401
    assert onlooker.http.get("/profile").status_code == 302
    api = onlooker.http.post("/api/v1/session", headers={"X-Requested-With": "x"},
                             json={"email": email, "password": PASSWORD, "code": code})
    assert api.status_code == 401 and api.json()["error"] == "code_refused"
    assert len(entries(sessions, email, "totp.replay_refused")) == 2
    with sessions() as db:
        assert audit.verify(db.connection()).ok

    # two sign-ins racing with one fresh code: exactly one gets in
    racers = [Visitor(stack.url) for _ in range(2)]
    for racer in racers:
        assert racer.password(email).headers["location"].endswith("/mfa")
    tokens = [TOKEN.search(r.http.get("/mfa").text).group(1) for r in racers]
    code, answers = fresh_code(sessions, email), [None, None]

    def race(i: int) -> None:
        answers[i] = racers[i].http.post("/mfa", data={"code": code, "csrf_token": tokens[i]})

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [302, 401]


def test_the_old_cookie_after_sign_out_gets_the_sign_in_page(portal):
    stack, sessions = portal
    email = person(sessions)
    browser = Visitor(stack.url)
    assert browser.sign_in(sessions, email).status_code == 302
    kept = browser.cookie()  # copied off a shared computer, or the wire
    assert browser.http.get("/profile").status_code == 200
    assert browser.form("/logout", {}, page="/profile").status_code == 302
    thief = httpx.Client(base_url=stack.url, follow_redirects=False, cookies={
        "session": kept}, transport=httpx.HTTPTransport(local_address=next(_addresses)))
    page = thief.get("/profile")
    assert page.status_code == 302 and urlsplit(page.headers["location"]).path == "/login"
    assert 'id="password"' in thief.get("/profile", follow_redirects=True).text
    assert thief.get("/api/v1/applications").status_code == 401
    from portal.models import SignInSession

    with sessions() as db:  # the pre-code session was renewed at the code, then signed out
        assert sorted(db.scalars(select(SignInSession.ended_why).where(
            SignInSession.user_id == user(sessions, email).id))) == ["renewed", "signed_out"]


def test_an_idle_researcher_session_locks_after_thirty_minutes(portal):
    stack, sessions = portal
    email = person(sessions)
    browser = Visitor(stack.url)
    browser.sign_in(sessions, email)
    uid = user(sessions, email).id
    from portal.models import SignInSession

    with sessions() as db:
        db.execute(update(SignInSession).where(SignInSession.user_id == uid).values(
            last_seen=datetime.now(UTC) - timedelta(minutes=31)))
        db.commit()
    page = browser.http.get("/profile")
    assert page.status_code == 302 and "idle=30" in page.headers["location"]
    assert len(entries(sessions, email, "session.idle_locked")) == 1


def test_session_cookies_are_http_only_and_same_site(portal):
    stack, sessions = portal
    cookie = Visitor(stack.url).password(person(sessions)).headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # served over plain HTTP here (see the HTTPS test)


NASTY = ["/%09/evil.example", "/%0d/evil.example", "/%0a/evil.example",
         "/%0D%0ALocation:%20http://evil.example/", "//evil.example", "///evil.example",
         "/%5Cevil.example", "/%5C/evil.example", "%5C%5Cevil.example",
         "https://evil.example/", "https:evil.example", "javascript:alert(1)",
         "/%2509/evil.example", "%20//evil.example", "/%E3%80%80/evil.example",
         "//%09evil.example", "evil.example"]
GOOD = ["/applications/", "/catalog/emr-visits?lang=zh"]


@pytest.mark.parametrize("target", NASTY + GOOD)
def test_next_leads_only_to_this_portal(portal, target):
    stack, sessions = portal
    landed = Visitor(stack.url).sign_in(sessions, person(sessions), f"?next={target}")
    assert landed.status_code == 302, landed.status_code
    expected = "/" if target in NASTY else target
    assert landed.headers["location"] == expected


def test_cross_site_calls_to_the_api_are_refused(portal):
    stack, sessions = portal
    email = person(sessions)
    victim = Visitor(stack.url)
    victim.sign_in(sessions, email)
    body = {"dataset": "emr-visits", "title": "跨站", "purpose": "medical_research",
            "non_profit": True, "epsilon": 1, "term_months": 6,
            "fields": [{"field": "sex", "justification": "x"}]}
    text = json.dumps(body)

    def count() -> int:
        with sessions() as db:
            return len(db.scalars(select(Application).where(
                Application.researcher_id == user(sessions, email).id)).all())

    attacks = [  # what another site's page can make the victim's browser send
        {"content": text, "headers": {"Content-Type": "application/json",
                                      "Origin": "http://evil.example"}},
        {"content": text, "headers": {"Content-Type": "application/json",
                                      "Origin": "null"}},
        {"content": text, "headers": {"Content-Type": "application/json"}},  # no origin
        {"data": {"payload": text}},                                     # a form
        {"content": text, "headers": {"Content-Type": "text/plain"}},    # a text/plain form
        {"content": text, "headers": {"Content-Type": "text/plain",
                                      "X-Requested-With": "x"}},
    ]
    for attack in attacks:
        refused = victim.http.post("/api/v1/applications", **attack)
        assert refused.status_code == 403, (attack, refused.text)
        assert refused.json()["error"] == "cross_site"
        assert count() == 0, "nothing was created"
    signed_out = victim.http.request("DELETE", "/api/v1/session",
                                     headers={"Origin": "http://evil.example",
                                              "Content-Type": "application/json"})
    assert signed_out.status_code == 403
    assert count() == 0
    assert len(entries(sessions, email, "request.cross_site_refused")) == len(attacks) + 1

    # the portal's own pages (same Origin) and programs (X-Requested-With) go through
    own = victim.http.post("/api/v1/applications", json=body,
                           headers={"Origin": stack.url})
    program = victim.http.post("/api/v1/applications", json=body,
                               headers={"X-Requested-With": "XMLHttpRequest"})
    assert own.status_code == program.status_code == 201
    assert count() == 2


def test_the_hub_is_told_only_who_passed_the_code(portal):
    stack, sessions = portal
    email = person(sessions)
    visitor = Visitor(stack.url)
    authorize = (f"/oauth/authorize?response_type=code&client_id={OAUTH_CLIENT_ID}"
                 f"&redirect_uri={HUB}/hub/oauth_callback&state=s1")
    assert visitor.password(email).status_code == 302  # password only
    asked = visitor.http.get(authorize)
    assert asked.status_code == 302
    assert urlsplit(asked.headers["location"]).path == "/mfa", asked.headers["location"]
    assert not entries(sessions, email, "oauth.authorized")
    visitor.form("/mfa", {"code": fresh_code(sessions, email)})
    granted = visitor.http.get(authorize)
    assert granted.headers["location"].startswith(f"{HUB}/hub/oauth_callback")
    assert "code" in parse_qs(urlsplit(granted.headers["location"]).query)

