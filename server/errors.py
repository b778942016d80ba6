"""Every error leaves the server as JSON ``{"error": "<what is wrong and how to fix it>"}``.

Library exceptions map to statuses here (InputError/CameraError -> 400, NotFoundError -> 404, ...);
request validation errors become 422 with the offending fields named; anything unexpected is a 500
that names the request id and is logged with its traceback (never sent to the client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from viewneti_backend.errors import Cancelled, IncompatibleModelError, InputError, NotFoundError

from .middleware import log_safe

log = logging.getLogger("viewneti.server")


class ApiError(Exception):
    """An error with an HTTP status and a message for the client; extra keys go into the JSON body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class Superseded(ApiError):
    def __init__(self, session: str) -> None:
        super().__init__(
            409,
            f"superseded by a newer request from session {session!r}: only the latest pose of a session is rendered",
            superseded=True,
        )


class NotReady(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, message)


class ShuttingDown(ApiError):
    def __init__(self) -> None:
        super().__init__(503, "the server is shutting down; retry when it is back")


_GENERIC = {
    400: "bad request",
    401: "missing or wrong access token",
    403: "forbidden",
    404: "not found: check the URL against /docs",
    405: "method not allowed: check the method against /docs",
    406: "not acceptable",
    413: "request body too large",
    415: "unsupported media type: send JSON with 'Content-Type: application/json'",
}


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, **extra}


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def _format_loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def format_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    details = []
    for e in errors[:20]:
        loc = _format_loc(e.get("loc", ()))
        msg = str(e.get("msg", "invalid value"))
        if e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
        elif e.get("type") == "missing":
            msg = "this field is required"
        details.append({"field": loc, "message": msg})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    if len(errors) > 5:
        summary += f"; and {len(errors) - 5} more"
    return f"invalid request: {summary}. See /docs for the request schema.", details


def install_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, **exc.extra), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = format_validation_errors(list(exc.errors()))
        return JSONResponse(error_body(message, details=details), status_code=422)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(error_body(str(exc) or "not found"), status_code=404)

    @app.exception_handler(IncompatibleModelError)
    async def _incompatible(request: Request, exc: IncompatibleModelError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=409)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(error_body(str(exc) or "bad input"), status_code=400)

    @app.exception_handler(Cancelled)
    async def _cancelled(request: Request, exc: Cancelled) -> JSONResponse:
        return JSONResponse(error_body(str(exc) or "the request was cancelled"), status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else None
        if detail is None or detail in ("Not Found", "Method Not Allowed"):
            detail = _GENERIC.get(exc.status_code, detail or "error")
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "could not read the request body: send JSON with 'Content-Type: application/json'"
        return JSONResponse(error_body(detail), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id(request)
        path = log_safe(request.url.path)
        log.error("internal error in %s %s (request %s)", log_safe(request.method), path, rid, exc_info=exc)
        return JSONResponse(
            error_body(f"internal server error (request id {rid}); the server log has the details"),
            status_code=500,
        )
