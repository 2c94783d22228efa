"""Consent at the gateway: a patient's withdrawal, by pseudonym, for some purposes or all,
recorded once and read back as the set every view applies. Each is a row and an entry of
the audit chain; the chain — hash-linked and witnessed outside the database — is what
``restore`` writes missing rows back from."""

from __future__ import annotations

import json
import logging
import re

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


def restore(db: Engine) -> int:
    """Write back every withdrawal the audit chain records that the withdrawals table lacks
    (rows someone deleted to put a patient back into the answers), audited; how many. The
    gateway does this as it starts, before it answers anything."""
    with db.begin() as conn:
        missing = sorted(_recorded(conn) - {(r.pseudonym, r.purpose) for r in conn.execute(
            select(withdrawals.c.pseudonym, withdrawals.c.purpose))})
        if not missing:
            return 0
        _insert(conn, missing, "gateway", now())
        audit.append(conn, AuditAction.CONSENT_RESTORED, "gateway", "withdrawals",
                     {"restored": len(missing), "patients": sorted({p for p, _ in missing})})
    log.warning("%d withdrawals recorded in the audit chain were missing from the "
                "withdrawals table and were written back", len(missing))
    return len(missing)


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
