"""A site node: one hospital's partition of a federated dataset, served as encrypted,
noisy aggregates only.

The site answers the gateway alone (requests signed with the gateway's key, meant for this
site, fresh). For each query it computes its local aggregate vector over its consented rows
(``plan.local_vector``), adds its own share of OpenDP noise (``noise.noisy``: the part is
ε-DP on its own, whoever decrypts it), encrypts it under the key service's public context —
which it cannot decrypt — and signs an attestation binding the ciphertext's digest to the
query and the noise it carries, so the key service can tell that this site took part.

One query id, one noise draw per withdrawal set: the noisy share is stored under the query
id before it leaves, and a repeated request for that query (a retry after another site
failed) gets the same share again, never a fresh draw that could be averaged — until a
consent withdrawal is recorded, which drops the stored shares (a share drawn before counts
the patient); the key service opens one set of shares per query id whatever the draws.
Rows, and the site's own aggregate in the clear, never leave. Consent withdrawals the
gateway forwards take effect at once. Every request is an entry in the site's own audit
chain.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Column, MetaData, String, Table, Text, delete, insert, select
from sqlalchemy.exc import IntegrityError

from sandbox import anchors, audit, httpapi, receipts
from sandbox.audit import AuditAction
from sandbox.db import make_engine
from sandbox.errors import (
    Conflict,
    InputError,
    PartitionChanged,
    SandboxError,
    Unauthenticated,
    Unavailable,
)
from sandbox.federated import authorization, ckks, counts, messages
from sandbox.federated.noise import noisy
from sandbox.federated.plan import Plan, local_vector, make_plan
from sandbox.federated.spec import FederatedSpec, resolved
from sandbox.purposes import ALL
from sandbox.queries import view
from sandbox.queries.withdrawals import Withdrawn
from sandbox.serving import TRUSTED_PROXIES_HELP, TrustedProxies

log = logging.getLogger("sandbox.site")

metadata = MetaData()
withdrawals = Table(
    "site_withdrawals", metadata,
    Column("pseudonym", String(64), primary_key=True),
    Column("purpose", String(40), primary_key=True),
    Column("at", String(40), nullable=False),
)
# The noisy share each query id received: drawn once, given again for that query only.
shares = Table(
    "site_shares", metadata,
    Column("query_id", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("vector", Text, nullable=False),
    Column("at", String(40), nullable=False),
)


class SiteSettings(BaseSettings, anchors.AnchorSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_SITE_", extra="ignore")

    site: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="this site's name")
    dataset_dir: Path = Field(description="this site's partition (an onboarded dataset)")
    state_dir: Path = Field(Path("var/site"), description="signing key, view, database")
    database_url: str = Field("", description="SQLite or PostgreSQL URL (default: "
                              "site.db in the state directory)")
    keys_url: str = Field("http://127.0.0.1:8720", description="the key service")
    gateway_key_file: Path = Field(Path("var/gateway/public-key.pem"),
                                   description="the gateway's public signing key (PEM)")
    portal_key_file: Path = Field(Path("var/portal/grant-public-key.pem"),
                                  description="the portal's public grant key (PEM): every "
                                  "federated query carries its signed authorization")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8731, description="port to listen on")
    trusted_proxies: TrustedProxies = Field(default_factory=list,
                                            description=TRUSTED_PROXIES_HELP)
    max_body_bytes: int = Field(256 * 1024, description="largest request body accepted")
    max_withdrawal_bytes: int = Field(32 * 1024 * 1024, description="largest body of "
                                      "forwarded withdrawals (a bulk intake)")

    @property
    def audience(self) -> str:
        return f"site:{self.site}"


class SiteService:
    def __init__(self, settings: SiteSettings, noise: bool = True) -> None:
        """``noise=False`` (tests only; no setting reaches it) sends exact parts, to
        compare federated answers with the pooled computation."""
        self.settings = settings
        self.noise = noise
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.db = make_engine(settings.database_url or
                              f"sqlite:///{settings.state_dir / 'site.db'}")
        metadata.create_all(self.db)
        audit.create_tables(self.db)
        self.signer = receipts.Signer(settings.state_dir / "signing-key.pem")
        self.anchors = anchors.Anchors(settings.audience, self.db, self.signer,
                                       settings.state_dir, settings)
        self._lock = threading.Lock()
        self._pool: ckks.EncryptionPool | None = None
        self._partition: tuple[view.Dataset, str] | None = None
        self.dataset = self._prepare()

    def _prepare(self) -> view.Dataset:
        with self.db.connect() as conn:
            rows = conn.execute(select(withdrawals.c.pseudonym, withdrawals.c.purpose)).all()
        self.withdrawn = Withdrawn().adding(len(rows), ((r.pseudonym, r.purpose) for r in rows))
        return view.prepare(self.settings.dataset_dir, self.settings.state_dir / "views")

    def partition(self, patients: list[str] | None = None) -> str:
        """A digest of the patients this site holds now (of the loaded partition): what the
        gateway's overlap check saw, and what each part is attested with, so that a
        partition refreshed since the check is noticed before anything is computed."""
        dataset = self.dataset
        if self._partition is None or self._partition[0] is not dataset:
            held = sorted(patients if patients is not None else view.patients(dataset))
            self._partition = (dataset, hashlib.sha256("\n".join(held).encode()).hexdigest())
        return self._partition[1]

    def pool(self) -> ckks.EncryptionPool:
        """Encryptions under the key service's public context (fetched once)."""
        with self._lock:
            if self._pool is None:
                try:
                    data = httpx.get(f"{self.settings.keys_url}/v1/context", timeout=60)
                    data.raise_for_status()
                except httpx.HTTPError as exc:
                    raise Unavailable(f"the key service could not be reached ({exc})") from None
                context = ckks.load(data.content)
                if ckks.holds_secret(context):
                    raise InputError("the key service published a secret key; refusing it")
                self._pool = ckks.EncryptionPool(context)
            return self._pool

    def _open(self, message: dict, action: str) -> dict:
        try:
            key = self.settings.gateway_key_file.read_bytes()
        except OSError as exc:
            raise Unavailable(f"the gateway's public key is not configured ({exc})") from None
        return messages.open_signed(message, key, self.settings.audience, action)

    def aggregate(self, message: dict) -> dict:
        """The encrypted local aggregate for the gateway's signed query, with this site's
        attestation."""
        request: dict = {}
        try:
            request = self._open(message, "aggregate")
            spec = FederatedSpec(**request["spec"])
            if spec.dataset != self.dataset.id:
                raise InputError(f"this site serves {self.dataset.id!r}, not {spec.dataset!r}")
            query_id = str(request["query_id"])
            granted = authorization.read(
                request.get("authorization"),
                authorization.portal_key(self.settings.portal_key_file))
            granted.covers(spec)
            if spec != resolved(spec, self.dataset.metadata):
                raise InputError("the question leaves out bounds it takes from the public "
                                 "metadata: one question, one spelling, one id")
            if query_id != granted.query_id(spec):
                raise Unauthenticated("the query id is not the one its authorization and "
                                      "question give: one question, one id, one noise draw")
            if request.get("partition") not in (None, self.partition()):
                raise PartitionChanged(f"site {self.settings.site}'s data changed since the "
                                       "federation's overlap check; nothing was computed")
            plan = make_plan(spec, self.dataset.metadata, set(granted.fields))
            share, drawn = self._share(query_id, plan, granted.purpose)
        except SandboxError as exc:
            self._audit(AuditAction.SITE_REFUSED, message, {"reason": exc.reason},
                        signed=bool(request))
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._audit(AuditAction.SITE_REFUSED, message, {"reason": str(exc)[:500]})
            raise InputError(f"the request does not describe a query: {exc}") from None
        ciphertext = self.pool().encrypt(share)
        covered = int(self.dataset.metadata["sample_size"]["patients"])
        attestation = self.signer.sign({
            "site": self.settings.site, "query_id": query_id,
            "fingerprint": spec.fingerprint(), "sha256": messages.digest(ciphertext),
            "size": plan.size, "min_count": plan.min_count, "covered": covered,
            "rows_per_patient": plan.rows_per_patient,
            "sites_per_patient": plan.sites_per_patient,
            "noise_scale": plan.scale if self.noise else 0.0,
            "count_checks": counts.to_json(plan.count_checks),
            "partition": self.partition()}, receipts.Domain.ATTESTATION)
        self._audit(AuditAction.SITE_AGGREGATED, message,
                    {"fingerprint": spec.fingerprint(), "purpose": granted.purpose,
                     "authorization": granted.id, "slots": plan.size,
                     "noise": "drawn" if drawn else "stored"})
        return {"site": self.settings.site, "covered": covered, "attestation": attestation,
                "ciphertext": ckks.b64(ciphertext)}

    def _share(self, query_id: str, plan: Plan, purpose: str) -> tuple[list[float], bool]:
        """This site's noisy share for ``query_id`` — the stored one if the query was asked
        before (never a second draw), else a new draw, stored before it leaves; and whether
        it was drawn now."""
        fingerprint = plan.spec.fingerprint()
        while True:
            stored = self._stored_share(query_id, fingerprint)
            if stored is not None:
                return stored, False
            withdrawn = self.withdrawn
            vector = local_vector(plan, self.dataset, purpose, withdrawn)
            share = noisy(plan, vector) if self.noise else vector
            with self._lock:
                if self.withdrawn is not withdrawn:
                    continue  # a withdrawal came in meanwhile: this draw would count the patient
                try:
                    with self.db.begin() as conn:
                        conn.execute(insert(shares).values(
                            query_id=query_id, fingerprint=fingerprint, at=_now(),
                            vector=json.dumps([float(v) for v in share])))
                except IntegrityError:  # a concurrent request for this query stored first
                    stored = self._stored_share(query_id, fingerprint)
                    if stored is None:
                        raise
                    return stored, False
            return [float(v) for v in share], True

    def _stored_share(self, query_id: str, fingerprint: str) -> list[float] | None:
        with self.db.connect() as conn:
            row = conn.execute(select(shares).where(shares.c.query_id == query_id)).first()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise Conflict(f"query {query_id} was asked before with another question")
        return json.loads(row.vector)

    def withdraw(self, message: dict) -> dict:
        """Record patients' withdrawals forwarded by the gateway — one (``pseudonym``,
        ``purposes``) or many (``withdrawals``: a list of them) — applied to every query
        from now on, with no view rebuilt."""
        request = self._open(message, "withdraw")
        try:
            items = request.get("withdrawals", [request])
            wanted = {(str(item["pseudonym"]), str(purpose)) for item in items
                      for purpose in (item.get("purposes") or [ALL])}
        except (KeyError, TypeError, AttributeError):
            raise InputError("a withdrawal names a pseudonym (and purposes)") from None
        with self._lock, self.db.begin() as conn:
            known = {(r.pseudonym, r.purpose) for r in conn.execute(
                select(withdrawals.c.pseudonym, withdrawals.c.purpose))}
            new = sorted(wanted - known)
            if new:
                at = datetime.now(UTC).isoformat()
                conn.execute(insert(withdrawals), [
                    {"pseudonym": p, "purpose": purpose, "at": at} for p, purpose in new])
                # A share drawn before counts the patient: a query asked again (its first
                # attempt never reached the key service) is drawn afresh without them. The
                # key service decides a query id once, so two draws are never both opened.
                conn.execute(delete(shares))
            for pseudonym in sorted({p for p, _ in wanted}):
                audit.append(conn, AuditAction.CONSENT_WITHDRAWN, "gateway",
                             f"patient:{pseudonym}", {"purposes": sorted(
                                 purpose for p, purpose in wanted if p == pseudonym)})
            self.withdrawn = self.withdrawn.adding(self.withdrawn.version + len(new), new)
        return {"site": self.settings.site, "recorded": len(new),
                "version": self.withdrawn.version}

    def overlap(self, message: dict) -> dict:
        """This site's patients, blinded for one overlap check: the first 8 bytes of
        HMAC-SHA256(salt, pseudonym) for each, sorted — what the gateway compares across
        sites to count patients held by several (docs/federated.md). The salt is fresh per
        check, so the digests of two checks cannot be linked."""
        request = self._open(message, "overlap")
        try:
            salt = bytes.fromhex(str(request["salt"]))
            check = str(request["check_id"])
        except (KeyError, ValueError):
            raise InputError("an overlap check needs a hex salt and a check id") from None
        if len(salt) < 16:
            raise InputError("the salt must be at least 16 bytes")
        patients = view.patients(self.dataset)
        partition = self.partition(patients)
        digests = sorted(hmac.new(salt, p.encode(), hashlib.sha256).digest()[:8]
                         for p in patients)
        with self.db.begin() as conn:
            audit.append(conn, AuditAction.SITE_OVERLAP_REPORTED, "gateway",
                         f"check:{check}", {"patients": len(digests)})
        return {"site": self.settings.site, "check_id": check, "patients": len(digests),
                "partition": partition,
                "digests": base64.b64encode(b"".join(digests)).decode()}

    def holds(self, message: dict) -> dict:
        """Whether this site holds records of a patient (for the gateway's consent and
        transparency reports); asked by pseudonym, answered yes or no."""
        request = self._open(message, "holds")
        pseudonym = str(request.get("pseudonym", ""))
        found = view.contains(self.dataset, pseudonym)
        with self.db.begin() as conn:
            audit.append(conn, AuditAction.SITE_PATIENT_LOOKED_UP, "gateway",
                         f"patient:{pseudonym}", {"found": found})
        return {"site": self.settings.site, "dataset": self.dataset.id, "holds": found}

    def _audit(self, action: AuditAction, message: dict, details: dict,
               signed: bool = True) -> None:
        """``signed``: the gateway's signature was verified (else the actor is unknown)."""
        payload = message.get("payload") if isinstance(message, dict) else None
        query = payload.get("query_id") if isinstance(payload, dict) else None
        # the caller's string, cut to a query id's length: an unsigned request must not
        # write what it likes into the chain
        subject = f"query:{str(query)[:64] if query else '?'}"
        with self.db.begin() as conn:
            audit.append(conn, action, "gateway" if signed else "unauthenticated", subject,
                         details)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def create_app(settings: SiteSettings, service: SiteService | None = None) -> FastAPI:
    service = service or SiteService(settings)
    app = FastAPI(title=f"Federated site {settings.site}", version="1",
                  description="Encrypted local aggregates of this site's partition.")
    app.state.service = service
    httpapi.install(app, log, lambda path: settings.max_withdrawal_bytes
                    if path == "/v1/withdrawals" else settings.max_body_bytes)
    anchors.install_peer(app, service.anchors, settings.audience,
                         settings.gateway_key_file.read_bytes)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "site": settings.site, "dataset": service.dataset.id}

    @app.get("/v1/public-key", response_class=PlainTextResponse)
    def public_key() -> str:
        """This site's attestation key, to register with the key service."""
        return service.signer.public_pem.decode()

    @app.post("/v1/aggregate")
    def aggregate(message: dict) -> dict:
        return service.aggregate(message)

    @app.post("/v1/patients")
    def holds(message: dict) -> dict:
        return service.holds(message)

    @app.post("/v1/overlap")
    def overlap(message: dict) -> dict:
        return service.overlap(message)

    @app.post("/v1/withdrawals")
    def withdraw(message: dict) -> dict:
        return service.withdraw(message)

    return app
