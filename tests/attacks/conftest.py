"""What the attack tests share: the portal served as its own process (``sandboxctl portal
serve``: CSRF protection and rate limits on) beside a gateway process, and clients that
each come from their own loopback address, as different machines would; and, for attacks
on the data plane, the federation of tests/federated (site and key-service processes, the
gateway as its own process) and a gateway process over the session's central dataset."""

from __future__ import annotations

import re
import uuid

import httpx
import pyotp
import pytest

from portal.db import connect
from portal.models import Profile, User
from portal.security import hash_password
from tests import committee
from tests.browser.conftest import portal_stack
from tests.federated.conftest import cluster, exact, noisy  # noqa: F401
from tests.gateway.conftest import datasets_dir, spark_server  # noqa: F401
from tests.signin import fresh_code
from tests.tiers import tier

PASSWORD = "Attack-test-42"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_addresses = iter(f"127.1.{a}.{b}" for a in range(1, 250) for b in range(2, 250))


def address() -> str:
    return next(_addresses)


def serve(dataset, root, database_url: str | None = None, before_serving=None):
    """(stack, sessions): the served portal and a database session factory on its DB
    (SQLite unless ``database_url`` names another)."""
    env = {"SANDBOX_PORTAL_SECRETS_DIR": str(root / "secrets")}
    if database_url:
        env["SANDBOX_PORTAL_DATABASE_URL"] = database_url
    for stack in portal_stack(dataset, root, before_serving, env=env):
        _engine, sessions = connect(stack.env["SANDBOX_PORTAL_DATABASE_URL"])
        yield stack, sessions


@pytest.fixture(scope="module")
@tier("service")
def served(dataset, tmp_path_factory):
    yield from serve(dataset, tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="module")
@tier("service")
def served_postgres(dataset, tmp_path_factory, postgres):
    """The same portal on PostgreSQL (the production database the README names)."""
    yield from serve(dataset, tmp_path_factory.mktemp("attacks-pg"), postgres.new_database())


def person(sessions, role: str = "researcher", institution: str = "岭南大学") -> str:
    """An enrolled account (TOTP secret in the database); returns its e-mail."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@lingnan.cn"
    with sessions() as db:
        db.add(User(email=email, name=f"{role}-{email[:12]}", role=role,
                    password_hash=hash_password(PASSWORD), totp_secret=pyotp.random_base32(),
                    totp_enabled=True, profile=Profile(
                        institution=committee.entry(db, institution), title="研究员",
                        years_experience=10, credit_grade="A")))
        db.commit()
    return email


class Visitor:
    """A browser-less client from its own address: keeps cookies, follows nothing."""

    def __init__(self, url: str, cookies: dict | None = None) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=60,
                                 cookies=cookies,
                                 transport=httpx.HTTPTransport(local_address=address()))

    def token(self, page: str) -> str:
        found = TOKEN.search(self.http.get(page, follow_redirects=True).text)
        return found.group(1) if found else ""

    def form(self, path: str, data: dict, page: str | None = None) -> httpx.Response:
        """POST a form the way its page does (with the CSRF token of this session)."""
        return self.http.post(path, data=data | {"csrf_token": self.token(page or path)})

    def password(self, email: str) -> httpx.Response:
        return self.form("/login", {"email": email, "password": PASSWORD})

    def sign_in(self, sessions, email: str) -> httpx.Response:
        answer = self.password(email)
        assert answer.status_code == 302 and answer.headers["location"].endswith("/mfa")
        answer = self.form("/mfa", {"code": fresh_code(sessions, email)})
        assert answer.status_code == 302, answer.text[:300]
        return answer


def author(url: str, sessions, email: str) -> Visitor:
    """The researcher of a project ``tests.portal.conftest.active_project`` made (its own
    password), signed in with password and code."""
    from tests.portal.conftest import PASSWORD as RESEARCHER_PASSWORD

    visitor = Visitor(url)
    answer = visitor.form("/login", {"email": email, "password": RESEARCHER_PASSWORD})
    assert answer.headers["location"].endswith("/mfa"), answer.text[:300]
    answer = visitor.form("/mfa", {"code": fresh_code(sessions, email)})
    assert answer.status_code == 302, answer.text[:300]
    return visitor
