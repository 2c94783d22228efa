"""The lockout counted by the database (SQLite and PostgreSQL): five wrong codes lock the
account, a right code is refused while it is locked, and once the lock has passed the
account signs in again and has five fresh tries — whatever the request loaded first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from portal import signin
from portal.models import User
from portal.security import is_locked
from tests.portal.conftest import make_user
from tests.signin import fresh_code, wrong_code


def test_the_lock_counts_in_the_database_and_passes(app, portal_settings):
    email = f"lock-{uuid.uuid4().hex[:8]}@example.cn"
    make_user(app, email, role="chair")
    sessions = app.extensions["portal.sessions"]
    settings = portal_settings
    with sessions() as db:
        stale = db.scalar(select(User).where(User.email == email))  # loaded before it all
        db.commit()  # (SQLite: no transaction held while the test's authenticator reads)
        for _ in range(settings.max_failed_logins - 1):
            with pytest.raises(signin.CodeRefused):
                signin.check_code(db, settings, stale, wrong_code(sessions, email),
                                  signin.Purpose.SIGN_IN)
        with pytest.raises(signin.AccountLocked):
            signin.check_code(db, settings, stale, wrong_code(sessions, email),
                              signin.Purpose.SIGN_IN)
        with pytest.raises(signin.AccountLocked):  # a right code changes nothing now
            signin.check_code(db, settings, stale, fresh_code(sessions, email),
                              signin.Purpose.SIGN_IN)
        assert is_locked(db.scalar(select(User.locked_until).where(User.email == email)))
        db.execute(update(User).where(User.email == email).values(
            locked_until=datetime.now(UTC) - timedelta(minutes=1)))  # half an hour later
        db.commit()
    with sessions() as db:
        user = db.scalar(select(User).where(User.email == email))
        db.commit()
        assert signin.check_code(db, settings, user, fresh_code(sessions, email),
                                 signin.Purpose.SIGN_IN)
        for _ in range(settings.max_failed_logins - 1):
            with pytest.raises(signin.CodeRefused):
                signin.check_code(db, settings, user, wrong_code(sessions, email),
                                  signin.Purpose.SIGN_IN)
        assert db.scalar(select(User.failed_logins).where(User.email == email)) == \
            settings.max_failed_logins - 1
