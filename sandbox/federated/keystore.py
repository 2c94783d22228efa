"""The key service's own database: registered sites, what it has spent of each of the
portal's authorizations, and every query id it decided (its outcome is final).

ε is kept in millionths, as integers (``sandbox.units``): the budget the key service holds
the gateway to is a sum of many spends, and integer sums are exact."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from sandbox import units
from sandbox.db import upgrade_to_units
from sandbox.errors import Forbidden
from sandbox.federated import standing
from sandbox.federated.authorization import Authorization

metadata = MetaData()
sites = Table(
    "sites", metadata,
    Column("name", String(64), primary_key=True),
    Column("public_pem", Text, nullable=False),
    Column("registered_at", String(40), nullable=False),
)
# What the key service has spent of each authorization (the portal's signed grant), and
# which query ids paid: the budget it holds the gateway to, whatever the gateway says.
budgets = Table(
    "budgets", metadata,
    Column("authorization_id", String(64), primary_key=True),
    Column("total_micro", BigInteger, nullable=False),
    Column("spent_micro", BigInteger, nullable=False),
)
spends = Table(
    "spends", metadata,
    Column("query_id", String(64), primary_key=True),
    Column("authorization_id", String(64), nullable=False),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("at", String(40), nullable=False),
)

# Every query id the key service decided, and how: its outcome is final.
queries = Table(
    "queries", metadata,
    Column("query_id", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("grant_id", String(64), nullable=False),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("decrypted", Boolean, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("at", String(40), nullable=False),
)

# Databases made before ε was kept in exact units: float columns → integer millionths.
EXACT_UNITS = {
    "budgets": {"total": units.Move("total_micro", units.MICRO),
                "spent": units.Move("spent_micro", units.MICRO, up=True)},
    "spends": {"epsilon": units.Move("epsilon_micro", units.MICRO, up=True)},
    "queries": {"epsilon": units.Move("epsilon_micro", units.MICRO, up=True)},
}


def create_tables(db: Engine) -> None:
    upgrade_to_units(db, metadata, EXACT_UNITS)
    metadata.create_all(db)
    standing.metadata.create_all(db)


def spend(db: Engine, granted: Authorization, epsilon: float, query_id: str) -> None:
    """Spend ``epsilon`` from the authorization's total, before decrypting: one conditional
    update (it cannot take the total past what the portal signed, however many requests
    arrive at once) and the query's spend row, together; a query id already paid for is
    not paid again."""
    total, cost = units.micro_epsilon(granted.epsilon), units.micro_epsilon(epsilon)
    try:
        with db.begin() as conn:
            conn.execute(insert(budgets).values(authorization_id=granted.id,
                                                total_micro=total, spent_micro=0))
    except IntegrityError:
        pass  # its budget exists already
    try:
        with db.begin() as conn:
            if conn.execute(select(spends.c.query_id).where(
                    spends.c.query_id == query_id)).first() is not None:
                return
            paid = conn.execute(update(budgets).where(
                budgets.c.authorization_id == granted.id,
                budgets.c.spent_micro + cost <= budgets.c.total_micro,
            ).values(spent_micro=budgets.c.spent_micro + cost)).rowcount
            if paid != 1:
                raise Forbidden(f"authorization {granted.id}: the key service has spent "
                                f"what the portal granted (ε = {granted.epsilon:g}); "
                                f"ε = {epsilon:g} more would exceed it")
            conn.execute(insert(spends).values(query_id=query_id,
                                               authorization_id=granted.id,
                                               epsilon_micro=cost, at=now()))
    except IntegrityError:
        return  # a concurrent request paid for this query id; this one's update undone


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
