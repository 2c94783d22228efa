"""Test factories for committee data: registry entries by name, and a researcher's title
and credit grade verified by an admin against a real evidence file — through the portal's
own functions, so fixtures obey the same rules as the pages."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from portal import credentials, institutions
from portal.models import Institution, Profile, User
from portal.security import hash_password
from tests.conftest import ROOT

EVIDENCE = ROOT / "tests" / "browser" / "certificate.pdf"  # a real one-page PDF


def entry(db: Session, name: str, name_en: str | None = None) -> Institution:
    """The registry entry ``name`` spells, added (with ``name_en``, default ``name``) when
    the registry lacks it."""
    return institutions.resolve(db, name) or institutions.add(
        db, "test:fixture", name, name_en or name)


def admin(db: Session) -> User:
    user = User(email=f"admin-{uuid.uuid4().hex[:8]}@example.cn", name="管理员",
                role="admin", password_hash=hash_password("admin password 42"),
                profile=Profile())
    db.add(user)
    db.commit()
    return user


def verify(db: Session, user: User, by: User | None = None,
           kinds: tuple[str, ...] = credentials.KINDS) -> None:
    """An admin verifies ``user``'s claims (title and credit grade by default)."""
    by = by or admin(db)
    for kind in kinds:
        credentials.verify(db, by, user, kind, getattr(user.profile, kind),
                           EVIDENCE.read_bytes())
