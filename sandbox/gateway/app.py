"""HTTP adapter of the gateway (FastAPI). Routes only authenticate, parse and call the
service; every domain error becomes ``{"error": code, "reason": …}`` with its 4xx status,
and nothing else a caller sees carries a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from sandbox import anchors, audit, httpapi
from sandbox.cohorts.spec import CohortQuery
from sandbox.errors import InputError
from sandbox.federated.spec import FederatedSpec
from sandbox.gateway.consent import PSEUDONYM, Withdrawal, Withdrawals
from sandbox.gateway.exports import ExportIn
from sandbox.gateway.grants import Grant, GrantRequest
from sandbox.gateway.service import GatewayService
from sandbox.gateway.settings import GatewaySettings
from sandbox.queries.spec import QuerySpec

log = logging.getLogger("sandbox.gateway")


class NetworkBinding(BaseModel):
    networks: list[str] = Field(min_length=1, max_length=16,
                                description="CIDRs the project's token may be used from")


class GrantChange(BaseModel):
    reason: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")
    statement: dict | None = Field(None, description="the portal's signed statement of "
                                   "the change, relayed to the key service")


async def _bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    # (async: pure work, so it runs on the event loop rather than in a worker thread)
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _admin(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> str:
    return request.app.state.service.check_admin(token)


def _project(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> Grant:
    client = request.client.host if request.client else None
    return request.app.state.service.grant_for_token(token, client)


Admin = Annotated[str, Depends(_admin)]
Project = Annotated[Grant, Depends(_project)]


def _query(request: Request, token: str | None, body: bytes, json_body: bool) -> dict:
    grant = _project(request, token)
    if not json_body:  # as FastAPI's own parameters: a question is a JSON body
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "input": None,
                                       "msg": "a JSON body (application/json) is required"}])
    try:
        if body[:3] == b"\xef\xbb\xbf" or b"\x00" in body[:4]:  # UTF-8 with a BOM, UTF-16/32
            body = _as_utf8(body)
        spec = QuerySpec.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return request.app.state.service.query(grant, spec)


def _as_utf8(body: bytes) -> bytes:
    """JSON in another of the encodings ``json.loads`` detects, as UTF-8 (as FastAPI reads)."""
    try:
        return json.dumps(json.loads(body), ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "input": None,
                                       "msg": "the body is not JSON"}]) from None


# /v1/query's contract as FastAPI would document it from parameters (see the route)
_QUERY_REQUEST = {
    "parameters": [{"name": "authorization", "in": "header", "required": False, "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}], "title": "Authorization"}}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/QuerySpec"}}}},
}
_QUERY_RESPONSES: dict = {
    200: {"content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": True,
        "title": "Response Query V1 Query Post"}}}},
    422: {"description": "Validation Error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/HTTPValidationError"}}}},
}


def create_app(settings: GatewaySettings | None = None,
               service: GatewayService | None = None) -> FastAPI:
    """The gateway application for ``settings`` (or an already built service)."""
    service = service or GatewayService(settings or GatewaySettings())
    limit = service.settings.max_body_bytes
    export_limit = service.settings.max_export_bytes
    app = FastAPI(title="Sandbox privacy gateway", version="1",
                  description="Differentially private answers over restricted datasets; "
                              "every answer is charged before its noise is drawn, and receipted.")
    app.state.service = service

    # Export requests carry files (the sandbox's own, or the portal's for a project).
    httpapi.install(app, log, lambda path: export_limit
                    if path.endswith(("/exports", "/batch")) else limit,
                    "internal error; no answer was released, and a charge already made "
                    "stands (sending the identical query again costs nothing)")

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "datasets": sorted(service.datasets)}

    app.state.audit_round = anchors.install_gateway(
        app, service.anchors, lambda: {name: url for d in service.federation.datasets.values()
                                       for name, url in d.sites.items()},
        lambda: service.federation.keys_url, _admin)

    @app.get("/v1/public-key", response_class=PlainTextResponse)
    def public_key() -> str:
        return service.signer.public_pem.decode()

    @app.post("/v1/admin/grants", status_code=201)
    def create_grant(request: GrantRequest, actor: Admin) -> dict:
        grant, token = service.create_grant(actor, request)
        return {"grant": grant, "token": token}

    @app.get("/v1/admin/grants/{grant_id}")
    def get_grant(grant_id: str, _actor: Admin) -> dict:
        return service.grant(grant_id)

    @app.put("/v1/admin/grants/{grant_id}/networks")
    def bind_networks(grant_id: str, binding: NetworkBinding, actor: Admin) -> dict:
        """Accept the project's token only from these networks (its sandbox's)."""
        return service.bind_networks(actor, grant_id, binding.networks)

    @app.post("/v1/admin/grants/{grant_id}/exports", status_code=201)
    def submit_export_for(grant_id: str, request: ExportIn, actor: Admin) -> dict:
        """An export request the portal makes for a project (files it read from the
        project's sandbox when the researcher asked): recorded like the sandbox's own."""
        return service.submit_export(service.grants.get(grant_id), request, actor)

    @app.get("/v1/admin/grants/{grant_id}/releases")
    def grant_releases(grant_id: str, _actor: Admin) -> list[dict]:
        """The project's releases with their receipts (for export requests and review)."""
        return service.releases(service.grants.get(grant_id))

    @app.get("/v1/admin/grant-statements")
    def grant_statements(_actor: Admin) -> list[dict]:
        """The portal's grant state statements relayed to the key service, and when it
        took each (``told_at`` null: not yet; retried every few seconds)."""
        return service.grant_statements()

    @app.post("/v1/admin/grants/{grant_id}/{action}")
    def change_grant(grant_id: str, action: Literal["suspend", "resume", "revoke"],
                     change: GrantChange, actor: Admin) -> dict:
        return service.change_grant(actor, grant_id, action, change.reason, change.statement)

    @app.post("/v1/admin/consent-withdrawals", status_code=201)
    def withdraw(request: Withdrawal, actor: Admin) -> dict:
        return service.withdraw(actor, request)

    @app.post("/v1/admin/consent-withdrawals/batch", status_code=201)
    def withdraw_many(request: Withdrawals, actor: Admin) -> dict:
        """Many withdrawals in one call (bulk intake), applied to the next question."""
        return service.withdraw_many(actor, request.withdrawals)

    @app.get("/v1/admin/patients/{pseudonym}/datasets")
    def patient_datasets(pseudonym: str, _actor: Admin) -> dict:
        """The datasets holding records of this patient (for transparency reports)."""
        if not PSEUDONYM.fullmatch(pseudonym):
            raise InputError("a pseudonym is 64 hexadecimal characters")
        return {"pseudonym": pseudonym, "containing": service.containing(pseudonym)}

    @app.get("/v1/admin/audit")
    def audit_entries(_actor: Admin, since: str = "", after_seq: int = 0,
                      limit: int = 1000) -> dict:
        """The gateway's audit entries (oldest first), for controllers' review and the
        anomaly rules; ``since`` is an ISO time, ``after_seq`` pages on."""
        return {"entries": service.audit_entries(
            audit.given_time(since, "since") if since else "",
            anchors.entry_number(after_seq, "after_seq"), min(max(limit, 1), 5000))}

    @app.get("/v1/admin/audit/verify")
    def audit_verify(_actor: Admin) -> dict:
        """Walk the gateway's audit chain and report the first break, if any."""
        return service.verify_audit()

    @app.get("/v1/datasets")
    def datasets(grant: Project) -> list[dict]:
        return service.catalog(grant)

    @app.get("/v1/budget")
    def budget(grant: Project) -> dict:
        return service.budget(grant)

    @app.post("/v1/query", openapi_extra=_QUERY_REQUEST, responses=_QUERY_RESPONSES)
    async def query(request: Request) -> JSONResponse:
        # The path every question takes, in one worker thread: the token checked first (as
        # on every route), then the body parsed by pydantic from its bytes, then answered.
        # (FastAPI's parameters would take a second worker thread: 0.1–0.9 ms more per
        # question at 10M rows, measured; the documented contract is the same.)
        body = await request.body()
        token = await _bearer(request.headers.get("authorization"))
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        json_body = kind in ("", "application/json") or kind.endswith("+json")
        return JSONResponse(await run_in_threadpool(_query, request, token, body, json_body))

    @app.post("/v1/preview")
    def preview(spec: QuerySpec, grant: Project) -> dict:
        return service.preview(grant, spec)

    @app.post("/v1/cohort/query")
    def cohort_query(spec: CohortQuery, grant: Project) -> dict:
        """A statistic of a cohort: the cohort's patients one row each (built from the
        records and event tables), counted, summed, averaged or binned by OpenDP."""
        return service.cohort_query(grant, spec)

    @app.post("/v1/cohort/preview")
    def cohort_preview(spec: CohortQuery, grant: Project) -> dict:
        """Noise scale and 95 % error bound of a cohort statistic; spends nothing."""
        return service.cohort_preview(grant, spec)

    @app.post("/v1/federated/query")
    def federated_query(spec: FederatedSpec, grant: Project) -> dict:
        """A histogram, mean or linear regression over a federated dataset: the sites
        compute under encryption; only the noisy total is decrypted (by the key service)."""
        return service.federated_query(grant, spec)

    @app.post("/v1/federated/preview")
    def federated_preview(spec: FederatedSpec, grant: Project) -> dict:
        """Noise scale, 95 % noise bound and CKKS error bound of each slot; spends nothing."""
        return service.federated_preview(grant, spec)

    @app.post("/v1/exports", status_code=201)
    def submit_export(request: ExportIn, grant: Project) -> dict:
        """Ask to take files out: recorded for the portal's checks and review."""
        return service.submit_export(grant, request)

    @app.get("/v1/admin/exports")
    def list_exports(_actor: Admin, after: str = "") -> dict:
        """Export requests recorded after ``after`` (creation time), with their files."""
        return {"exports": service.exports_after(audit.given_time(after, "after")
                                                 if after else "")}

    @app.get("/v1/releases")
    def list_releases(grant: Project) -> list[dict]:
        return service.releases(grant)

    return app
