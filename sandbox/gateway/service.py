"""The gateway, callable without HTTP: one façade over its parts — grants
(``grants``), the ledger that charges and records releases (``ledger``), the questions it
answers (``questions``), consent (``consent``), export requests (``exports``) and the
anchored audit log. The HTTP layer (``app``) only parses and calls this."""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from sandbox import audit
from sandbox.anchors import Anchors, result
from sandbox.cohorts.checks import grantable, qualified
from sandbox.cohorts.spec import RECORDS, CohortQuery
from sandbox.data import metadata
from sandbox.db import make_engine
from sandbox.errors import InputError, SandboxError, Unauthenticated
from sandbox.federated import authorization
from sandbox.federated.noise import ALPHA, accuracy
from sandbox.federated.spec import FederatedSpec
from sandbox.gateway import cohorts, consent, exports, statements, store
from sandbox.gateway import engine as dpengine
from sandbox.gateway.consent import Withdrawal
from sandbox.gateway.deliveries import Deliveries
from sandbox.gateway.execution import executor_for
from sandbox.gateway.exports import ExportIn
from sandbox.gateway.federation import Federation
from sandbox.gateway.grants import Grant, GrantRequest, Grants, hash_token
from sandbox.gateway.ledger import Ledger
from sandbox.gateway.questions import (
    CentralQuestion,
    FederatedQuestion,
    central_dataset,
    federated_plan,
    served_dataset,
)
from sandbox.gateway.ratelimit import limiter_for
from sandbox.gateway.settings import GatewaySettings
from sandbox.gateway.store import create_tables
from sandbox.queries import view
from sandbox.queries.spec import QuerySpec
from sandbox.queries.withdrawals import WithdrawalLog
from sandbox.receipts import Signer
from sandbox.secretfile import read_or_create

__all__ = ["ExportIn", "GatewayService", "GrantRequest", "Withdrawal"]


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
        self.admin_token_hash = hash_token(read_or_create(
            settings.admin_token_file, lambda: secrets.token_urlsafe(32).encode()
        ).decode().strip())
        self.engine = dpengine.Engine(executor_for(settings.engine, settings.spark_remote))
        self.limiter = limiter_for(self.db, settings.rate_limit, settings.rate_burst)
        self.grants = Grants(self.db)
        self.ledger = Ledger(self.db, self.signer)
        # withdrawals someone deleted are written back before anything is answered, and
        # none is answered while one recorded outside the table is still missing from it
        self.consent_copy = consent.Copy(settings.state_dir / "withdrawals.txt")
        recorded = consent.expected(self.db, self.consent_copy)
        consent.restore(self.db, recorded)
        self.withdrawals = WithdrawalLog(self.db, store.withdrawals)
        self.withdrawals.expect(recorded)
        self.datasets: dict[str, view.Dataset] = {}
        self._load_datasets()
        self.federation = Federation(settings.federation_file, self.signer)
        self.deliveries = Deliveries(self.db)
        self.anchors = Anchors("gateway", self.db, self.signer, settings.state_dir, settings)

    def _load_datasets(self) -> None:
        root = Path(self.settings.datasets_dir)
        if not root.is_dir():
            raise InputError(f"datasets directory {root} not found")
        loaded = {}
        for directory in sorted(p for p in root.iterdir() if (p / metadata.FILE).is_file()):
            meta = metadata.load(directory)
            if meta.grade == "public" or meta.federated:
                continue  # nothing to serve here (federated rows stay at their sites)
            loaded[meta.id] = view.prepare(directory, self.settings.cache_dir,
                                           self.engine.executor)
        self.datasets = loaded

    # -- authentication ------------------------------------------------------------------
    def check_admin(self, token: str | None) -> str:
        if not token or not hmac.compare_digest(hash_token(token), self.admin_token_hash):
            raise Unauthenticated("a valid service token is required")
        return "service"

    def grant_for_token(self, token: str | None, client: str | None = None) -> Grant:
        grant = self.grants.for_token(token, client)
        self.limiter.take(grant.id)
        return grant

    # -- grants (the portal) --------------------------------------------------------------
    def create_grant(self, actor: str, request: GrantRequest) -> tuple[dict, str]:
        served = {**self.datasets, **self.federation.datasets}
        for name in request.datasets:
            if name not in served:
                raise InputError(f"unknown dataset {name!r}; served: "
                                 f"{', '.join(sorted(served))}")
        known = set().union(*(served[d].fields for d in request.datasets),
                            *(grantable(served[d].metadata) for d in request.datasets))
        unknown = sorted(set(request.fields) - known)
        if unknown:
            raise InputError(f"unknown fields {unknown}")
        if request.expires_at <= datetime.now(UTC):
            raise InputError("expires_at is in the past")
        if request.epsilon > self.settings.max_epsilon:
            raise InputError(f"ε = {request.epsilon:g} is above the largest total a grant may "
                             f"have (ε ≤ {self.settings.max_epsilon:g})")
        authorized = self._authorized(request)
        grant, token = self.grants.create(
            actor, request, (authorized.id, authorized.document) if authorized else None)
        return grant.as_dict(), token

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

    def grant(self, grant_id: str) -> dict:
        return self.grants.get(grant_id).as_dict()

    def bind_networks(self, actor: str, grant_id: str, networks: list[str]) -> dict:
        return self.grants.bind(actor, grant_id, networks)

    def change_grant(self, actor: str, grant_id: str, action: str, reason: str,
                     statement: dict | None = None) -> dict:
        """Suspend, resume or revoke a grant; the portal's signed statement of the change,
        when given, is checked first and relayed to the key service, which then holds the
        grant's authorization to it whatever this gateway later says."""
        relay = statement is not None and bool(self.federation.keys_url)
        if relay:  # (without a key service there is no one to tell)
            self._check_statement(grant_id, action, statement)
        kept = self.grants.change(actor, grant_id, action, reason, (lambda conn, grant: (
            # kept with the change: the key service is told until it has it
            statements.keep(conn, grant.project, authorization.STATE_AFTER[action],
                            statement))) if relay else None)
        changed = self.grant(grant_id)
        if relay:
            changed["key_service_told"] = kept not in self.tell_keys()
        return changed

    def _check_statement(self, grant_id: str, action: str, statement: dict) -> None:
        said = authorization.read_state(
            statement, authorization.portal_key(self.settings.portal_key_file))
        project = self.grants.get(grant_id).project
        if said.project != project or said.status != authorization.STATE_AFTER[action]:
            raise InputError(f"the portal's statement says {said.project} is {said.status}; "
                             f"this is to {action} {project}")

    def tell_keys(self) -> list[str]:
        """Relay the portal's statements the key service has not taken yet; the ids of
        those left (``statements.relay``)."""
        return statements.relay(self.db, self.federation.tell_keys)

    def grant_statements(self) -> list[dict]:
        return statements.listed(self.db)

    # -- consent -----------------------------------------------------------------------------
    def withdraw(self, actor: str, request: Withdrawal) -> dict:
        # Takes effect at once: every question reads the withdrawal set as it stands.
        new = self._record(actor, [request])
        # Sites hold their own rows: they are told now, and say if they could not be.
        purposes = request.withdrawn()
        missed = self.deliveries.bring_up_to_date(self.federation.sites(),
                                                  self.federation.tell_withdrawals)
        return {"pseudonym": request.pseudonym, "purposes": purposes,
                "recorded": [purpose for _, purpose in new], "datasets": sorted(self.datasets),
                "containing": self.containing(request.pseudonym, strict=False),
                "sites_missed": missed, "version": self.withdrawals.current().version}

    def withdraw_many(self, actor: str, requests: list[Withdrawal]) -> dict:
        """Withdrawals in bulk: recorded in one transaction, applied to the next question,
        forwarded to every site in one message each; how many patients each served
        dataset holds among them."""
        new = self._record(actor, requests)
        missed = self.deliveries.bring_up_to_date(self.federation.sites(),
                                                  self.federation.tell_withdrawals)
        pseudonyms = sorted({r.pseudonym for r in requests})
        return {"withdrawals": len(requests), "recorded": len(new),
                "holding": {d.id: view.holding(d, pseudonyms) for d in self.datasets.values()},
                "sites_missed": missed, "version": self.withdrawals.current().version}

    def _record(self, actor: str, requests: list[Withdrawal]) -> list[tuple[str, str]]:
        """Record withdrawals in the database, in the gateway's own copy, and as pairs the
        table must hold from now on (a row the database does not keep stops the answers)."""
        new = consent.record(self.db, actor, requests)
        pairs = [(r.pseudonym, p) for r in requests for p in r.withdrawn()]
        self.consent_copy.add(pairs)
        self.withdrawals.expect(pairs)
        return new

    def containing(self, pseudonym: str, strict: bool = True) -> list[dict]:
        """The datasets (id and version) holding records of this patient, federated ones
        included (their sites are asked; ``strict``: a site that cannot answer fails the
        call rather than leave a report incomplete)."""
        return [{"id": d.id, "version": d.version} for d in self.datasets.values()
                if view.contains(d, pseudonym)] + self.federation.holding(pseudonym, strict)

    # -- exports and the audit log -----------------------------------------------------------
    def submit_export(self, grant: Grant, request: ExportIn, actor: str | None = None) -> dict:
        return exports.submit(self.db, grant, request, actor)

    def exports_after(self, after: str) -> list[dict]:
        return exports.after(self.db, after)

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

    # -- the project's side ------------------------------------------------------------------
    def catalog(self, grant: Grant) -> list[dict]:
        grant.check_usable()
        out = []
        for name in grant.datasets:
            federated = name in self.federation.datasets
            meta = (self.federation.datasets[name] if federated else self.datasets[name]
                    ).metadata
            fields = [f for f in meta["tables"]["records"]["fields"]
                      if f["name"] in grant.fields]
            # an event table's fields, granted and named as `table.field` (cohorts)
            fields += [f | {"name": qualified(table, f["name"])}
                       for table, t in meta["tables"].items() if table != RECORDS
                       for f in t.get("fields", [])
                       if qualified(table, f["name"]) in grant.fields]
            out.append({"id": meta["id"], "version": meta["version"], "title": meta["title"],
                        "unit": meta["unit"], "sample_size": meta["sample_size"],
                        "years": meta["years"], "contribution_bound": meta["contribution_bound"],
                        "fields": fields, "federated": federated,
                        "sites": len(meta.get("sites", [])) if federated else 0})
        return out

    def budget(self, grant: Grant) -> dict:
        return grant.budget()

    def releases(self, grant: Grant) -> list[dict]:
        return self.ledger.releases(grant)

    def query(self, grant: Grant, spec: QuerySpec) -> dict:
        return self.ledger.answer(grant, CentralQuestion(
            grant, spec, self.datasets, self.federation, self.engine, self.withdrawals))

    def preview(self, grant: Grant, spec: QuerySpec) -> dict:
        try:
            dataset = central_dataset(grant, spec, self.datasets, self.federation, self.engine)
            answer = {"statistics": self.engine.preview(spec, dataset, grant.purpose, ALPHA)}
        except SandboxError as exc:
            self.ledger.refused(grant, spec, exc)
            raise
        return self._previewed(grant, spec, answer)

    def cohort_query(self, grant: Grant, spec: CohortQuery) -> dict:
        return self.ledger.answer(grant, cohorts.CohortQuestion(
            grant, spec, self.datasets, self.federation, self.engine, self.withdrawals))

    def cohort_preview(self, grant: Grant, spec: CohortQuery) -> dict:
        try:
            dataset = served_dataset(grant, spec.dataset, self.datasets, self.federation)
            answer = {"statistics": cohorts.preview(spec, dataset, grant, self.engine, ALPHA)}
        except SandboxError as exc:
            self.ledger.refused(grant, spec, exc)
            raise
        return self._previewed(grant, spec, answer)

    def federated_query(self, grant: Grant, spec: FederatedSpec) -> dict:
        return self.ledger.answer(grant, FederatedQuestion(
            grant, self._federated_spelling(spec), self.federation, self.grants, self.db,
            self.deliveries, self.withdrawals))

    def federated_preview(self, grant: Grant, spec: FederatedSpec) -> dict:
        spec = self._federated_spelling(spec)
        try:
            plan = federated_plan(grant, spec, self.federation)
            answer = {"statistics": accuracy(plan), "min_count": plan.min_count}
        except SandboxError as exc:
            self.ledger.refused(grant, spec, exc)
            raise
        return self._previewed(grant, spec, answer)

    def _federated_spelling(self, spec: FederatedSpec) -> FederatedSpec:
        """One question, one spelling: its public default bounds written in (filters are
        already in one order), so a question asked another way is charged and answered as
        the same question (an unknown dataset is refused later, where it is audited)."""
        known = spec.dataset in self.federation.datasets
        return self.federation.resolve(spec) if known else spec

    def _previewed(self, grant: Grant, spec: QuerySpec | FederatedSpec | CohortQuery,
                   answer: dict) -> dict:
        """Accuracy of a query, audited; spends nothing (a refusal is audited too)."""
        with self.db.begin() as conn:
            audit.append(conn, audit.AuditAction.QUERY_PREVIEWED, f"grant:{grant.id}",
                         f"dataset:{spec.dataset}", {"spec": json.loads(spec.canonical())})
        return {"epsilon": spec.epsilon, "delta": spec.delta, "alpha": ALPHA, "spends": 0,
                **answer}
