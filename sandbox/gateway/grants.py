"""Grants: the scope and budget the portal gives a project, and their lifecycle — one table
of states and transitions, and the check that a grant may be used right now (a grant not
usable is refused with its reason, 403). The grant table itself is read and written only
here; its ε and δ are spent only by the ledger (``sandbox.gateway.ledger``)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update

from sandbox import audit, units
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, NotFound, PolicyRefusal, Unauthenticated
from sandbox.gateway.store import grant_authorizations, grant_networks, grants
from sandbox.purposes import IDS as PURPOSE_IDS

# Every request of a project asks this: built once.
_FOR_TOKEN = (select(grants, grant_networks.c.networks)
              .outerjoin(grant_networks, grant_networks.c.grant_id == grants.c.id)
              .where(grants.c.token_hash == bindparam("h")))


class GrantState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


# action → {state it may leave: state it enters}, with the audit event it writes.
TRANSITIONS: dict[str, tuple[dict[GrantState, GrantState], AuditAction]] = {
    "suspend": ({GrantState.ACTIVE: GrantState.SUSPENDED}, AuditAction.GRANT_SUSPENDED),
    "resume": ({GrantState.SUSPENDED: GrantState.ACTIVE}, AuditAction.GRANT_RESUMED),
    "revoke": ({GrantState.ACTIVE: GrantState.REVOKED,
                GrantState.SUSPENDED: GrantState.REVOKED}, AuditAction.GRANT_REVOKED),
}


def next_state(action: str, current: str) -> tuple[GrantState, AuditAction]:
    """The state ``action`` leads to from ``current``; raises if not allowed."""
    moves, event = TRANSITIONS[action]
    try:
        return moves[GrantState(current)], event
    except KeyError:
        raise PolicyRefusal(f"cannot {action} a grant that is {current}") from None


@dataclass(frozen=True)
class Grant:
    """A project's grant as stored (its token only as a hash, never here)."""

    id: str
    project: str
    datasets: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    epsilon_total: float
    delta_total: float
    epsilon_spent: float
    delta_spent: float
    expires_at: str
    status: str
    status_reason: str
    created_at: str
    rho_spent: float = 0.0  # a zCDP grant's ρ, and the δ its ρ is converted at (ADR 0017)
    delta_pooled: float = 0.0

    @classmethod
    def from_row(cls, row: Any) -> Grant:
        values = {k: row[k] for k in cls.__dataclass_fields__ if k not in _IN_UNITS}
        return cls(**values | {k: of(row[column]) for k, (column, of) in _IN_UNITS.items()}
                   | {"datasets": tuple(json.loads(row["datasets"])),
                      "fields": tuple(json.loads(row["fields"]))})

    def as_dict(self) -> dict:
        """The grant as the API shows it (and as the key service is told it)."""
        return asdict(self) | {"datasets": list(self.datasets), "fields": list(self.fields)}

    def check_usable(self, now: datetime | None = None) -> None:
        """Raise Forbidden with the reason when the grant cannot be used for queries."""
        now = now or datetime.now(UTC)
        if self.status in (GrantState.SUSPENDED, GrantState.REVOKED):
            raise Forbidden(f"grant {self.id} is {self.status}: {self.status_reason or '—'}")
        if datetime.fromisoformat(self.expires_at) <= now:
            raise Forbidden(f"grant {self.id} expired on {self.expires_at}")

    def check_dataset(self, dataset: str) -> None:
        """Usable, and covering ``dataset``."""
        self.check_usable()
        if dataset not in self.datasets:
            raise Forbidden(f"dataset {dataset!r} is outside this project's grant; "
                            f"granted: {', '.join(self.datasets)}")

    def budget(self) -> dict:
        return {"grant": self.id, "project": self.project, "status": self.status,
                "purpose": self.purpose, "expires_at": self.expires_at,
                "epsilon": _budget(self.epsilon_total, self.epsilon_spent, units.MICRO),
                "delta": _budget(self.delta_total, self.delta_spent, units.ATTO),
                "accounting": self.accounting()}

    def accounting(self) -> dict:
        """How the grant composes its releases (docs/privacy-accounting.md): pure ε added
        up, or — once its first release was Gaussian — zCDP, whose ρ adds up and is
        converted to the ε spent at one fixed δ."""
        if not self.delta_pooled:
            return {"composition": "pure", "summary": {
                "zh": "每次发布的 ε 与 δ 直接相加", "en": "each release's ε and δ add up"}}
        return {"composition": "zcdp", "rho_spent": self.rho_spent,
                "delta": self.delta_pooled, "summary": {
                    "zh": f"零集中差分隐私：各次发布的 ρ 相加，按 δ = {self.delta_pooled:g} "
                          "换算为已用 ε",
                    "en": f"zero-concentrated DP: the releases' ρ add up, converted to the "
                          f"ε spent at δ = {self.delta_pooled:g}"}}


# The grant's budget as the API shows it (floats) ← the table's exact units.
_IN_UNITS = {"epsilon_total": ("epsilon_total_micro", units.epsilon_of),
             "delta_total": ("delta_total_atto", units.delta_of),
             "epsilon_spent": ("epsilon_spent_micro", units.epsilon_of),
             "delta_spent": ("delta_spent_atto", units.delta_of),
             "rho_spent": ("rho_spent_femto", units.rho_of),
             "delta_pooled": ("delta_pooled_atto", units.delta_of)}


class GrantRequest(BaseModel):
    """What the portal asks for when a project is approved."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")
    datasets: list[str] = Field(min_length=1)
    fields: list[str] = Field(min_length=1)
    purpose: str
    epsilon: float = Field(gt=0, description="total ε; at most the gateway's max_epsilon")
    delta: float = Field(default=0.0, ge=0, lt=1e-2)
    expires_at: datetime
    authorization: dict | None = Field(None, description="the portal's signed "
                                       "authorization of these terms (required for "
                                       "federated datasets)")

    _on_grid_epsilon = field_validator("epsilon")(units.on_grid_epsilon)
    _on_grid_delta = field_validator("delta")(units.on_grid_delta)

    @field_validator("purpose")
    @classmethod
    def _purpose(cls, purpose: str) -> str:
        if purpose not in PURPOSE_IDS:
            raise ValueError(f"unknown purpose; one of {', '.join(PURPOSE_IDS)}")
        return purpose

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, when: datetime) -> datetime:
        # In UTC here, so that a time whose offset carries it past the last (or before the
        # first) representable instant is refused with a reason, not met later.
        try:
            return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        except OverflowError:
            raise ValueError("not a time that can be expressed in UTC") from None


class Grants:
    """The grant table: create, read (by id or by token), bind to networks, change state."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def get(self, grant_id: str) -> Grant:
        _check_id(grant_id)
        with self.db.connect() as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().first()
        if row is None:
            raise NotFound(f"no grant {grant_id}")
        return Grant.from_row(row)

    def for_token(self, token: str | None, client: str | None) -> Grant:
        """The grant a project token belongs to (whatever its state), if the request comes
        from a network the grant is bound to (when it is bound to any)."""
        if not token:
            raise Unauthenticated("a project token is required (Authorization: Bearer …)")
        with self.db.connect() as conn:  # one round trip: the grant and its networks
            row = conn.execute(_FOR_TOKEN, {"h": hash_token(token)}).mappings().first()
        if row is None:
            raise Unauthenticated("unknown project token")
        if row["networks"] is not None and not _within(client, json.loads(row["networks"])):
            with self.db.begin() as conn:
                audit.append(conn, AuditAction.TOKEN_MISPLACED, f"grant:{row['id']}",
                             f"grant:{row['id']}", {"client": client})
            raise Forbidden("this project's token works only from the project's sandbox")
        return Grant.from_row(row)

    def create(self, actor: str, request: GrantRequest,
               authorized: tuple[str, dict] | None) -> tuple[Grant, str]:
        """A new active grant and its token (shown once); ``authorized``: the portal's
        signed authorization (id, document), kept with it."""
        token = secrets.token_urlsafe(32)
        row = {
            "id": uuid.uuid4().hex, "project": request.project,
            "datasets": json.dumps(request.datasets), "fields": json.dumps(request.fields),
            "purpose": request.purpose,
            "epsilon_total_micro": units.micro_epsilon(request.epsilon),
            "delta_total_atto": units.atto_delta(request.delta),
            "epsilon_spent_micro": 0, "delta_spent_atto": 0, "rho_spent_femto": 0,
            "delta_pooled_atto": 0,
            "expires_at": request.expires_at.astimezone(UTC).isoformat(),
            "status": GrantState.ACTIVE, "status_reason": "", "token_hash": hash_token(token),
            "created_at": now(),
        }
        with self.db.begin() as conn:
            conn.execute(insert(grants).values(**row))
            if authorized is not None:
                conn.execute(insert(grant_authorizations).values(
                    grant_id=row["id"], authorization_id=authorized[0],
                    document=json.dumps(authorized[1], ensure_ascii=False)))
            grant = Grant.from_row(row)
            audit.append(conn, AuditAction.GRANT_CREATED, actor, f"grant:{row['id']}",
                         {**grant.as_dict(),
                          "authorization": authorized[0] if authorized else None})
        return grant, token

    def authorization_of(self, grant_id: str) -> dict | None:
        """The portal's signed authorization of a grant, if it came with one."""
        with self.db.connect() as conn:
            document = conn.execute(select(grant_authorizations.c.document).where(
                grant_authorizations.c.grant_id == grant_id)).scalar()
        return json.loads(document) if document else None

    def bind(self, actor: str, grant_id: str, networks: list[str]) -> dict:
        """Accept the grant's token only from ``networks`` (replacing earlier ones)."""
        _check_id(grant_id)
        try:
            cidrs = sorted({str(ipaddress.ip_network(n, strict=False)) for n in networks})
        except ValueError as exc:
            raise InputError(f"not a network: {exc}") from None
        if not cidrs:
            raise InputError("give at least one network")
        with self.db.begin() as conn:
            if conn.execute(select(grants.c.id).where(grants.c.id == grant_id)).first() is None:
                raise NotFound(f"no grant {grant_id}")
            conn.execute(delete(grant_networks).where(grant_networks.c.grant_id == grant_id))
            conn.execute(insert(grant_networks).values(grant_id=grant_id,
                                                       networks=json.dumps(cidrs),
                                                       bound_at=now()))
            audit.append(conn, AuditAction.GRANT_BOUND, actor, f"grant:{grant_id}",
                         {"networks": cidrs})
        return {"grant": grant_id, "networks": cidrs}

    def change(self, actor: str, grant_id: str, action: str, reason: str,
               alongside: Callable[[Connection, Grant], Any] | None = None) -> Any:
        """Suspend, resume or revoke a grant (``next_state``); ``alongside``, when given,
        runs in the same transaction with the grant as it was, and its result is returned."""
        _check_id(grant_id)
        with self.db.begin() as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id).with_for_update()
                               ).mappings().first()
            if row is None:
                raise NotFound(f"no grant {grant_id}")
            state, event = next_state(action, row["status"])
            conn.execute(update(grants).where(grants.c.id == grant_id)
                         .values(status=state, status_reason=reason))
            audit.append(conn, event, actor, f"grant:{grant_id}",
                         {"from": row["status"], "to": str(state), "reason": reason})
            return alongside(conn, Grant.from_row(row)) if alongside else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_id(grant_id: str) -> None:
    """No grant has a NUL in its id (PostgreSQL's driver would fail on it, not find none)."""
    if "\x00" in grant_id:
        raise NotFound(f"no grant {grant_id!r}")


def _budget(total: float, spent: float, per: int) -> dict:
    """Total, spent and remaining, the remainder taken in exact units."""
    left = max(0, round(total * per) - round(spent * per))
    return {"total": total, "spent": spent, "remaining": left / per}


def _within(client: str | None, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n) for n in networks)
