"""A portal app per database backend, with the session's onboarded dataset in its catalog."""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from portal import create_app, exports, signin
from portal import gateway as portal_gateway
from portal.config import PortalSettings
from portal.models import (
    Agreement,
    Application,
    DecisionRecord,
    ExportRequest,
    Profile,
    User,
)
from portal.security import hash_password
from tests import committee
from tests.services import GatewayProcess
from tests.signin import code_after, fresh_code
from tests.tiers import tier

PASSWORD = "correct horse 42"


@pytest.fixture(scope="session")
def catalog_dir(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    shutil.copytree(dataset, root / "emr-visits")
    return root


@pytest.fixture(scope="module")
@tier("service")
def gateway(catalog_dir, tmp_path_factory):
    """A gateway process serving the catalog, for flows that create and change grants."""
    state = tmp_path_factory.mktemp("portal-gateway")
    process = GatewayProcess.on_sqlite(catalog_dir, state).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def portal_settings(request, catalog_dir, tmp_path_factory):
    state = tmp_path_factory.mktemp("portal")
    if request.param == "sqlite":
        url = f"sqlite:///{state / 'portal.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    return PortalSettings(database_url=url, state_dir=state, datasets_dir=catalog_dir,
                          testing=True)


@pytest.fixture(scope="module")
def app(portal_settings):
    return create_app(portal_settings)


@pytest.fixture
def client(app):
    return app.test_client()


def make_user(app, email: str, role: str = "researcher", institution: str | None = None,
              verified: bool = False, enrolled: bool = True, **profile) -> User:
    """An account; ``institution`` names a registry entry (added when missing);
    ``verified`` has an admin verify the title and credit grade against an evidence file;
    ``enrolled``: with an authenticator already (a random TOTP secret), otherwise it
    enrols at its first sign-in."""
    sessions = app.extensions["portal.sessions"]
    with sessions() as db:
        if institution:
            profile["institution"] = committee.entry(db, institution)
        user = User(email=email, name=email.split("@")[0], role=role,
                    password_hash=hash_password(PASSWORD), profile=Profile(**profile),
                    totp_secret=pyotp.random_base32() if enrolled else None,
                    totp_enabled=enrolled)
        db.add(user)
        db.commit()
        if verified:
            committee.verify(db, user)
        return user


def login(client, email: str, password: str = PASSWORD):
    """The password step only (the session still lacks its TOTP code)."""
    return client.post("/login", data={"email": email, "password": password})


def sign_in(client, email: str, password: str = PASSWORD):
    """Password and a fresh TOTP code (enrolling first if the account has none): a
    complete sign-in; returns the answer to the code."""
    assert login(client, email, password).status_code == 302
    user_sessions = client.application.extensions["portal.sessions"]
    with user_sessions() as db:
        enrolled = db.query(User).filter_by(email=email).one().totp_enabled
    if enrolled:
        code = fresh_code(user_sessions, email)
    else:  # the key the code page shows for this sign-in, as a person would type it
        page = client.get("/mfa").get_data(as_text=True)
        code = pyotp.TOTP(re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)).now()
    response = client.post("/mfa", data={"code": code})
    assert response.status_code == 302, response.get_data(as_text=True)[-500:]
    return response


def enrol_totp(client) -> str:
    """Enrol from the QR page's key, as a person would; returns the secret."""
    page = client.get("/mfa").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    response = client.post("/mfa", data={"code": pyotp.TOTP(secret).now()})
    assert response.status_code == 302
    return secret


@dataclass(frozen=True)
class Project:
    application_id: int
    researcher_id: int
    email: str
    grant_id: str
    token: str


def active_project(app, settings: PortalSettings, fields: list[str],
                   epsilon: float = 2.0, project_title: str = "测试项目",
                   **profile) -> Project:
    """An active project with a real grant on the gateway ``settings`` names (and its
    agreement), for a new researcher."""
    with app.extensions["portal.sessions"]() as db:
        email = f"r-{uuid.uuid4().hex[:8]}@example.cn"
        profile["institution"] = committee.entry(db, profile.get("institution", "岭南大学"))
        user = User(email=email, name="研究者", role="researcher",
                    password_hash=hash_password(PASSWORD), totp_enabled=True,
                    totp_secret=pyotp.random_base32(), profile=Profile(**profile))
        db.add(user)
        db.flush()
        application = Application(researcher_id=user.id, title=project_title,
                                  purpose="medical_research", non_profit=True, state="active")
        db.add(application)
        db.flush()
        decision = DecisionRecord(application_id=application.id, verdict="approve",
                                  reasons="ok", fields=fields, epsilon=epsilon, delta=0.0,
                                  term_months=6, decided_by=user.id)
        expires = datetime.now(UTC) + timedelta(days=180)
        grant_id, token = portal_gateway.create_grant(settings, application.id,
                                                      "medical_research", decision,
                                                      ["emr-visits"], expires)
        db.add(Agreement(application_id=application.id, pdf=b"%PDF-", sha256="0",
                         signed_by=user.id, grant_id=grant_id, expires_at=expires))
        db.commit()
        return Project(application.id, user.id, email, grant_id, token)


def confirm_export(db, settings: PortalSettings, request_id: int) -> ExportRequest:
    """The author confirms an export request sent from the sandbox as the project page has
    them do it — a fresh code (step-up), then the confirmation, which starts the checks."""
    request = db.get(ExportRequest, request_id)
    assert request.state == "unconfirmed" and not request.checks, "nothing checked before"
    author = db.get(Application, request.application_id).researcher
    signin.check_code(db, settings, author, code_after(author.totp_secret,
                                                       author.totp_last_step),
                      signin.Purpose.EXPORT_REQUEST, f"export:{request_id}")
    exports.confirm(db, settings, request, author)
    return request
