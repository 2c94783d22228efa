"""Consent at the gateway: a patient's withdrawal, by pseudonym, for some purposes or all,
recorded once and read back as the set every view applies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.gateway.grants import now
from sandbox.gateway.store import withdrawals
from sandbox.purposes import ALL, IDS

MAX_BATCH = 100_000


class Withdrawal(BaseModel):
    """A patient's withdrawal of consent, by pseudonym, for some purposes or all."""

    model_config = ConfigDict(extra="forbid")

    pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$")
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
            at = now()
            # Another replica (or thread) may be recording the same pairs right now: a pair
            # it committed first is skipped, not an error, and not counted as recorded here.
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            written = conn.execute(
                dialect.insert(withdrawals).on_conflict_do_nothing(
                    index_elements=["pseudonym", "purpose"])
                .returning(withdrawals.c.pseudonym, withdrawals.c.purpose),
                [{"pseudonym": p, "purpose": purpose, "recorded_at": at, "recorded_by": actor}
                 for p, purpose in new])
            new = [(r.pseudonym, r.purpose) for r in written]
        for request in requests:
            audit.append(conn, AuditAction.CONSENT_WITHDRAWN, actor,
                         f"patient:{request.pseudonym}", {"purposes": request.withdrawn()})
    return new
