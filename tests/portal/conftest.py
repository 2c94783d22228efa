"""A portal app per database backend, with the session's onboarded dataset in its catalog."""

from __future__ import annotations

import re
import shutil

import pyotp
import pytest

from portal import create_app
from portal.config import PortalSettings
from portal.models import Profile, User
from portal.security import hash_password
from tests.services import GatewayProcess, Postgres

PASSWORD = "correct horse 42"


@pytest.fixture(scope="session")
def catalog_dir(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    shutil.copytree(dataset, root / "emr-visits")
    return root


@pytest.fixture(scope="module")
def gateway(catalog_dir, tmp_path_factory):
    """A gateway process serving the catalog, for flows that create and change grants."""
    state = tmp_path_factory.mktemp("portal-gateway")
    process = GatewayProcess(catalog_dir, state / "state",
                             f"sqlite:///{state / 'gateway.db'}").start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def portal_settings(request, catalog_dir, tmp_path_factory):
    state = tmp_path_factory.mktemp("portal")
    server = None
    if request.param == "sqlite":
        url = f"sqlite:///{state / 'portal.db'}"
    else:
        server = Postgres.start()
        url = server.new_database()
    yield PortalSettings(database_url=url, state_dir=state, datasets_dir=catalog_dir,
                         testing=True)
    if server:
        server.stop()


@pytest.fixture(scope="module")
def app(portal_settings):
    return create_app(portal_settings)


@pytest.fixture
def client(app):
    return app.test_client()


def make_user(app, email: str, role: str = "researcher", **profile) -> User:
    sessions = app.extensions["portal.sessions"]
    with sessions() as db:
        user = User(email=email, name=email.split("@")[0], role=role,
                    password_hash=hash_password(PASSWORD), profile=Profile(**profile))
        db.add(user)
        db.commit()
        return user


def login(client, email: str, password: str = PASSWORD):
    return client.post("/login", data={"email": email, "password": password})


def enrol_totp(client) -> str:
    page = client.get("/mfa").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    response = client.post("/mfa", data={"code": pyotp.TOTP(secret).now()})
    assert response.status_code == 302
    return secret
