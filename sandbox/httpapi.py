"""What every HTTP service of the project shares (FastAPI): domain errors as
``{"error": code, "reason": …}`` with their 4xx status, readable validation errors, no
stack trace to any caller, and the caller's address on the audit entries a request
writes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def install(app: FastAPI, log: logging.Logger, limit_for: Callable[[str], int],
            unexpected: str = "internal error; nothing was changed") -> None:
    """Body limits (``limit_for(path)`` bytes), audit origin, error handlers."""

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        allowed = limit_for(request.url.path)
        if length is not None and (not length.isdigit() or int(length) > allowed):
            return error(413, "too_large", f"request body over {allowed} bytes")
        # Audit entries written for this request record where it came from.
        origin = audit.ORIGIN.set(request.client.host if request.client else None)
        try:
            return await call_next(request)
        finally:
            audit.ORIGIN.reset(origin)

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
