"""The key service: the only holder of the CKKS secret key, apart from the gateway.

It publishes the public context, and decrypts one thing — the sum of the sites' noisy
parts of a federated query, which it adds up itself — when the gateway's signed request
satisfies its policy (``policy``):

- signed by the gateway, meant for the key service and for decryption, fresh;
- within the portal's signed authorization of the grant (``authorization``: dataset,
  fields, ε, term), under the query id that authorization and the question give, and
  within the grant's state as the gateway states it (active, unexpired);
- at least ``min_sites`` (≥ 3) registered sites attest, each with its own key, that they
  computed a part for this very query, with noise of the scale its ε needs;
- the query's ε is spent from the authorization's total here, atomically, before
  anything is decrypted: the portal's grant, not the gateway's ledger, bounds what the
  key service decrypts;
- after decryption every count the answer reveals covers at least 5 patients
  (``counts``): a histogram cell below is withheld, a mean or regression below is
  refused.

One query id, one outcome. Whatever the key service decides for a query id — the values it
decrypted, or a refusal, including a refusal made after decrypting ("fewer than 5
patients") — is stored with the query's fingerprint before it is answered, and the same
query id gets that same outcome again, without a new decryption. Nothing the gateway sends
is decrypted as it is: there is no noise or total of the gateway's making to trust.

Every decryption, refusal and repeat is an entry in the key service's own audit chain.
Operators sign in with their own token (``operator.token``), not the gateway's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from sandbox import anchors, audit, receipts, units
from sandbox.audit import AuditAction
from sandbox.db import make_engine
from sandbox.errors import Conflict, Forbidden, InputError, SandboxError, Unauthenticated
from sandbox.federated import (
    authorization,
    ckks,
    counts,
    keystore,
    messages,
    noise,
    policy,
    standing,
)
from sandbox.federated.plan import MIN_SITES
from sandbox.federated.spec import FederatedSpec
from sandbox.secretfile import read_or_create
from sandbox.serving import TRUSTED_PROXIES_HELP, TrustedProxies

log = logging.getLogger("sandbox.keys")
AUDIENCE = "keys"

class KeySettings(BaseSettings, anchors.AnchorSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_KEYS_", extra="ignore")

    state_dir: Path = Field(Path("var/keyservice"), description="secret context and operator "
                            "token (owner-only files)")
    database_url: str = Field("sqlite:///var/keyservice/keys.db",
                              description="SQLite or PostgreSQL URL: sites, decryptions, audit")
    gateway_key_file: Path = Field(Path("var/gateway/public-key.pem"),
                                   description="the gateway's public signing key (PEM)")
    portal_key_file: Path = Field(Path("var/portal/grant-public-key.pem"),
                                  description="the portal's public grant key (PEM): every "
                                  "federated query carries its signed authorization")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8720, description="port to listen on")
    trusted_proxies: TrustedProxies = Field(default_factory=list,
                                            description=TRUSTED_PROXIES_HELP)
    min_sites: int = Field(MIN_SITES, ge=MIN_SITES, description="sites that must contribute")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="largest request accepted")

    @property
    def secret_file(self) -> Path:
        return self.state_dir / "ckks-secret.context"

    @property
    def operator_token_file(self) -> Path:
        return self.state_dir / "operator.token"


class DecryptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: dict = Field(description="the gateway's signed request (a service message)")
    parts: list[str] = Field(min_length=1, max_length=64, description="base64 ciphertexts "
                             "of the sites' noisy parts, in the order of the request's "
                             "attestations")


class KeyService:
    def __init__(self, settings: KeySettings, require_noise: bool = True) -> None:
        """``require_noise=False`` (tests only; no setting reaches it) accepts parts from
        sites that add no noise, to compare answers with the pooled computation."""
        self.settings = settings
        self.require_noise = require_noise
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.db: Engine = make_engine(settings.database_url)
        keystore.create_tables(self.db)
        audit.create_tables(self.db)
        self._secret = ckks.load(read_or_create(
            settings.secret_file, lambda: ckks.new_secret_context().serialize(
                save_public_key=True, save_secret_key=True, save_galois_keys=False,
                save_relin_keys=False)))
        if not ckks.holds_secret(self._secret):
            raise InputError(f"{settings.secret_file} holds no secret key")
        self.public_context = ckks.public_bytes(self._secret)
        self._public = ckks.load(self.public_context)
        self._operator = _hash(read_or_create(
            settings.operator_token_file,
            lambda: secrets.token_urlsafe(32).encode()).decode().strip())
        self.anchors = anchors.Anchors("keys", self.db, receipts.Signer(
            settings.state_dir / "audit-signing-key.pem"), settings.state_dir, settings)

    def _gateway_key(self) -> bytes:
        try:
            return self.settings.gateway_key_file.read_bytes()
        except OSError as exc:
            raise Forbidden(f"the gateway's public key is not configured ({exc})") from None

    def check_operator(self, token: str | None) -> str:
        if not token or not hmac.compare_digest(_hash(token), self._operator):
            raise Unauthenticated("a valid operator token is required")
        return "operator"

    # -- sites -----------------------------------------------------------------------
    def register_site(self, name: str, public_pem: bytes, actor: str) -> dict:
        """Trust ``public_pem`` for attestations of site ``name`` (replacing its old key)."""
        receipts.public_key(public_pem)
        pem = public_pem.decode()
        with self.db.begin() as conn:
            conn.execute(keystore.sites.delete().where(keystore.sites.c.name == name))
            conn.execute(insert(keystore.sites).values(name=name, public_pem=pem,
                                                       registered_at=keystore.now()))
            audit.append(conn, AuditAction.KEYS_SITE_REGISTERED, actor, f"site:{name}",
                         {"key_id": receipts.key_id(public_pem)})
        return {"site": name, "key_id": receipts.key_id(public_pem)}

    def site_keys(self) -> dict[str, bytes]:
        with self.db.connect() as conn:
            return {r.name: r.public_pem.encode() for r in conn.execute(select(keystore.sites))}

    # -- decryption --------------------------------------------------------------------
    def decrypt(self, body: DecryptIn) -> dict:
        """The outcome of the gateway's request: ``released`` values or ``refused`` with a
        reason — stored and final for the query id. A request not signed by the gateway,
        or not describing a query, is refused (4xx) without deciding anything."""
        try:
            request = messages.open_signed(body.request, self._gateway_key(), AUDIENCE,
                                           "decrypt")
        except SandboxError as exc:
            self._audit(AuditAction.KEYS_REFUSED, "unauthenticated",
                        _query_of(body.request), {"reason": exc.reason})
            raise
        query_id = str(request.get("query_id") or "")
        try:
            if not 1 <= len(query_id) <= 64:
                raise InputError("the request names no query")
            spec = FederatedSpec(**request["spec"])
        except (SandboxError, KeyError, TypeError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, SandboxError) else \
                f"the request does not describe a query: {exc}"
            self._audit(AuditAction.KEYS_REFUSED, "gateway", query_id or "?",
                        {"reason": reason})
            raise InputError(reason) from None
        stored = self._outcome(query_id, spec)
        if stored is not None:
            self._audit(AuditAction.KEYS_REPEATED, "gateway", query_id,
                        {"outcome": stored["outcome"]})
            return {**stored, "repeated": True}
        try:  # the portal's word on the grant's standing, not the gateway's: not final
            self._standing(request)
        except SandboxError as exc:
            self._audit(AuditAction.KEYS_REFUSED, "gateway", query_id, {"reason": exc.reason})
            raise
        grant = request.get("grant") if isinstance(request.get("grant"), dict) else {}
        try:
            outcome, decrypted = self._decide(request, spec, body), True
        except SandboxError as exc:
            outcome, decrypted = {"outcome": "refused", "reason": exc.reason}, False
            if getattr(exc, "after_decryption", False):
                decrypted = True
        return self._remember(query_id, spec, grant, outcome, decrypted)

    def _decide(self, request: dict, spec: FederatedSpec, body: DecryptIn) -> dict:
        """Check the policy, add the attested parts, decrypt the total, withhold or refuse
        what covers fewer than 5 patients."""
        layout = policy.Layout.of(request)
        grant = request.get("grant")
        if not isinstance(grant, dict):
            raise InputError("the request does not describe the grant")
        query_id = str(request["query_id"])
        granted = authorization.read(request.get("authorization"),
                                     authorization.portal_key(self.settings.portal_key_file))
        granted.covers(spec)
        if query_id != granted.query_id(spec):
            raise Unauthenticated("the query id is not the one its authorization and "
                                  "question give")
        policy.within_grant(grant, spec)
        policy.check_layout(spec, layout)
        parts = [ckks.unb64(p) for p in body.parts]
        sites = policy.attested(request.get("attestations") or [], parts, query_id, spec,
                                layout, self.site_keys(), self.settings.min_sites,
                                self.require_noise)
        keystore.spend(self.db, granted, spec.epsilon, query_id)
        total = ckks.add(self._public, parts)  # the key service adds the parts itself
        values: list[float | None] = list(ckks.decrypt(self._secret, total, layout.size))
        # a histogram's cell is withheld below the minimum; a mean or regression is
        # refused unless each count is above it by the noise's 99.9% margin
        scale = layout.required_scale(spec) if self.require_noise else 0.0
        needed = {check: layout.min_count + (0.0 if spec.kind == "histogram" else
                                             noise.check_margin(check, scale, len(parts)))
                  for check in layout.count_checks}
        short = [check for check in layout.count_checks
                 if counts.value(check, values) < needed[check]]
        if short and spec.kind != "histogram":
            raise _RefusedAfterDecryption("the answer would cover fewer than 5 patients; "
                                          "nothing was released")
        small = sorted(slot for check in short for slot, _ in check)  # a histogram's cells
        for i in small:
            values[i] = None
        return {"outcome": "released", "values": values, "withheld": small, "sites": sites}

    def _standing(self, request: dict) -> None:
        """Refuse (undecided: a suspended grant may resume) a request whose authorization
        the portal has since revoked or suspended; an unreadable one is ``_decide``'s."""
        try:
            granted = authorization.read(
                request.get("authorization"),
                authorization.portal_key(self.settings.portal_key_file))
        except SandboxError:
            return
        with self.db.connect() as conn:
            standing.check(conn, granted)

    def grant_state(self, document: object) -> dict:
        """Keep the portal's signed statement that a project's grant was suspended,
        resumed or revoked (whoever delivers it: only the portal can sign one)."""
        statement = authorization.read_state(
            document, authorization.portal_key(self.settings.portal_key_file))
        try:
            with self.db.begin() as conn:
                changed = standing.record(conn, statement, "portal")
        except IntegrityError:  # the project's first statement, delivered twice at once
            with self.db.begin() as conn:
                changed = standing.record(conn, statement, "portal")
        return {"project": statement.project, "status": statement.status,
                "recorded": changed}

    def _remember(self, query_id: str, spec: FederatedSpec, grant: dict, outcome: dict,
                  decrypted: bool) -> dict:
        """Store the outcome and its audit entry together, then answer with it; a
        concurrent request for the same query that stored first wins, and its outcome is
        the answer."""
        action = AuditAction.KEYS_DECRYPTED if outcome["outcome"] == "released" \
            else AuditAction.KEYS_REFUSED
        details = {"grant": grant.get("id"), "project": grant.get("project"),
                   "dataset": spec.dataset, "kind": spec.kind, "epsilon": spec.epsilon,
                   "decrypted": decrypted, "outcome": outcome["outcome"],
                   **({"reason": outcome["reason"]} if "reason" in outcome else
                      {"sites": outcome["sites"], "withheld": len(outcome["withheld"])})}
        try:
            with self.db.begin() as conn:
                conn.execute(insert(keystore.queries).values(
                    query_id=query_id, fingerprint=spec.fingerprint(),
                    grant_id=str(grant.get("id")),
                    epsilon_micro=units.micro_epsilon(spec.epsilon),
                    decrypted=decrypted, outcome=json.dumps(outcome), at=keystore.now()))
                audit.append(conn, action, "gateway", f"query:{query_id}", details)
        except IntegrityError:
            stored = self._outcome(query_id, spec)
            if stored is None:
                raise
            return {**stored, "repeated": True}
        return {"query_id": query_id, **outcome, "repeated": False}

    def _outcome(self, query_id: str, spec: FederatedSpec) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(select(keystore.queries).where(
                keystore.queries.c.query_id == query_id)).first()
        if row is None:
            return None
        if row.fingerprint != spec.fingerprint():
            raise Conflict(f"query {query_id} was decided before for another question")
        return {"query_id": query_id, **json.loads(row.outcome)}

    def _audit(self, action: AuditAction, actor: str, query: str, details: dict) -> None:
        with self.db.begin() as conn:
            audit.append(conn, action, actor, f"query:{query}", details)

    def verify_audit(self) -> dict:
        return anchors.result(self.anchors.verify())

    def audit_entries(self, after_seq: int, limit: int) -> list[dict]:
        with self.db.connect() as conn:
            rows = conn.execute(select(audit.audit_log).where(
                audit.audit_log.c.seq > after_seq).order_by(audit.audit_log.c.seq)
                .limit(limit)).mappings()
            return [dict(r) for r in rows]


class _RefusedAfterDecryption(SandboxError):
    """A refusal made from decrypted values: the query's outcome all the same."""

    after_decryption = True


def _query_of(message: object) -> str:
    payload = message.get("payload") if isinstance(message, dict) else None
    query = payload.get("query_id") if isinstance(payload, dict) else None
    return str(query)[:64] if query else "?"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
