"""Consent at the gateway: a patient's withdrawal, by pseudonym, for some purposes or all,
recorded once and read back as the set every view applies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine, insert, select

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.gateway.grants import now
from sandbox.gateway.store import withdrawals
from sandbox.purposes import ALL, IDS


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


def record(db: Engine, actor: str, request: Withdrawal) -> list[str]:
    """Record the withdrawal (audited); the purposes not withdrawn before."""
    purposes = request.withdrawn()
    with db.begin() as conn:
        existing = {r.purpose for r in conn.execute(
            select(withdrawals.c.purpose).where(withdrawals.c.pseudonym == request.pseudonym))}
        new = [p for p in purposes if p not in existing]
        for purpose in new:
            conn.execute(insert(withdrawals).values(
                pseudonym=request.pseudonym, purpose=purpose, recorded_at=now(),
                recorded_by=actor))
        audit.append(conn, AuditAction.CONSENT_WITHDRAWN, actor,
                     f"patient:{request.pseudonym}", {"purposes": purposes})
    return new


def withdrawn(db: Engine) -> dict[str, set[str]]:
    """Every recorded withdrawal: pseudonym → purposes ("*" for all)."""
    out: dict[str, set[str]] = {}
    with db.connect() as conn:
        for row in conn.execute(select(withdrawals.c.pseudonym, withdrawals.c.purpose)):
            out.setdefault(row.pseudonym, set()).add(row.purpose)
    return out
