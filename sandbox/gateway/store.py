"""The gateway's own database: grants, the release ledger, consent withdrawals (and, through
``sandbox.audit``, the audit chain). SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from sandbox import audit, units
from sandbox.db import add_missing_columns, upgrade_to_units

metadata = MetaData()

grants = Table(
    "grants", metadata,
    Column("id", String(32), primary_key=True),
    Column("project", String(100), nullable=False),
    Column("datasets", Text, nullable=False),  # JSON list
    Column("fields", Text, nullable=False),  # JSON list
    Column("purpose", String(40), nullable=False),
    # ε in millionths and δ in units of 1e-18, as integers (sandbox.units): sums stay exact
    Column("epsilon_total_micro", BigInteger, nullable=False),
    Column("delta_total_atto", BigInteger, nullable=False),
    Column("epsilon_spent_micro", BigInteger, nullable=False, default=0),
    Column("delta_spent_atto", BigInteger, nullable=False, default=0),
    # the zero-concentrated pool of the grant's Gaussian releases: their ρ in units of
    # 10⁻¹⁵, rounded up, and their δ (already in delta_spent); docs/adr/0017
    Column("rho_spent_femto", BigInteger, nullable=False, server_default="0"),
    Column("delta_pooled_atto", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("status_reason", Text, nullable=False, default=""),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", String(40), nullable=False),
)

# A grant bound to networks answers only requests from them: a sandbox's own subnet, so the
# project's token works from its sandbox and nowhere else.
grant_networks = Table(
    "grant_networks", metadata,
    Column("grant_id", String(32), primary_key=True),
    Column("networks", Text, nullable=False),  # JSON list of CIDRs
    Column("bound_at", String(40), nullable=False),
)

# Export requests as submitted from sandboxes (the only way out of a sandbox is through the
# gateway); the portal collects them for checks and review.
exports = Table(
    "exports", metadata,
    Column("id", String(32), primary_key=True),
    Column("grant_id", String(32), nullable=False, index=True),
    Column("project", String(100), nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("files", Text, nullable=False),  # JSON [{name, size, sha256, content (base64)}]
    Column("receipts", Text, nullable=False),  # JSON list of receipts
    Column("created_at", String(40), nullable=False),
)

releases = Table(
    "releases", metadata,
    Column("id", String(32), primary_key=True),
    Column("grant_id", String(32), nullable=False, index=True),
    Column("query_hash", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("dataset_version", String(40), nullable=False),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("delta_atto", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),  # charged | released | failed
    Column("value", Text),
    Column("receipt", Text),
    Column("error", Text),
    Column("created_at", String(40), nullable=False),
    Column("released_at", String(40)),
    UniqueConstraint("grant_id", "query_hash", name="uq_release_query"),
)

# Per-token rate-limit buckets, shared by gateway replicas on one PostgreSQL database
# (``ratelimit.SharedRateLimiter``); a single SQLite gateway keeps them in memory.
rate_buckets = Table(
    "rate_buckets", metadata,
    Column("key", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("at", Float, nullable=False),  # seconds since the epoch, last taken
)

withdrawals = Table(
    "withdrawals", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pseudonym", String(64), nullable=False),
    Column("purpose", String(40), nullable=False),  # a purpose, or "*" for all
    Column("recorded_at", String(40), nullable=False),
    Column("recorded_by", String(100), nullable=False),
    UniqueConstraint("pseudonym", "purpose", name="uq_withdrawal"),
)

# How far each federated site has been told the withdrawals (``deliveries``): every row
# with an id up to ``through``, ``version`` rows in all.
site_deliveries = Table(
    "site_deliveries", metadata,
    Column("site", String(64), primary_key=True),
    Column("through", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("at", String(40), nullable=False),
)


# The portal's signed authorization of a grant (what the sites and the key service check
# federated queries against), kept as the portal sent it.
grant_authorizations = Table(
    "grant_authorizations", metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("authorization_id", String(64), nullable=False),
    Column("document", Text, nullable=False),
)


# The portal's grant state statements, kept until the key service has taken each one (the
# gateway relays them at once and retries the rest every few seconds).
grant_statements = Table(
    "grant_statements", metadata,
    Column("id", String(64), primary_key=True),
    Column("project", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("document", Text, nullable=False),
    Column("received_at", String(40), nullable=False),
    Column("told_at", String(40), nullable=True),
)


# Databases made before ε and δ were kept in exact units: float columns → integer units.
EXACT_UNITS = {
    "grants": {"epsilon_total": units.Move("epsilon_total_micro", units.MICRO),
               "delta_total": units.Move("delta_total_atto", units.ATTO),
               "epsilon_spent": units.Move("epsilon_spent_micro", units.MICRO, up=True),
               "delta_spent": units.Move("delta_spent_atto", units.ATTO, up=True)},
    "releases": {"epsilon": units.Move("epsilon_micro", units.MICRO, up=True),
                 "delta": units.Move("delta_atto", units.ATTO, up=True)},
}


def create_tables(engine: Engine) -> None:
    upgrade_to_units(engine, metadata, EXACT_UNITS)
    add_missing_columns(engine, grants)
    metadata.create_all(engine)
    audit.create_tables(engine)
