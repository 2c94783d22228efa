"""What someone with full write access to one service's database does to its audit chain,
done as they would (with ``sandbox.audit``'s own hashing, so the chain stays internally
consistent), and what the tests need around it: copies of a database, the witness caught
up, ``sandboxctl audit verify`` run as a subprocess."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, delete, func, insert, select, text, update

from sandbox import audit
from sandbox.audit import audit_checkpoint, audit_head, audit_log
from sandbox.db import make_engine
from tests.conftest import CliResult, run_cli
from tests.services import Postgres


def last_seq(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0
    engine.dispose()
    return last


def consistent(url: str) -> bool:
    """What ``audit verify`` checked before anchors: the chain is internally consistent."""
    engine = make_engine(url)
    with engine.connect() as conn:
        ok = audit.verify(conn).ok
    engine.dispose()
    return ok


def cut_tail(url: str, entries: int) -> int:
    """Delete the last ``entries`` entries and move the head onto the new last one; the
    first entry removed."""
    engine = make_engine(url)
    with engine.begin() as conn:
        last = conn.execute(select(func.max(audit_log.c.seq))).scalar()
        keep = last - entries
        conn.execute(delete(audit_log).where(audit_log.c.seq > keep))
        digest = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == keep)).scalar()
        conn.execute(update(audit_head).where(audit_head.c.id == 1)
                     .values(seq=keep, hash=digest))
    engine.dispose()
    return keep + 1


def rewrite(url: str, seq: int, **changes: str) -> None:
    """Change entry ``seq`` and re-hash it and every later entry, and the head, as the
    chain's own code would have."""
    engine = make_engine(url)
    with engine.begin() as conn:
        before = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == seq - 1)
                              ).scalar()
        if before is None:
            pruned = conn.execute(select(audit_checkpoint.c.hash)).scalar()
            before = pruned or audit.GENESIS
        rows = conn.execute(select(audit_log).where(audit_log.c.seq >= seq)
                            .order_by(audit_log.c.seq)).mappings().all()
        previous = before
        for index, row in enumerate(rows):
            entry = {k: row[k] for k in ("seq", "at", "actor", "action", "subject",
                                         "details", "prev_hash")}
            if index == 0:
                entry.update(changes)
            entry["prev_hash"] = previous
            digest = audit._hash(entry)
            conn.execute(update(audit_log).where(audit_log.c.seq == row["seq"])
                         .values(**entry, hash=digest))
            previous = digest
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=previous))
    engine.dispose()


def plant(url: str, action: str, details: str, subject: str = "service:gateway") -> int:
    """Append an entry with raw ``details`` (anything, not only a JSON object), hashed and
    chained as ``audit.append`` would: the chain stays consistent. Its sequence number."""
    engine = make_engine(url)
    with engine.begin() as conn:
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
        entry = {"seq": head.seq + 1, "at": audit.stamp(datetime.now(UTC)),
                 "actor": "someone", "action": action, "subject": subject,
                 "details": details, "prev_hash": head.hash}
        digest = audit._hash(entry)
        conn.execute(insert(audit_log).values(**entry, hash=digest))
        conn.execute(update(audit_head).where(audit_head.c.id == 1)
                     .values(seq=entry["seq"], hash=digest))
    engine.dispose()
    return entry["seq"]


def forge_pruning(url: str, through: int, older_than: str) -> None:
    """What ``audit.prune`` leaves behind, made by hand: entries up to ``through`` deleted,
    the retention checkpoint set to the last of them, and an ``audit.pruned`` entry
    appended that vouches for it and claims the cutoff ``older_than``."""
    engine = make_engine(url)
    with engine.begin() as conn:
        digest = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == through)
                              ).scalar_one()
        removed = conn.execute(delete(audit_log).where(audit_log.c.seq <= through)).rowcount
        values = {"seq": through, "hash": digest, "at": audit.stamp(datetime.now(UTC))}
        if conn.execute(update(audit_checkpoint).values(**values)).rowcount == 0:
            conn.execute(insert(audit_checkpoint).values(id=1, **values))
        audit.append(conn, audit.AuditAction.AUDIT_PRUNED, "system:retention", "audit:log",
                     {"through_seq": through, "through_hash": digest, "entries": removed,
                      "older_than": older_than, "retention_days": 183})
    engine.dispose()


def copy_sqlite(url: str, target: Path) -> str:
    """A consistent copy of a SQLite database (even one a service has open)."""
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    copy = sqlite3.connect(target)
    with copy:
        source.backup(copy)
    source.close()
    copy.close()
    return f"sqlite:///{target}"


def copy_postgres(server: Postgres, url: str) -> str:
    """A copy of a PostgreSQL database nobody is connected to."""
    name = f"sandbox_copy_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{url.rsplit("/", 1)[1]}"'))
    admin.dispose()
    server.databases.append(name)
    return server.base_url.rsplit("/", 1)[0] + f"/{name}"


def copy_database(url: str, work: Path, server: Postgres | None = None) -> str:
    if url.startswith("sqlite"):
        return copy_sqlite(url, work / f"copy-{uuid.uuid4().hex[:8]}.db")
    assert server is not None
    return copy_postgres(server, url)


def witnessed_through(path: Path) -> int:
    from sandbox.witness import WitnessFile

    snapshot = WitnessFile(path).snapshot()
    try:
        return max((line.seq for line in snapshot.lines()), default=0)
    finally:
        snapshot.close()


def wait_witnessed(path: Path, url: str, timeout: float = 30) -> int:
    """Until the witness holds the chain's last entry; that entry."""
    deadline = time.monotonic() + timeout
    while True:
        last = last_seq(url)
        if path.exists() and witnessed_through(path) >= last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not catch up with entry {last}")
        time.sleep(0.2)


def verify(url: str, *options: str | Path) -> CliResult:
    return run_cli("audit", "verify", "--database-url", url, *options)
