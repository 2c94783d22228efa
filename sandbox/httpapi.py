"""What every HTTP service of the project shares (FastAPI): a body limit enforced while the
body streams in, domain errors as ``{"error": code, "reason": …}`` with their 4xx status,
readable validation errors, no stack trace to any caller, and the caller's address on the
audit entries a request writes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox import audit
from sandbox.errors import SandboxError


def error(status: int, code: str, reason: str, **details: object) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason, **details}, status_code=status)


def readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"] if x not in ("body",))
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "malformed request"


class BodyLimit:
    """Refuses a request body over its limit while it streams in, before any route reads,
    parses or authenticates it (an unauthenticated caller must not make a service hold
    more than the limit). A declared ``Content-Length`` over the limit is refused before a
    byte of body is read; a chunked body (or one longer than declared) is counted as it
    arrives and answered 413 the moment it crosses the limit. The connection is then
    closed, so the rest is never read, and the route sees a disconnect.

    It also records the caller's address (the TCP peer, or what a trusted proxy reported:
    see serving.py) for the audit entries the request writes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = self.limit_for(scope["path"])
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if any(not v.isdigit() or int(v) > allowed for v in declared):
            await _too_large(send, allowed)
            return
        received, refused, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, refused, started
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    refused = True
                    if not started:
                        started = True
                        await _too_large(send, allowed)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 was the answer; what the route says after it is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        origin = audit.ORIGIN.set(scope["client"][0] if scope.get("client") else None)
        try:
            await self.app(scope, counted, guarded)
        finally:
            audit.ORIGIN.reset(origin)


async def _too_large(send: Send, allowed: int) -> None:
    body = json.dumps({"error": "too_large",
                       "reason": f"request body over {allowed} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, log: logging.Logger, limit_for: Callable[[str], int],
            unexpected: str = "internal error; nothing was changed") -> None:
    """Body limits (``limit_for(path)`` bytes), audit origin, error handlers."""
    app.add_middleware(BodyLimit, limit_for=limit_for)

    @app.exception_handler(SandboxError)
    async def _domain(_request: Request, exc: SandboxError) -> JSONResponse:
        return error(exc.http_status, exc.code, exc.reason, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_input", readable(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error(500, "internal", unexpected)
