"""Grant authorizations: the portal's signed statement of what the committee granted a
project — datasets, fields, purpose, total ε and δ, term — which the sites and the key
service check for themselves before they compute or decrypt anything.

The gateway keeps the ledger, but it is not the budget's authority for federated data: a
gateway (or anyone holding its signing key) that invented grants, or re-asked one question
under ever new query ids, could otherwise collect fresh noisy totals and average the noise
away. With an authorization:

- a query's id is ``query_id(authorization, fingerprint of the question)``, which the
  sites and the key service recompute: one question under one authorization has one id,
  so one noise share per site and one decision at the key service, however often it is
  asked;
- the key service spends the authorization's ε itself (atomically, before it decrypts),
  so all the different questions together cannot decrypt more than the committee granted;
- no authorization, no federated answer: only the portal's key issues them;
- when the committee suspends, resumes or revokes the project, the portal signs a
  *grant state* statement (``Domain.GRANT_STATE``) which the gateway relays to the key
  service (anyone may deliver it: only the portal can sign it); the key service decrypts
  nothing under an authorization issued before a revocation of its project, nor while
  the project's latest statement says suspended.

Signed with the portal's grant key (``Domain.GRANT``); its public key is published beside
it (``grant-public-key.pem`` in the portal's state directory).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sandbox import receipts, units
from sandbox.errors import Forbidden, InputError, Unauthenticated
from sandbox.federated.spec import FederatedSpec

TERMS = ("project", "datasets", "fields", "purpose", "epsilon", "delta", "expires_at")


def issue(signer: receipts.Signer, project: str, datasets: list[str], fields: list[str],
          purpose: str, epsilon: float, delta: float, expires_at: datetime) -> dict:
    """The signed authorization of a grant (the portal's, when the agreement is signed)."""
    return signer.sign({
        "id": uuid.uuid4().hex, "project": project, "datasets": sorted(datasets),
        "fields": sorted(fields), "purpose": purpose, "epsilon": float(epsilon),
        "delta": float(delta),
        "expires_at": expires_at.astimezone(UTC).isoformat(timespec="seconds"),
        "issued_at": datetime.now(UTC).isoformat(timespec="seconds")},
        receipts.Domain.GRANT)


@dataclass(frozen=True)
class Authorization:
    id: str
    project: str
    datasets: frozenset[str]
    fields: frozenset[str]
    purpose: str
    epsilon: float
    delta: float
    expires_at: datetime
    document: dict
    issued_at: datetime | None = None

    def covers(self, spec: FederatedSpec, now: datetime | None = None) -> None:
        """Refuse ``spec`` unless this authorization grants it (dataset, fields, ε, term);
        the purpose is the authorization's own."""
        if self.expires_at <= (now or datetime.now(UTC)):
            raise Forbidden(f"authorization {self.id} expired at {self.expires_at:%Y-%m-%d}")
        if spec.dataset not in self.datasets:
            raise Forbidden(f"dataset {spec.dataset!r} is outside authorization {self.id}")
        outside = sorted(set(spec.fields_used()) - self.fields)
        if outside:
            raise Forbidden(f"fields {outside} are outside authorization {self.id}")
        if units.micro_epsilon(spec.epsilon) > units.micro_epsilon(self.epsilon):
            raise Forbidden(f"ε = {spec.epsilon:g} is more than authorization {self.id} "
                            f"grants ({self.epsilon:g})")

    def query_id(self, spec: FederatedSpec) -> str:
        return query_id(self.id, spec.fingerprint())

    def matches(self, terms: dict) -> bool:
        """Whether a grant request asks for exactly what was authorized."""
        try:
            expires = datetime.fromisoformat(str(terms["expires_at"]))
            expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            return (terms["project"] == self.project
                    and frozenset(terms["datasets"]) == self.datasets
                    and frozenset(terms["fields"]) == self.fields
                    and terms["purpose"] == self.purpose
                    and units.micro_epsilon(float(terms["epsilon"]))
                    == units.micro_epsilon(self.epsilon)
                    and units.atto_delta(float(terms.get("delta") or 0.0))
                    == units.atto_delta(self.delta)
                    and abs((expires - self.expires_at).total_seconds()) < 1)
        except (KeyError, TypeError, ValueError):
            return False


def query_id(authorization_id: str, fingerprint: str) -> str:
    """The id under which the sites and the key service know one question asked under one
    authorization."""
    return hashlib.sha256(f"{authorization_id}\n{fingerprint}".encode()).hexdigest()[:32]


def read(document: object, public_pem: bytes) -> Authorization:
    """The authorization in a document the portal's grant key signed; Unauthenticated for
    anything else."""
    if not isinstance(document, dict):
        raise Unauthenticated("a federated query needs the portal's signed authorization "
                              "of its grant")
    try:
        payload = receipts.verify(document, public_pem, receipts.Domain.GRANT)
    except InputError as exc:
        raise Unauthenticated(f"the grant's authorization is not the portal's: "
                              f"{exc.reason}") from None
    try:
        expires = datetime.fromisoformat(payload["expires_at"])
        return Authorization(
            str(payload["id"]), str(payload["project"]), frozenset(payload["datasets"]),
            frozenset(payload["fields"]), str(payload["purpose"]), float(payload["epsilon"]),
            float(payload["delta"]), _aware(expires), document,
            _aware(datetime.fromisoformat(payload["issued_at"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise Unauthenticated(f"the grant's authorization is malformed: {exc}") from None


# what each change of a grant makes it (the portal signs it, the gateway checks it)
STATE_AFTER = {"suspend": "suspended", "resume": "active", "revoke": "revoked"}
STATES = tuple(STATE_AFTER.values())


@dataclass(frozen=True)
class GrantState:
    """The portal's statement that project ``project``'s grant became ``status`` at
    ``at`` (suspended, active again, or revoked for good)."""

    project: str
    status: str
    at: datetime
    reason: str
    document: dict

    def stops(self, granted: Authorization) -> bool:
        """Whether this statement stops ``granted``: a revocation stops every authorization
        of its project issued until then; a suspension, those issued before it."""
        return granted.project == self.project and self.status != "active" and \
            (granted.issued_at is None or granted.issued_at <= self.at)


def state_statement(signer: receipts.Signer, project: str, status: str,
                    reason: str) -> dict:
    """The portal's signed statement that ``project``'s grant is now ``status``."""
    if status not in STATES:
        raise InputError(f"a grant's state is one of {', '.join(STATES)}, not {status!r}")
    return signer.sign({"project": project, "status": status, "reason": reason[:2000],
                        "at": datetime.now(UTC).isoformat(timespec="microseconds")},
                       receipts.Domain.GRANT_STATE)


def read_state(document: object, public_pem: bytes) -> GrantState:
    """The statement in a document the portal's grant key signed; Unauthenticated for a
    document it did not sign, InputError for a malformed one."""
    if not isinstance(document, dict):
        raise InputError("a grant state statement is a signed document")
    try:
        payload = receipts.verify(document, public_pem, receipts.Domain.GRANT_STATE)
    except InputError as exc:
        raise Unauthenticated(f"the statement is not the portal's: {exc.reason}") from None
    try:
        status = str(payload["status"])
        if status not in STATES:
            raise ValueError(f"unknown state {status!r}")
        return GrantState(str(payload["project"]), status,
                          _aware(datetime.fromisoformat(str(payload["at"]))),
                          str(payload.get("reason", "")), document)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the statement is malformed: {exc}") from None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def portal_key(path: Path) -> bytes:
    """The portal's public grant key, as configured; Unauthenticated when it is missing
    (nothing federated can be authorized without it)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise Unauthenticated(f"the portal's grant key is not configured ({exc})") from None
