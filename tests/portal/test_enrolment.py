"""Enrolling an authenticator (SQLite and PostgreSQL): the secret shown belongs to one
sign-in session, reaches the account only with its first valid code, and is never shown
again; of two sessions racing to enrol, one wins. Migration 0009 voids the secrets that
accounts without an authenticator held (shown to every password-holder before it).

Adversary: someone who has the password before the owner enrols and looks at the code page
(the served-portal version of this attack is ``tests/attacks/test_signin_enrolment.py``)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pyotp
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select

from portal.db import alembic_config
from portal.models import SignInSession, User
from sandbox import audit
from tests.portal.conftest import login, make_user

KEY = re.compile(r'id="totp-secret">([A-Z2-7]+)<')


def shown_key(client) -> str:
    return KEY.search(client.get("/mfa").get_data(as_text=True)).group(1)


def account(app, email: str) -> User:
    with app.extensions["portal.sessions"]() as db:
        return db.scalar(select(User).where(User.email == email))


def test_the_secret_shown_is_the_sessions_and_reaches_the_account_only_with_a_code(app):
    email = f"new-{uuid.uuid4().hex[:8]}@example.cn"
    make_user(app, email, role="expert", enrolled=False)
    first, second = app.test_client(), app.test_client()
    login(first, email)
    seen = shown_key(first)
    assert shown_key(first) == seen, "the same key on every look within one sign-in"
    assert account(app, email).totp_secret is None, "nothing on the account before a code"
    login(second, email)
    shown = shown_key(second)
    assert shown != seen, "each sign-in draws its own secret"

    wrong = second.post("/mfa", data={"code": pyotp.TOTP(seen).now()})  # another's key
    assert wrong.status_code == 401 and shown_key(second) == shown
    assert not account(app, email).totp_enabled
    assert second.post("/mfa", data={"code": pyotp.TOTP(shown).now()}).status_code == 302
    enrolled = account(app, email)
    assert enrolled.totp_enabled and enrolled.totp_secret == shown

    # the first session's key is void; its page no longer shows any key, nor does a later one
    page = first.get("/mfa").get_data(as_text=True)
    assert 'id="totp-secret"' not in page and shown not in page and seen not in page
    assert first.post("/mfa", data={"code": pyotp.TOTP(seen).now()}).status_code == 401
    later = app.test_client()
    login(later, email)
    assert shown not in later.get("/mfa").get_data(as_text=True)
    with app.extensions["portal.sessions"]() as db:
        live = db.scalars(select(SignInSession).join(User).where(
            User.email == email, SignInSession.ended_at.is_(None))).all()
        assert shown not in {s.pending_totp_secret for s in live}
        assert audit.verify(db.connection()).ok


def test_of_two_sessions_enrolling_the_first_code_wins(app):
    email = f"race-{uuid.uuid4().hex[:8]}@example.cn"
    make_user(app, email, enrolled=False)
    mine, theirs = app.test_client(), app.test_client()
    login(mine, email)
    login(theirs, email)
    my_key, their_key = shown_key(mine), shown_key(theirs)
    assert theirs.post("/mfa", data={"code": pyotp.TOTP(their_key).now()}).status_code == 302
    late = mine.post("/mfa", data={"code": pyotp.TOTP(my_key).now()})
    page = late.get_data(as_text=True)
    assert late.status_code == 401 and 'role="alert"' in page
    assert "另一次登录中绑定" in page or "enrolled an authenticator in another sign-in" in page
    assert 'id="totp-secret"' not in page, "the void key is not shown again"
    assert account(app, email).totp_secret == their_key


@pytest.fixture
def empty_database(portal_settings, tmp_path, request):
    """A database of the same kind as the app's that no app has migrated yet."""
    if portal_settings.database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'migration.db'}"
        return
    yield request.getfixturevalue("postgres").new_database()


def test_migration_0009_voids_the_secrets_of_accounts_without_an_authenticator(
        empty_database):
    url = empty_database
    config = alembic_config(url)
    command.upgrade(config, "0008")
    users = sa.table("users", *(sa.column(c) for c in (
        "id", "email", "name", "password_hash", "role", "totp_secret", "totp_enabled",
        "failed_logins", "created_at")))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for uid, enrolled in ((1, True), (2, False)):
            conn.execute(users.insert().values(
                id=uid, email=f"{uid}@x.cn", name="n", password_hash="h", role="expert",
                totp_secret=f"SECRET{uid}AAAAAAAAAAAAAAAAAAAAAAAAA", totp_enabled=enrolled,
                failed_logins=0, created_at=datetime.now(UTC)))
    command.upgrade(config, "0009")
    with engine.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT id, totp_secret FROM users")).all()) == {
            1: "SECRET1AAAAAAAAAAAAAAAAAAAAAAAAA", 2: None}
    command.downgrade(config, "0008")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("signin_sessions")}
        assert "pending_totp_secret" not in columns
    engine.dispose()
