"""Migration 0010 on a database with a registry, an open application and its panel (SQLite
and PostgreSQL): applications and assignments get the institutions their people name now,
the key table holds skeletons (a look-alike added before keeps its names but cannot take
the older entry's skeleton), and the downgrade restores the folded keys."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from approvals.institutions import key, skeletons
from portal.db import alembic_config

LOOK_ALIKE = "Lingn\u0430n University"  # Cyrillic а, added under the folded keys


def _table(name: str, *columns: str, json: tuple[str, ...] = ()) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in columns),
                    *(sa.column(c, sa.JSON) for c in json))


def test_open_applications_and_the_registry_are_carried_over(portal_settings):
    url = portal_settings.database_url  # a fresh database: this module never opens the app
    config = alembic_config(url)
    command.upgrade(config, "0009")
    now = datetime.now(UTC)
    institutions = _table("institutions", "id", "name_zh", "name_en", "created_at",
                          json=("aliases",))
    keys = _table("institution_keys", "key", "institution_id")
    users = _table("users", "id", "email", "name", "password_hash", "role", "totp_enabled",
                   "failed_logins", "created_at")
    profiles = _table("profiles", "user_id", "institution_id", "title", "years_experience",
                      "research_field", "credit_grade", "blacklisted",
                      json=("declared_conflicts",))
    applications = _table("applications", "id", "researcher_id", "title", "summary",
                          "purpose", "non_profit", "epsilon_requested", "term_months", "state",
                          "created_at", "updated_at", json=("team",))
    assignments = _table("assignments", "id", "application_id", "expert_id", "assigned_at")
    engine = sa.create_engine(url)
    entries = {1: ("岭南大学", "Lingnan University"), 2: ("中山医院", "Zhongshan Hospital"),
               3: ("岭南大学（仿）", LOOK_ALIKE)}
    with engine.begin() as conn:
        for number, (zh, en) in entries.items():
            conn.execute(institutions.insert().values(id=number, name_zh=zh, name_en=en,
                                                      aliases=[], created_at=now))
            for folded in {key(zh), key(en)}:
                conn.execute(keys.insert().values(key=folded, institution_id=number))
        for uid, role, institution in ((1, "researcher", 1), (2, "expert", 2)):
            conn.execute(users.insert().values(
                id=uid, email=f"{uid}@x.cn", name="n", password_hash="h", role=role,
                totp_enabled=False, failed_logins=0, created_at=now))
            conn.execute(profiles.insert().values(
                user_id=uid, institution_id=institution, title="", years_experience=0,
                research_field="", credit_grade="", blacklisted=False, declared_conflicts=[]))
        for number, state in ((1, "under_review"), (2, "draft")):
            conn.execute(applications.insert().values(
                id=number, researcher_id=1, title="t", summary="", purpose="medical_research",
                non_profit=True, epsilon_requested=1.0, term_months=6, state=state,
                created_at=now, updated_at=now, team=[]))
        conn.execute(assignments.insert().values(id=1, application_id=1, expert_id=2,
                                                 assigned_at=now))

    command.upgrade(config, "head")
    with engine.connect() as conn:
        opened = dict(conn.execute(sa.text(
            "SELECT id, submitted_institution_id FROM applications")).all())
        assert opened == {1: 1, 2: None}
        assert conn.execute(sa.text(
            "SELECT submitted_at FROM applications WHERE id = 1")).scalar() is not None
        assert conn.execute(sa.text("SELECT institution_id FROM assignments")).scalar() == 2
        held = dict(conn.execute(sa.text("SELECT key, institution_id FROM institution_keys"))
                    .all())
        for number in (1, 2):
            names = entries[number]
            assert {k for k, i in held.items() if i == number} == \
                skeletons(names[0]) | skeletons(names[1])
        # The older entry keeps the shared skeleton; the look-alike keeps only its own.
        assert {held[form] for form in skeletons("Lingnan University")} == {1}
        assert {k for k, i in held.items() if i == 3} == skeletons("岭南大学（仿）")
        assert conn.execute(sa.text("SELECT count(*) FROM former_institutions")).scalar() == 0

    command.downgrade(config, "0009")
    with engine.connect() as conn:
        held = dict(conn.execute(sa.text("SELECT key, institution_id FROM institution_keys"))
                    .all())
        assert held == {key(n): number for number, names in entries.items() for n in names}
        columns = {c["name"] for c in sa.inspect(conn).get_columns("assignments")}
        assert "institution_id" not in columns
    engine.dispose()
