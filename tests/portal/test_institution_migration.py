"""Migration 0008 on a database that holds free-text institutions (SQLite and PostgreSQL):
each becomes a claim awaiting a chair — no typed text is trusted as an identity — and the
downgrade restores the text."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from portal.db import alembic_config


def test_typed_institutions_become_pending_claims(portal_settings):
    url = portal_settings.database_url  # a fresh database: this module never opens the app
    config = alembic_config(url)
    command.upgrade(config, "0006")
    users = sa.table("users", *(sa.column(c) for c in (
        "id", "email", "name", "password_hash", "role", "totp_enabled", "failed_logins",
        "created_at")))
    profiles = sa.table("profiles", *(sa.column(c) for c in (
        "user_id", "institution", "title", "years_experience", "research_field",
        "credit_grade", "blacklisted")), sa.column("declared_conflicts", sa.JSON))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for uid, institution in ((1, "lingnan university"), (2, "")):
            conn.execute(users.insert().values(
                id=uid, email=f"{uid}@x.cn", name="n", password_hash="h", role="researcher",
                totp_enabled=False, failed_logins=0, created_at=datetime.now(UTC)))
            conn.execute(profiles.insert().values(
                user_id=uid, institution=institution, title="", years_experience=0,
                research_field="", credit_grade="", blacklisted=False, declared_conflicts=[]))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        claims = conn.execute(sa.text(
            "SELECT id, user_id, text, state FROM institution_claims")).all()
        assert [(c.user_id, c.text, c.state) for c in claims] == [
            (1, "lingnan university", "pending")]
        assert dict(conn.execute(sa.text(
            "SELECT user_id, institution_claim_id FROM profiles")).all()) == {
            1: claims[0].id, 2: None}
    command.downgrade(config, "0006")
    with engine.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT user_id, institution FROM profiles")).all()) \
            == {1: "lingnan university", 2: ""}
    engine.dispose()
