"""The key service: the only holder of the CKKS secret key, apart from the gateway.

It publishes the public context, and decrypts one thing — the noisy total of a federated
query — when the gateway's signed request satisfies its policy:

- signed by the gateway, meant for the key service, fresh, and never decrypted before;
- within the project's grant as the gateway states it (active, unexpired, the dataset and
  fields granted, ε not overspent);
- at least ``min_sites`` (≥ 3) registered sites attest, each with its own key, that they
  computed a part for this very query; the total is recomputed here from those parts and
  the noise, and must equal the gateway's;
- after decryption every count slot covers at least 5 patients: a histogram cell below is
  withheld, a mean or regression below is refused.

Every decryption and every refusal is an entry in the key service's own audit chain.
Operators sign in with their own token (``operator.token``), not the gateway's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fastapi import Depends, FastAPI, Header
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Column, Engine, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from sandbox import anchors, audit, httpapi, receipts
from sandbox.audit import AuditAction
from sandbox.db import make_engine
from sandbox.errors import (
    Conflict,
    Forbidden,
    InputError,
    PolicyRefusal,
    SandboxError,
    Unauthenticated,
)
from sandbox.federated import ckks, messages
from sandbox.federated.plan import FederatedSpec
from sandbox.secretfile import read_or_create

log = logging.getLogger("sandbox.keys")
AUDIENCE = "keys"
MIN_SITES = 3

metadata = MetaData()
sites = Table(
    "sites", metadata,
    Column("name", String(64), primary_key=True),
    Column("public_pem", Text, nullable=False),
    Column("registered_at", String(40), nullable=False),
)
decryptions = Table(
    "decryptions", metadata,
    Column("query_id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False),
    Column("sites", Text, nullable=False),
    Column("at", String(40), nullable=False),
)


class KeySettings(BaseSettings, anchors.AnchorSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_KEYS_", extra="ignore")

    state_dir: Path = Field(Path("var/keyservice"), description="secret context and operator "
                            "token (owner-only files)")
    database_url: str = Field("sqlite:///var/keyservice/keys.db",
                              description="SQLite or PostgreSQL URL: sites, decryptions, audit")
    gateway_key_file: Path = Field(Path("var/gateway/public-key.pem"),
                                   description="the gateway's public signing key (PEM)")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8720, description="port to listen on")
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

    request: dict = Field(description="the gateway's signed request (a receipt)")
    parts: list[str] = Field(min_length=1, max_length=64, description="base64 ciphertexts, "
                             "in the order of the request's attestations")
    noise: str = Field(description="base64 ciphertext of the noise")
    combined: str = Field(description="base64 ciphertext: the parts plus the noise")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyService:
    def __init__(self, settings: KeySettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.db: Engine = make_engine(settings.database_url)
        metadata.create_all(self.db)
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
            conn.execute(sites.delete().where(sites.c.name == name))
            conn.execute(insert(sites).values(name=name, public_pem=pem,
                                              registered_at=_now()))
            audit.append(conn, AuditAction.KEYS_SITE_REGISTERED, actor, f"site:{name}",
                         {"key_id": receipts.key_id(public_pem)})
        return {"site": name, "key_id": receipts.key_id(public_pem)}

    def site_keys(self) -> dict[str, bytes]:
        with self.db.connect() as conn:
            return {r.name: r.public_pem.encode() for r in conn.execute(select(sites))}

    # -- decryption --------------------------------------------------------------------
    def decrypt(self, body: DecryptIn) -> dict:
        request: dict = {}
        try:
            request = messages.open_signed(body.request, self._gateway_key(), AUDIENCE)
            return self._decrypt(request, body)
        except SandboxError as exc:
            payload = body.request.get("payload") if isinstance(body.request, dict) else None
            query = payload.get("query_id") if isinstance(payload, dict) else None
            with self.db.begin() as conn:
                audit.append(conn, AuditAction.KEYS_REFUSED,
                             "gateway" if request else "unauthenticated",
                             f"query:{query or '?'}", {"reason": exc.reason})
            raise

    def _decrypt(self, request: dict, body: DecryptIn) -> dict:
        query_id = str(request.get("query_id") or "")
        try:
            spec = FederatedSpec(**request["spec"])
            grant, layout = request["grant"], request["layout"]
            size, count_slots = int(layout["size"]), [int(i) for i in layout["count_slots"]]
            min_count = float(layout["min_count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the request does not describe a query: {exc}") from None
        if not query_id:
            raise InputError("the request names no query")
        _within_grant(grant, spec)
        _check_layout(spec, size, count_slots)
        parts = [ckks.unb64(p) for p in body.parts]
        contributed = self._attested(request.get("attestations") or [], parts, query_id,
                                     spec, size, min_count)
        noise, combined = ckks.unb64(body.noise), ckks.unb64(body.combined)
        if messages.digest(noise) != request.get("noise_sha256") or \
                messages.digest(combined) != request.get("combined_sha256"):
            raise Unauthenticated("the ciphertexts are not the ones the gateway signed")
        total = ckks.add(self._public, [*parts, noise])
        if total != combined:
            raise PolicyRefusal("the total is not the sum of the attested parts and the "
                                "noise; nothing was decrypted")
        if self._decrypted(query_id):
            raise Conflict(f"query {query_id} was decrypted before")
        values: list[float | None] = list(ckks.decrypt(self._secret, combined, size))
        small = [i for i in count_slots if values[i] is not None and values[i] < min_count]
        if small and spec.kind != "histogram":
            raise PolicyRefusal("the answer would cover fewer than 5 patients; nothing was "
                                "released")
        for i in small:
            values[i] = None
        # The values leave only once this query's decryption and its audit entry are
        # recorded, together; a concurrent request for the same query loses here.
        try:
            with self.db.begin() as conn:
                conn.execute(insert(decryptions).values(
                    query_id=query_id, grant_id=str(grant.get("id")),
                    sites=json.dumps(contributed), at=_now()))
                audit.append(conn, AuditAction.KEYS_DECRYPTED, "gateway", f"query:{query_id}",
                             {"grant": grant.get("id"), "project": grant.get("project"),
                              "sites": contributed, "dataset": spec.dataset,
                              "kind": spec.kind, "slots": size, "withheld": len(small),
                              "epsilon": spec.epsilon})
        except IntegrityError:
            raise Conflict(f"query {query_id} was decrypted before") from None
        return {"query_id": query_id, "values": values, "withheld": small,
                "sites": contributed}

    def _decrypted(self, query_id: str) -> bool:
        with self.db.connect() as conn:
            return conn.execute(select(decryptions.c.query_id).where(
                decryptions.c.query_id == query_id)).first() is not None

    def _attested(self, attestations: list, parts: list[bytes], query_id: str,
                  spec: FederatedSpec, size: int, min_count: float) -> list[str]:
        """The sites whose attestations hold: registered, signed by the site, for this
        query, this ciphertext, this layout, and no laxer a minimum count than theirs."""
        if len(attestations) != len(parts):
            raise InputError("one attestation per part is needed")
        keys, seen = self.site_keys(), []
        for attestation, part in zip(attestations, parts, strict=True):
            payload = attestation.get("payload") if isinstance(attestation, dict) else None
            site = payload.get("site") if isinstance(payload, dict) else None
            if site not in keys:
                raise Forbidden(f"site {site!r} is not registered with the key service")
            try:
                receipts.verify(attestation, keys[site], receipts.Domain.ATTESTATION)
            except InputError as exc:
                raise Unauthenticated(f"site {site}'s attestation: {exc.reason}") from None
            if payload.get("query_id") != query_id or \
                    payload.get("fingerprint") != spec.fingerprint() or \
                    payload.get("sha256") != messages.digest(part) or \
                    payload.get("size") != size:
                raise Unauthenticated(f"site {site}'s attestation is for another query or "
                                      "another ciphertext")
            if not isinstance(payload.get("min_count"), int | float) or \
                    min_count < payload["min_count"]:
                raise PolicyRefusal(f"the request's minimum count is below site {site}'s")
            if site in seen:
                raise PolicyRefusal(f"site {site} contributed twice")
            seen.append(site)
        if len(seen) < self.settings.min_sites:
            raise PolicyRefusal(f"{len(seen)} sites contributed; the policy needs at least "
                                f"{self.settings.min_sites}")
        return seen

    def verify_audit(self) -> dict:
        return anchors.result(self.anchors.verify())

    def audit_entries(self, after_seq: int, limit: int) -> list[dict]:
        with self.db.connect() as conn:
            rows = conn.execute(select(audit.audit_log).where(
                audit.audit_log.c.seq > after_seq).order_by(audit.audit_log.c.seq)
                .limit(limit)).mappings()
            return [dict(r) for r in rows]


def _check_layout(spec: FederatedSpec, size: int, count_slots: list[int]) -> None:
    """The count slots follow from the kind of query, whatever the request says."""
    expected = list(range(len(spec.bins) - 1)) if spec.kind == "histogram" else [0]
    if count_slots != expected or (spec.kind == "histogram" and size != len(expected)) \
            or (spec.kind == "mean" and size != 3):
        raise PolicyRefusal("the request's layout does not fit its query")


def _within_grant(grant: dict, spec: FederatedSpec) -> None:
    try:
        expired = datetime.fromisoformat(grant["expires_at"]) <= datetime.now(UTC)
        over = float(grant["epsilon_spent"]) > float(grant["epsilon_total"]) + 1e-9
        if grant["status"] != "active" or expired:
            raise Forbidden(f"grant {grant['id']} is {grant['status']}"
                            f"{' and expired' if expired else ''}")
        if spec.dataset not in grant["datasets"]:
            raise Forbidden(f"dataset {spec.dataset!r} is outside grant {grant['id']}")
        outside = sorted(set(spec.fields_used()) - set(grant["fields"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the request does not describe the grant: {exc}") from None
    if outside:
        raise Forbidden(f"fields {outside} are outside grant {grant['id']}")
    if over:
        raise Forbidden(f"grant {grant['id']} has spent more than its ε")


def create_app(settings: KeySettings | None = None) -> FastAPI:
    service = KeyService(settings or KeySettings())
    app = FastAPI(title="Sandbox key service", version="1",
                  description="Holds the CKKS secret key; decrypts only noisy federated "
                              "totals that satisfy its policy.")
    app.state.service = service
    httpapi.install(app, log, lambda _path: service.settings.max_body_bytes)

    def operator(authorization: str | None = Header(None)) -> str:
        token = authorization[7:].strip() if authorization and \
            authorization.lower().startswith("bearer ") else None
        return service.check_operator(token)

    anchors.install_peer(app, service.anchors, AUDIENCE, service._gateway_key, lambda: {
        f"site:{name}": pem for name, pem in service.site_keys().items()}, operator)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "sites": sorted(service.site_keys())}

    @app.get("/v1/parameters")
    def parameters() -> dict:
        """The CKKS parameters, their security level and the approximation error bound."""
        return ckks.PARAMETERS

    @app.get("/v1/context")
    def context() -> Response:
        """The public context (public key only): what sites and the gateway encrypt with."""
        return Response(service.public_context, media_type="application/octet-stream")

    @app.post("/v1/decrypt")
    def decrypt(body: DecryptIn) -> dict:
        return service.decrypt(body)

    @app.get("/v1/admin/audit/verify")
    def verify(_actor: str = Depends(operator)) -> dict:
        return service.verify_audit()

    @app.get("/v1/admin/audit")
    def entries(_actor: str = Depends(operator), after_seq: int = 0,
                limit: int = 1000) -> dict:
        return {"entries": service.audit_entries(after_seq, min(max(limit, 1), 5000))}

    return app
