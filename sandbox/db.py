"""Database engines for every service: SQLite embedded, PostgreSQL by URL.

On SQLite every transaction begins IMMEDIATE (takes the write lock at once), so two
writers serialise instead of failing on a lock upgrade; on PostgreSQL row locks and
conditional updates do the same job. Either way a transaction sees a consistent ledger."""

from __future__ import annotations

from pathlib import Path

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    Table,
    and_,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import make_url

from sandbox.errors import InputError
from sandbox.units import Move


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise InputError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30, "isolation_level": None,
                                                     "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=20, max_overflow=20, pool_pre_ping=True)
    raise InputError(f"unsupported database {parsed.get_backend_name()!r}; "
                     "use sqlite:/// or postgresql://")


def upgrade_to_units(engine: Engine, metadata: MetaData,
                     moves: dict[str, dict[str, Move]]) -> None:
    """Carry the float ε/δ columns of a database made before exact units into their integer
    columns (``sandbox.units``), in one transaction per table; a table already in units, or
    not yet created, is left alone. Each value is converted in Python, exactly."""
    present = inspect(engine)
    for name, columns in moves.items():
        if not present.has_table(name):
            continue
        have = {c["name"] for c in present.get_columns(name)}
        old = [c for c in columns if c in have]
        if not old:
            continue
        key = [c.name for c in metadata.tables[name].primary_key]
        with engine.begin() as conn:
            ops = Operations(MigrationContext.configure(conn))
            for c in old:
                ops.add_column(name, Column(columns[c].column, BigInteger, nullable=True))
            table = Table(name, MetaData(), autoload_with=conn)
            for row in conn.execute(select(*(table.c[k] for k in key + old))).mappings():
                conn.execute(update(table).where(and_(*(table.c[k] == row[k] for k in key)))
                             .values({columns[c].column: columns[c].units(row[c]) for c in old}))
            with ops.batch_alter_table(name) as batch:
                for c in old:
                    batch.drop_column(c)
                    batch.alter_column(columns[c].column, existing_type=BigInteger,
                                       nullable=False)


def add_missing_columns(engine: Engine, table: Table) -> None:
    """Add to an existing ``table`` the integer columns its definition has and the
    database lacks (each with its server default): a database made before them keeps its
    rows, each at the default."""
    present = inspect(engine)
    if not present.has_table(table.name):
        return
    have = {c["name"] for c in present.get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in have]
    if not missing:
        return
    if any(c.server_default is None for c in missing):
        raise RuntimeError(f"{table.name}: a column added since this database was made "
                           "needs a server default to be added to it")
    with engine.begin() as conn:
        ops = Operations(MigrationContext.configure(conn))
        for column in missing:
            ops.add_column(table.name, Column(column.name, column.type, nullable=False,
                                              server_default=column.server_default.arg))
