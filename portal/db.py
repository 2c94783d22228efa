"""Database access for the portal: one engine per app, a session per request, and schema
changes only through Alembic migrations (``portal/migrations``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sandbox import audit
from sandbox.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Bring the schema to the newest migration (and create the shared audit tables)."""
    command.upgrade(alembic_config(database_url), "head")


def connect(database_url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(database_url)
    audit.create_tables(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
