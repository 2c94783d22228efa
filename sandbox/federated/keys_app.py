"""The key service's HTTP interface (``sandboxctl keys serve``): the public context, the
decryption of the gateway's signed requests, the portal's grant state statements, and the
operator's audit routes. The decisions are ``keys.KeyService``'s."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Header
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from sandbox import anchors, httpapi
from sandbox.federated import ckks
from sandbox.federated.keys import AUDIENCE, DecryptIn, KeyService, KeySettings, log


class GrantStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statement: dict = Field(description="the portal's signed grant state statement")


def create_app(settings: KeySettings | None = None, service: KeyService | None = None
               ) -> FastAPI:
    service = service or KeyService(settings or KeySettings())
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

    @app.post("/v1/grant-states")
    def grant_state(body: GrantStateIn) -> dict:
        """The portal's signed statement that a project's grant was suspended, resumed or
        revoked: from then on the key service holds its authorizations to it."""
        return service.grant_state(body.statement)

    @app.get("/v1/admin/audit/verify")
    def verify(_actor: str = Depends(operator)) -> dict:
        return service.verify_audit()

    @app.get("/v1/admin/audit")
    def entries(_actor: str = Depends(operator), after_seq: int = 0,
                limit: int = 1000) -> dict:
        return {"entries": service.audit_entries(after_seq, min(max(limit, 1), 5000))}

    return app
