"""The gateway's business logic, free of HTTP: grants, the ledger, releases, consent.

The ledger rule (invariants 2 and 3): a query's (ε, δ) is charged in one transaction —
a conditional UPDATE that cannot take the grant past its total, plus the release row and
its audit entry — *before* anything is computed. Only then does OpenDP run; the value and
its signed receipt are recorded, and only a value recorded as released is returned. A
crash after the charge leaves it charged; re-sending the identical query then releases
under that same charge, and once released, the identical query returns the stored value
at no cost, so repeating a question cannot average the noise away.

Composition is basic sequential composition: a grant's spent ε is the sum of its queries'
ε, its spent δ the sum of their δ (docs/privacy-accounting.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from sandbox import audit
from sandbox.anchors import Anchors, result
from sandbox.audit import AuditAction
from sandbox.data.reference.population import PURPOSES
from sandbox.db import make_engine
from sandbox.errors import (
    BudgetExhausted,
    Conflict,
    Forbidden,
    InputError,
    NotFound,
    PartitionChanged,
    PolicyRefusal,
    RefusedRelease,
    SandboxError,
    Unauthenticated,
)
from sandbox.federated import authorization
from sandbox.federated.noise import ALPHA, accuracy
from sandbox.federated.plan import Plan
from sandbox.federated.spec import FederatedSpec
from sandbox.gateway import engine as dpengine
from sandbox.gateway import statements
from sandbox.gateway.federation import FederatedDataset, Federation
from sandbox.gateway.grants import GrantState, check_usable, next_state
from sandbox.gateway.queries import QuerySpec
from sandbox.gateway.ratelimit import RateLimiter
from sandbox.gateway.settings import GatewaySettings
from sandbox.gateway.store import (
    create_tables,
    exports,
    grant_authorizations,
    grant_networks,
    grants,
    releases,
    withdrawals,
)
from sandbox.receipts import Domain, Signer
from sandbox.secretfile import read_or_create

PURPOSE_IDS = tuple(p[0] for p in PURPOSES)
EPS_SLACK = 1e-9


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_id(grant_id: str) -> None:
    """No grant has a NUL in its id (PostgreSQL's driver would fail on it, not find none)."""
    if "\x00" in grant_id:
        raise NotFound(f"no grant {grant_id!r}")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


class ExportFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$")
    content: str = Field(description="base64")


class ExportIn(BaseModel):
    """Files and receipts a project asks to take out (checked and reviewed in the portal)."""

    model_config = ConfigDict(extra="forbid")

    files: list[ExportFileIn] = Field(min_length=1, max_length=200)
    receipts: list[dict] = Field(default_factory=list, max_length=1000)
    note: str = Field(default="", max_length=5000, pattern=r"^[^\x00]*$")


class Withdrawal(BaseModel):
    """A patient's withdrawal of consent, by pseudonym, for some purposes or all."""

    model_config = ConfigDict(extra="forbid")

    pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$")
    purposes: list[str] | None = None

    @field_validator("purposes")
    @classmethod
    def _known(cls, purposes: list[str] | None) -> list[str] | None:
        if purposes is not None:
            unknown = sorted(set(purposes) - set(PURPOSE_IDS))
            if unknown or not purposes:
                raise ValueError(f"unknown purposes {unknown}; one of {', '.join(PURPOSE_IDS)}")
        return purposes


class GatewayService:
    """Everything the gateway does, callable without HTTP."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.db = make_engine(settings.database_url)
        create_tables(self.db)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.signer = Signer(settings.signing_key_file)
        # Sites and the key service trust this key for the gateway's signed requests.
        published = settings.state_dir / "public-key.pem"
        if not published.exists() or published.read_bytes() != self.signer.public_pem:
            published.write_bytes(self.signer.public_pem)
        self.admin_token_hash = _hash_token(self._admin_token())
        self.engine = dpengine.Engine()
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self._refresh = threading.Lock()
        self.datasets: dict[str, dpengine.Dataset] = {}
        self._load_datasets()
        self.federation = Federation(settings.federation_file, self.signer)
        self.anchors = Anchors("gateway", self.db, self.signer, settings.state_dir, settings)

    # -- set-up ------------------------------------------------------------------------
    def _admin_token(self) -> str:
        return read_or_create(self.settings.admin_token_file,
                              lambda: secrets.token_urlsafe(32).encode()).decode().strip()

    def _withdrawn(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with self.db.connect() as conn:
            for row in conn.execute(select(withdrawals.c.pseudonym, withdrawals.c.purpose)):
                out.setdefault(row.pseudonym, set()).add(row.purpose)
        return out

    def _load_datasets(self) -> None:
        root = Path(self.settings.datasets_dir)
        if not root.is_dir():
            raise InputError(f"datasets directory {root} not found")
        withdrawn = self._withdrawn()
        loaded = {}
        for directory in sorted(p for p in root.iterdir() if (p / "metadata.json").is_file()):
            meta = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
            if meta.get("grade") == "public" or meta.get("federated"):
                continue  # nothing to serve here (federated rows stay at their sites)
            loaded[meta["id"]] = dpengine.prepare(directory, self.settings.cache_dir, withdrawn)
        self.datasets = loaded

    # -- authentication ------------------------------------------------------------------
    def check_admin(self, token: str | None) -> str:
        if not token or not hmac.compare_digest(_hash_token(token), self.admin_token_hash):
            raise Unauthenticated("a valid service token is required")
        return "service"

    def grant_for_token(self, token: str | None, client: str | None = None) -> dict:
        """The grant a project token belongs to (whatever its state), if the request comes
        from a network the grant is bound to (when it is bound to any)."""
        if not token:
            raise Unauthenticated("a project token is required (Authorization: Bearer …)")
        with self.db.connect() as conn:  # one round trip: the grant and its networks
            row = conn.execute(
                select(grants, grant_networks.c.networks)
                .outerjoin(grant_networks, grant_networks.c.grant_id == grants.c.id)
                .where(grants.c.token_hash == _hash_token(token))).mappings().first()
        if row is None:
            raise Unauthenticated("unknown project token")
        if row["networks"] is not None and not _within(client, json.loads(row["networks"])):
            with self.db.begin() as conn:
                audit.append(conn, AuditAction.TOKEN_MISPLACED, f"grant:{row['id']}",
                             f"grant:{row['id']}", {"client": client})
            raise Forbidden("this project's token works only from the project's sandbox")
        self.limiter.take(row["id"])
        return _grant({k: v for k, v in row.items() if k != "networks"})

    def submit_export(self, grant: dict, request: ExportIn, actor: str | None = None) -> dict:
        """Record an export request of this project; nothing leaves until it is reviewed.
        ``actor``: who asked, when not the project's own token (the portal, for files it
        read from the project's sandbox on the researcher's request)."""
        check_usable(grant)
        files = []
        for item in request.files:
            if item.name.startswith(".") or item.name in {n["name"] for n in files}:
                raise InputError(f"file name {item.name!r} is hidden or given twice")
            try:
                content = base64.b64decode(item.content, validate=True)
            except ValueError:
                raise InputError(f"{item.name}: content is not base64") from None
            files.append({"name": item.name, "size": len(content),
                          "sha256": hashlib.sha256(content).hexdigest(),
                          "content": item.content})
        row = {"id": uuid.uuid4().hex, "grant_id": grant["id"], "project": grant["project"],
               "note": request.note, "files": json.dumps(files),
               "receipts": json.dumps(request.receipts), "created_at": _now()}
        with self.db.begin() as conn:
            conn.execute(insert(exports).values(**row))
            audit.append(conn, AuditAction.EXPORT_SUBMITTED, actor or f"grant:{grant['id']}",
                         f"export:{row['id']}", {"grant": grant["id"], "files": len(files),
                                                 "bytes": sum(f["size"] for f in files),
                                                 "receipts": len(request.receipts)})
        return {"export": row["id"], "files": [{k: f[k] for k in ("name", "size", "sha256")}
                                               for f in files]}

    def exports_after(self, after: str) -> list[dict]:
        """Export requests recorded after ``after`` (a creation time), with their files."""
        with self.db.connect() as conn:
            rows = conn.execute(select(exports).where(exports.c.created_at > after)
                                .order_by(exports.c.created_at)).mappings().all()
        return [{**dict(r), "files": json.loads(r["files"]),
                 "receipts": json.loads(r["receipts"])} for r in rows]

    def audit_entries(self, since: str, after_seq: int, limit: int) -> list[dict]:
        query = select(audit.audit_log).where(audit.audit_log.c.seq > after_seq)
        if since:
            query = query.where(audit.audit_log.c.at >= since)
        with self.db.connect() as conn:
            rows = conn.execute(query.order_by(audit.audit_log.c.seq).limit(limit)).mappings()
            return [dict(row) for row in rows]

    def verify_audit(self) -> dict:
        """The chain against its witness file and its own signed checkpoints."""
        return result(self.anchors.verify())

    def bind_networks(self, actor: str, grant_id: str, networks: list[str]) -> dict:
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
                                                       bound_at=_now()))
            audit.append(conn, AuditAction.GRANT_BOUND, actor, f"grant:{grant_id}",
                         {"networks": cidrs})
        return {"grant": grant_id, "networks": cidrs}

    # -- grants ----------------------------------------------------------------------------
    def create_grant(self, actor: str, request: GrantRequest) -> tuple[dict, str]:
        served = {**self.datasets, **self.federation.datasets}
        for name in request.datasets:
            if name not in served:
                raise InputError(f"unknown dataset {name!r}; served: "
                                 f"{', '.join(sorted(served))}")
        known = set().union(*(served[d].fields for d in request.datasets))
        unknown = sorted(set(request.fields) - known)
        if unknown:
            raise InputError(f"unknown fields {unknown}")
        if request.expires_at <= datetime.now(UTC):
            raise InputError("expires_at is in the past")
        if request.epsilon > self.settings.max_epsilon:
            raise InputError(f"ε = {request.epsilon:g} is above the largest total a grant may "
                             f"have (ε ≤ {self.settings.max_epsilon:g})")
        authorized = self._authorized(request)
        token = secrets.token_urlsafe(32)
        row = {
            "id": uuid.uuid4().hex, "project": request.project,
            "datasets": json.dumps(request.datasets), "fields": json.dumps(request.fields),
            "purpose": request.purpose, "epsilon_total": request.epsilon,
            "delta_total": request.delta, "epsilon_spent": 0.0, "delta_spent": 0.0,
            "expires_at": request.expires_at.astimezone(UTC).isoformat(),
            "status": GrantState.ACTIVE, "status_reason": "", "token_hash": _hash_token(token),
            "created_at": _now(),
        }
        with self.db.begin() as conn:
            conn.execute(insert(grants).values(**row))
            if authorized is not None:
                conn.execute(insert(grant_authorizations).values(
                    grant_id=row["id"], authorization_id=authorized.id,
                    document=json.dumps(authorized.document, ensure_ascii=False)))
            audit.append(conn, AuditAction.GRANT_CREATED, actor, f"grant:{row['id']}",
                         {**{k: v for k, v in row.items() if k != "token_hash"},
                          "authorization": authorized.id if authorized else None})
        return self.grant(row["id"]), token

    def _authorized(self, request: GrantRequest) -> authorization.Authorization | None:
        """The portal's authorization of the request's terms, for a grant on federated
        datasets (the sites and the key service check queries against it); central
        datasets answer at the gateway, which keeps their budget itself."""
        federated = [d for d in request.datasets if d in self.federation.datasets]
        if not federated:
            return None
        if request.authorization is None:
            raise InputError(f"a grant on federated datasets ({', '.join(federated)}) "
                             "needs the portal's signed authorization of its terms")
        try:
            found = authorization.read(request.authorization,
                                       authorization.portal_key(self.settings.portal_key_file))
        except Unauthenticated as exc:
            raise InputError(exc.reason) from None
        if not found.matches(request.model_dump(mode="json")):
            raise InputError("the authorization is for other terms than this grant's")
        return found

    def authorization_of(self, grant_id: str) -> dict | None:
        """The portal's signed authorization of a grant, if it came with one."""
        with self.db.connect() as conn:
            document = conn.execute(select(grant_authorizations.c.document).where(
                grant_authorizations.c.grant_id == grant_id)).scalar()
        return json.loads(document) if document else None

    def grant(self, grant_id: str) -> dict:
        _check_id(grant_id)
        with self.db.connect() as conn:
            row = conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().first()
        if row is None:
            raise NotFound(f"no grant {grant_id}")
        return _grant(row)

    def change_grant(self, actor: str, grant_id: str, action: str, reason: str,
                     statement: dict | None = None) -> dict:
        """Suspend, resume or revoke a grant; the portal's signed statement of the change,
        when given, is checked first and relayed to the key service, which then holds the
        grant's authorization to it whatever this gateway later says."""
        _check_id(grant_id)
        relay = statement is not None and bool(self.federation.keys_url)
        if relay:  # (without a key service there is no one to tell)
            self._check_statement(grant_id, action, statement)
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
            if relay:  # kept with the change: the key service is told until it has it
                statement_id = statements.keep(conn, row["project"],
                                               authorization.STATE_AFTER[action], statement)
        changed = self.grant(grant_id)
        if relay:
            changed["key_service_told"] = statement_id not in self.tell_keys()
        return changed

    def tell_keys(self) -> list[str]:
        """Relay the portal's statements the key service has not taken yet; the ids of
        those left (``statements.relay``)."""
        return statements.relay(self.db, self.federation.tell_keys)

    def grant_statements(self) -> list[dict]:
        return statements.listed(self.db)

    def _check_statement(self, grant_id: str, action: str, statement: dict) -> None:
        said = authorization.read_state(
            statement, authorization.portal_key(self.settings.portal_key_file))
        project = self.grant(grant_id)["project"]
        if said.project != project or said.status != authorization.STATE_AFTER[action]:
            raise InputError(f"the portal's statement says {said.project} is {said.status}; "
                             f"this is to {action} {project}")

    # -- consent -----------------------------------------------------------------------------
    def withdraw(self, actor: str, request: Withdrawal) -> dict:
        purposes = request.purposes or [dpengine.ALL_PURPOSES]
        with self.db.begin() as conn:
            existing = {r.purpose for r in conn.execute(
                select(withdrawals.c.purpose).where(withdrawals.c.pseudonym == request.pseudonym))}
            new = [p for p in purposes if p not in existing]
            for purpose in new:
                conn.execute(insert(withdrawals).values(
                    pseudonym=request.pseudonym, purpose=purpose, recorded_at=_now(),
                    recorded_by=actor))
            audit.append(conn, AuditAction.CONSENT_WITHDRAWN, actor,
                         f"patient:{request.pseudonym}", {"purposes": purposes})
        # Takes effect before this call returns: the views are rebuilt now.
        with self._refresh:
            self._load_datasets()
        # Sites hold their own rows: they are told now, and say if they could not be.
        missed = self.federation.forward_withdrawal(request.pseudonym, purposes)
        return {"pseudonym": request.pseudonym, "purposes": purposes,
                "recorded": new, "datasets": sorted(self.datasets),
                "containing": self.containing(request.pseudonym, strict=False),
                "sites_missed": missed}

    def containing(self, pseudonym: str, strict: bool = True) -> list[dict]:
        """The datasets (id and version) holding records of this patient, federated ones
        included (their sites are asked; ``strict``: a site that cannot answer fails the
        call rather than leave a report incomplete)."""
        return [{"id": d.id, "version": d.version} for d in self.datasets.values()
                if dpengine.contains(d, pseudonym)] + self.federation.holding(pseudonym,
                                                                              strict)

    # -- project side ------------------------------------------------------------------------
    def catalog(self, grant: dict) -> list[dict]:
        check_usable(grant)
        out = []
        for name in grant["datasets"]:
            federated = name in self.federation.datasets
            meta = (self.federation.datasets[name] if federated else self.datasets[name]
                    ).metadata
            fields = [f for f in meta["tables"]["records"]["fields"]
                      if f["name"] in grant["fields"]]
            out.append({"id": meta["id"], "version": meta["version"], "title": meta["title"],
                        "unit": meta["unit"], "sample_size": meta["sample_size"],
                        "years": meta["years"], "contribution_bound": meta["contribution_bound"],
                        "fields": fields, "federated": federated,
                        "sites": len(meta.get("sites", [])) if federated else 0})
        return out

    def budget(self, grant: dict) -> dict:
        return {
            "grant": grant["id"], "project": grant["project"], "status": grant["status"],
            "purpose": grant["purpose"], "expires_at": grant["expires_at"],
            "epsilon": _budget(grant["epsilon_total"], grant["epsilon_spent"]),
            "delta": _budget(grant["delta_total"], grant["delta_spent"]),
        }

    @staticmethod
    def _granted(grant: dict, dataset: str) -> None:
        check_usable(grant)
        if dataset not in grant["datasets"]:
            raise Forbidden(f"dataset {dataset!r} is outside this project's grant; "
                            f"granted: {', '.join(grant['datasets'])}")

    def _resolve(self, grant: dict, spec: QuerySpec) -> dpengine.Dataset:
        self._granted(grant, spec.dataset)
        dataset = self.datasets.get(spec.dataset)
        if spec.dataset in self.federation.datasets:
            raise InputError(f"{spec.dataset!r} is federated: its rows stay at its sites; "
                             "ask with gw.federated.histogram / mean / linear_regression")
        if dataset is None:
            raise NotFound(f"dataset {spec.dataset!r} is not served")
        self.engine.check(spec, dataset, set(grant["fields"]))
        return dataset

    def preview(self, grant: dict, spec: QuerySpec) -> dict:
        return self._preview(grant, spec, lambda: {"statistics": self.engine.preview(
            spec, self._resolve(grant, spec), grant["purpose"], ALPHA)})

    def _preview(self, grant: dict, spec: QuerySpec | FederatedSpec,
                 compute: Callable[[], dict]) -> dict:
        """Accuracy of a query, audited; spends nothing (a refusal is audited too)."""
        try:
            answer = compute()
        except SandboxError as exc:
            self._refused(grant, spec, exc)
            raise
        with self.db.begin() as conn:
            audit.append(conn, AuditAction.QUERY_PREVIEWED, f"grant:{grant['id']}",
                         f"dataset:{spec.dataset}", {"spec": json.loads(spec.canonical())})
        return {"epsilon": spec.epsilon, "delta": spec.delta, "alpha": ALPHA, "spends": 0,
                **answer}

    def _refused(self, grant: dict, spec: QuerySpec, exc: SandboxError) -> None:
        with self.db.begin() as conn:
            audit.append(conn, AuditAction.QUERY_REFUSED, f"grant:{grant['id']}",
                         f"dataset:{spec.dataset}",
                         {"spec": json.loads(spec.canonical()), "reason": exc.reason})

    def query(self, grant: dict, spec: QuerySpec) -> dict:
        def prepare() -> tuple[dpengine.Dataset, Callable[[dict], dpengine.Release]]:
            dataset = self._resolve(grant, spec)
            # Compile (and calibrate) before charging: a query OpenDP cannot answer is
            # refused without spending anything.
            measurement = self.engine.measurement(spec, dataset, grant["purpose"])
            return dataset, lambda _claim: self.engine.run(spec, dataset, measurement)

        return self._answer(grant, spec, prepare)

    def _federated_plan(self, grant: dict, spec: FederatedSpec) -> Plan:
        self._granted(grant, spec.dataset)
        return self.federation.plan(spec, set(grant["fields"]))

    def _federated_spelling(self, spec: FederatedSpec) -> FederatedSpec:
        """One question, one spelling: its public default bounds written in (filters are
        already in one order), so a question asked another way is charged and answered as
        the same question (an unknown dataset is refused later, where it is audited)."""
        known = spec.dataset in self.federation.datasets
        return self.federation.resolve(spec) if known else spec

    def _federation_holds(self, dataset: str, again: bool = False) -> None:
        """Refuse a federation whose sites share more patients than it declares (checked
        from the sites' blinded pseudonyms — ``again``: now, whatever the last check —,
        audited when a new check ran)."""
        before = self.federation.overlaps.get(dataset)
        overlap = self.federation.check_overlap(dataset, force=again)
        if overlap is not before:
            with self.db.begin() as conn:
                audit.append(conn, AuditAction.FEDERATION_CHECKED, "gateway",
                             f"dataset:{dataset}", {**overlap.describe(), "ok": overlap.ok})
        if not overlap.ok:
            # The counts are exact and stay with the controllers (the audit entry above):
            # the researcher learns only that the federation is refused, and why in words.
            raise PolicyRefusal(
                f"{dataset}: its sites share more patients than the federation declares "
                f"(at most {overlap.declared} site(s) per patient, which its noise is "
                "calibrated to); nothing can be released until the controllers correct it "
                "(the counts are in the gateway's audit log)")

    def federated_query(self, grant: dict, spec: FederatedSpec) -> dict:
        """A federated answer: charged here first, computed by the sites under
        encryption with their own noise shares, added and decrypted by the key service,
        recorded and receipted here. Retries of a charge ask about the same query id."""
        spec = self._federated_spelling(spec)

        def prepare() -> tuple[FederatedDataset, Callable[[dict], dpengine.Release]]:
            plan = self._federated_plan(grant, spec)
            document = self.authorization_of(grant["id"])
            if document is None:
                raise Forbidden(f"grant {grant['id']} came without the portal's signed "
                                "authorization, which federated queries need")
            query = authorization.query_id(document["payload"]["id"], spec.fingerprint())
            self._federation_holds(spec.dataset)

            def run(_claim: dict) -> dpengine.Release:
                # The key service checks the grant as it stands after this query's charge;
                # the sites and the key service recompute the query's id themselves.
                try:
                    return self.federation.run(plan, self.grant(grant["id"]), query, document)
                except PartitionChanged:
                    # a site's data changed since the check (nothing was computed): check
                    # the federation again — refused if its bound no longer holds — and ask
                    self._federation_holds(spec.dataset, again=True)
                    return self.federation.run(plan, self.grant(grant["id"]), query, document)

            return self.federation.datasets[spec.dataset], run

        return self._answer(grant, spec, prepare)

    def federated_preview(self, grant: dict, spec: FederatedSpec) -> dict:
        spec = self._federated_spelling(spec)

        def compute() -> dict:
            plan = self._federated_plan(grant, spec)
            return {"statistics": accuracy(plan), "min_count": plan.min_count}

        return self._preview(grant, spec, compute)

    def _answer(self, grant: dict, spec: QuerySpec | FederatedSpec,
                prepare: Callable[[], tuple[Any, Callable[[dict], dpengine.Release]]]
                ) -> dict:
        """Charge, compute, record, sign, return — in that order."""
        try:
            dataset, run = prepare()
            claim = self._charge(grant, spec, dataset)
        except SandboxError as exc:
            self._refused(grant, spec, exc)
            raise
        if claim["status"] == "released":
            return self._stored(claim)
        try:
            result = run(claim)
        except Exception as exc:
            self._fail(claim, exc)
            raise
        return self._record(grant, spec, dataset, claim, result)

    def _charge(self, grant: dict, spec: QuerySpec, dataset: dpengine.Dataset) -> dict:
        fingerprint = spec.fingerprint()
        try:
            with self.db.begin() as conn:
                existing = conn.execute(select(releases).where(and_(
                    releases.c.grant_id == grant["id"], releases.c.query_hash == fingerprint))
                ).mappings().first()
                if existing is not None:
                    return self._reclaim(conn, grant, dict(existing))
                charged = conn.execute(
                    update(grants)
                    .where(and_(
                        grants.c.id == grant["id"],
                        grants.c.status == GrantState.ACTIVE,
                        grants.c.expires_at > datetime.now(UTC).isoformat(),
                        grants.c.epsilon_spent + spec.epsilon
                        <= grants.c.epsilon_total + EPS_SLACK,
                        grants.c.delta_spent + spec.delta <= grants.c.delta_total + 1e-15,
                    ))
                    .values(epsilon_spent=grants.c.epsilon_spent + spec.epsilon,
                            delta_spent=grants.c.delta_spent + spec.delta)
                ).rowcount
                if charged != 1:
                    self._explain_refusal(conn, grant["id"], spec)
                claim = {
                    "id": uuid.uuid4().hex, "grant_id": grant["id"], "query_hash": fingerprint,
                    "spec": spec.canonical(), "dataset": dataset.id,
                    "dataset_version": dataset.version, "epsilon": spec.epsilon,
                    "delta": spec.delta, "status": "charged", "created_at": _now(),
                }
                conn.execute(insert(releases).values(**claim))
                audit.append(conn, AuditAction.RELEASE_CHARGED, f"grant:{grant['id']}",
                             f"release:{claim['id']}", {"epsilon": spec.epsilon,
                                                         "delta": spec.delta,
                                                         "query_hash": fingerprint})
                return claim
        except IntegrityError:
            # An identical query was charged by a concurrent request; nothing was spent here.
            raise Conflict("an identical query is being answered; send it again to get "
                           "its stored result") from None

    def _reclaim(self, conn: Connection, grant: dict, existing: dict) -> dict:
        if existing["status"] == "released":
            audit.append(conn, AuditAction.RELEASE_REPEATED, f"grant:{grant['id']}",
                         f"release:{existing['id']}", {})
            return existing
        # Charged earlier but never released (a crash or a failure): release now under the
        # same charge. A fresh id makes a concurrent reclaim of the same row lose the race.
        new_id = uuid.uuid4().hex
        taken = conn.execute(update(releases).where(and_(
            releases.c.id == existing["id"], releases.c.status == existing["status"]))
            .values(id=new_id, status="charged", error=None)).rowcount
        if taken != 1:
            raise Conflict("an identical query is being answered; send it again")
        audit.append(conn, AuditAction.RELEASE_CHARGED, f"grant:{grant['id']}",
                     f"release:{new_id}", {"reclaims": existing["id"], "epsilon": 0.0})
        return {**existing, "id": new_id, "status": "charged"}

    def _explain_refusal(self, conn: Connection, grant_id: str, spec: QuerySpec) -> None:
        row = _grant(conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().one())
        check_usable(row)
        if row["status"] != GrantState.ACTIVE:
            raise Forbidden(f"grant {grant_id} is {row['status']}")
        eps_left = max(0.0, row["epsilon_total"] - row["epsilon_spent"])
        delta_left = max(0.0, row["delta_total"] - row["delta_spent"])
        raise BudgetExhausted(
            f"this query needs ε = {spec.epsilon:g}, δ = {spec.delta:g} but only "
            f"ε = {eps_left:.6g}, δ = {delta_left:.3g} remain",
            epsilon_remaining=eps_left, delta_remaining=delta_left)

    def _fail(self, claim: dict, exc: Exception) -> None:
        with self.db.begin() as conn:
            conn.execute(update(releases).where(and_(releases.c.id == claim["id"],
                                                     releases.c.status == "charged"))
                         .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000]))
            audit.append(conn, AuditAction.RELEASE_FAILED, f"grant:{claim['grant_id']}",
                         f"release:{claim['id']}", {"error": type(exc).__name__})

    def _record(self, grant: dict, spec: QuerySpec, dataset: dpengine.Dataset, claim: dict,
                result: dpengine.Release) -> dict:
        payload = {
            "release": claim["id"], "grant": grant["id"], "project": grant["project"],
            "purpose": grant["purpose"], "dataset": dataset.id,
            "dataset_version": dataset.version, "query": json.loads(spec.canonical()),
            "query_hash": claim["query_hash"], "result": result.rows,
            "epsilon": spec.epsilon, "delta": spec.delta,
            "opendp_loss": [result.epsilon, result.delta], "released_at": _now(),
            **({"refused": result.refused} if result.refused else {}),
        }
        receipt = self.signer.sign(payload, Domain.RECEIPT)
        with self.db.begin() as conn:
            done = conn.execute(update(releases).where(and_(
                releases.c.id == claim["id"], releases.c.status == "charged"))
                .values(status="released", value=json.dumps(result.rows, ensure_ascii=False),
                        receipt=json.dumps(receipt, ensure_ascii=False),
                        released_at=payload["released_at"])).rowcount
            if done != 1:
                # Another request reclaimed this charge meanwhile: this value never leaves.
                raise Conflict("an identical query is being answered; send it again")
            audit.append(conn, AuditAction.RELEASE_RELEASED, f"grant:{grant['id']}",
                         f"release:{claim['id']}",
                         {"receipt_sha256": hashlib.sha256(
                             json.dumps(receipt, sort_keys=True).encode()).hexdigest()})
        answer = {"release": claim["id"], "result": result.rows, "columns": result.columns,
                  "epsilon": spec.epsilon, "delta": spec.delta, "repeated": False,
                  "receipt": receipt}
        _raise_if_refused(answer)
        return answer

    def _stored(self, row: dict) -> dict:
        receipt = json.loads(row["receipt"])
        rows = json.loads(row["value"])
        _raise_if_refused({"release": row["id"], "epsilon": row["epsilon"],
                           "delta": row["delta"], "repeated": True, "receipt": receipt})
        return {"release": row["id"], "result": rows,
                "columns": list(rows[0].keys()) if rows else [],
                "epsilon": row["epsilon"], "delta": row["delta"], "repeated": True,
                "receipt": receipt}

    def releases(self, grant: dict) -> list[dict]:
        with self.db.connect() as conn:
            rows = conn.execute(select(releases).where(releases.c.grant_id == grant["id"])
                                .order_by(releases.c.created_at)).mappings().all()
        return [{"release": r["id"], "status": r["status"], "dataset": r["dataset"],
                 "query": json.loads(r["spec"]), "epsilon": r["epsilon"], "delta": r["delta"],
                 "created_at": r["created_at"], "released_at": r["released_at"],
                 "receipt": json.loads(r["receipt"]) if r["receipt"] else None}
                for r in rows]


def _raise_if_refused(answer: dict) -> None:
    """A release whose outcome is a refusal reaches the caller as ``RefusedRelease``,
    with its id and receipt: charged once, the same refusal every time."""
    refused = answer["receipt"]["payload"].get("refused")
    if refused:
        raise RefusedRelease(
            f"{refused} (release {answer['release']}: ε = {answer['epsilon']:g} was charged "
            "once; asking again returns this same outcome)",
            **{k: answer[k] for k in ("release", "epsilon", "delta", "repeated", "receipt")})


def _budget(total: float, spent: float) -> dict:
    # Sums of floats drift in the last digits (0.1 + 0.2 …); show what a person expects.
    return {"total": round(total, 12), "spent": round(spent, 12),
            "remaining": round(max(0.0, total - spent), 12)}


def _within(client: str | None, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n) for n in networks)


def _grant(row) -> dict:
    grant = dict(row)
    grant["datasets"] = json.loads(grant["datasets"])
    grant["fields"] = json.loads(grant["fields"])
    grant.pop("token_hash", None)
    return grant
