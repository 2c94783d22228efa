"""Consent at the gateway: a patient's withdrawal, by pseudonym, for some purposes or all,
recorded once and read back as the set every view applies. Each is a row and an entry of
the audit chain; the chain — hash-linked and witnessed outside the database — is what
``restore`` writes missing rows back from."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.gateway.grants import now
from sandbox.gateway.store import withdrawals
from sandbox.purposes import ALL, IDS

MAX_BATCH = 100_000
CARRIED_BATCH = 10_000  # withdrawals per consent.carried entry
PSEUDONYM = re.compile(r"[0-9a-f]{64}")  # whole strings only: use fullmatch

log = logging.getLogger("sandbox.gateway")


class Withdrawal(BaseModel):
    """A patient's withdrawal of consent, by pseudonym, for some purposes or all."""

    model_config = ConfigDict(extra="forbid")

    pseudonym: str = Field(pattern=rf"^{PSEUDONYM.pattern}$")
    purposes: list[str] | None = None

    @field_validator("purposes")
    @classmethod
    def _known(cls, purposes: list[str] | None) -> list[str] | None:
        if purposes is not None:
            unknown = sorted(set(purposes) - set(IDS))
            if unknown or not purposes:
                raise ValueError(f"unknown purposes {unknown}; one of {', '.join(IDS)}")
        return purposes

    def withdrawn(self) -> list[str]:
        """The purposes withdrawn ("*" for all)."""
        return self.purposes or [ALL]


class Withdrawals(BaseModel):
    """Many withdrawals in one call (a controller's bulk intake)."""

    model_config = ConfigDict(extra="forbid")

    withdrawals: list[Withdrawal] = Field(min_length=1, max_length=MAX_BATCH)


def record(db: Engine, actor: str, requests: list[Withdrawal]) -> list[tuple[str, str]]:
    """Record withdrawals in one transaction, each patient's audited; the (pseudonym,
    purpose) pairs not withdrawn before."""
    wanted = {(r.pseudonym, p): None for r in requests for p in r.withdrawn()}
    pseudonyms = sorted({p for p, _ in wanted})
    with db.begin() as conn:
        known = set()
        for start in range(0, len(pseudonyms), 1000):
            chunk = pseudonyms[start:start + 1000]
            known |= {(r.pseudonym, r.purpose) for r in conn.execute(
                select(withdrawals.c.pseudonym, withdrawals.c.purpose)
                .where(withdrawals.c.pseudonym.in_(chunk)))}
        new = [pair for pair in wanted if pair not in known]
        if new:
            new = _insert(conn, new, actor, now())
        for request in requests:
            audit.append(conn, AuditAction.CONSENT_WITHDRAWN, actor,
                         f"patient:{request.pseudonym}", {"purposes": request.withdrawn()})
    return new


class Copy:
    """The withdrawals a gateway took in, also appended to a file in its state directory —
    outside the database, as its audit witness is —, one ``pseudonym purpose`` line each:
    what ``restore`` writes back even once retention pruning has removed the audit entries,
    or if someone prunes the chain by hand without carrying them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(f"{p} {purpose}\n" for p, purpose in pairs)
            out.flush()
            os.fsync(out.fileno())

    def pairs(self) -> set[tuple[str, str]]:
        if not self.path.exists():
            return set()
        found = set()
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            pseudonym, _, purpose = line.partition(" ")
            if PSEUDONYM.fullmatch(pseudonym) and (purpose == ALL or purpose in IDS):
                found.add((pseudonym, purpose))
        return found


def expected(db: Engine, copy: Copy | None = None) -> set[tuple[str, str]]:
    """Every withdrawal recorded outside the withdrawals table: the audit chain's and the
    gateway's own copy."""
    with db.connect() as conn:
        return _recorded(conn) | (copy.pairs() if copy else set())


def restore(db: Engine, recorded: set[tuple[str, str]]) -> int:
    """Write back every withdrawal ``recorded`` outside the table (``expected``) that the
    withdrawals table lacks (rows someone deleted to put a patient back into the answers),
    audited; how many were written. The gateway does this as it starts, before it answers
    anything (and then refuses to answer while any is still missing)."""
    with db.begin() as conn:
        missing = sorted(recorded - {(r.pseudonym, r.purpose) for r in conn.execute(
            select(withdrawals.c.pseudonym, withdrawals.c.purpose))})
        if not missing:
            return 0
        written = _insert(conn, missing, "gateway", now())
        audit.append(conn, AuditAction.CONSENT_RESTORED, "gateway", "withdrawals",
                     {"restored": len(written), "missing": len(missing),
                      "patients": sorted({p for p, _ in written})})
    log.warning("%d withdrawals recorded outside the withdrawals table were missing from it; "
                "%d were written back", len(missing), len(written))
    return len(written)


def carry(conn: Connection, through: int, actor: str) -> int:
    """Before the audit chain's entries up to ``through`` are pruned: write the withdrawals
    they record again, in ``consent.carried`` entries at the chain's end, so that
    ``restore`` still knows every withdrawal however old; how many."""
    pairs = sorted(_recorded(conn, through))
    for start in range(0, len(pairs), CARRIED_BATCH):
        audit.append(conn, AuditAction.CONSENT_CARRIED, actor, "withdrawals",
                     {"withdrawals": [list(p) for p in pairs[start:start + CARRIED_BATCH]]})
    return len(pairs)


def _recorded(conn: Connection, through: int | None = None) -> set[tuple[str, str]]:
    """The (pseudonym, purpose) pairs the chain's withdrawal entries record (up to entry
    ``through``, if given); an entry not as ``record`` or ``carry`` writes it — planted by
    hand — adds nothing."""
    log_ = audit.audit_log
    query = select(log_.c.action, log_.c.subject, log_.c.details).where(log_.c.action.in_(
        [str(AuditAction.CONSENT_WITHDRAWN), str(AuditAction.CONSENT_CARRIED)]))
    if through is not None:
        query = query.where(log_.c.seq <= through)
    pairs: set[tuple[str, str]] = set()
    for row in conn.execute(query):
        try:
            details = json.loads(row.details)
            if row.action == AuditAction.CONSENT_WITHDRAWN:
                found = [(row.subject.removeprefix("patient:"), p)
                         for p in details["purposes"]]
            else:
                found = [(p, purpose) for p, purpose in details["withdrawals"]]
        except Exception:  # anything planted (too deep, not an object, …) is skipped
            continue
        pairs |= {(p, purpose) for p, purpose in found
                  if isinstance(p, str) and PSEUDONYM.fullmatch(p)
                  and isinstance(purpose, str) and (purpose == ALL or purpose in IDS)}
    return pairs


def _insert(conn: Connection, pairs: list[tuple[str, str]], actor: str, at: str
            ) -> list[tuple[str, str]]:
    """Write ``pairs``; the ones written. Another replica (or thread) may be recording the
    same pairs right now: a pair it committed first is skipped, not an error."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    written = conn.execute(
        dialect.insert(withdrawals).on_conflict_do_nothing(
            index_elements=["pseudonym", "purpose"])
        .returning(withdrawals.c.pseudonym, withdrawals.c.purpose),
        [{"pseudonym": p, "purpose": purpose, "recorded_at": at, "recorded_by": actor}
         for p, purpose in pairs])
    return [(r.pseudonym, r.purpose) for r in written]
