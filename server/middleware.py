"""Request context (id, one log line per request), paths without control characters and the request-body size
limit, as pure ASGI."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asgi_util import CHECKED_SCOPES, header, refuse, send_json

log = logging.getLogger("viewneti.server.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029]")


def log_safe(text: object) -> str:
    """Untrusted text for a log line: control characters (a decoded ``%0A`` in a path, ESC, ...) and the
    backslash are escaped (``\\n``, ``\\x1b``, ``\\\\``), so that one request is always one unambiguous line."""
    s = str(text)
    return _UNPRINTABLE.sub(_escape_char, s)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    )


class RequestContextMiddleware:
    """Assigns the request id (echoing a well-formed ``X-Request-Id``), adds it to every response and
    logs one line per request: method, path, status, request id, duration and any timings the
    handler recorded in ``request.state.timings``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        rid = None
        if given is not None:
            try:
                text = given.decode("ascii")
                rid = text if _SAFE_ID.match(text) else None
            except UnicodeDecodeError:
                rid = None
        rid = rid or new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["t_arrival"] = time.perf_counter()
        status_holder = {"status": 0}
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - t0) * 1000.0
            timings = state.get("timings")
            extra = f" timings={json.dumps(timings, separators=(',', ':'))}" if timings else ""
            status = status_holder["status"] or "-"
            method, path = log_safe(scope.get("method")), log_safe(scope.get("path"))
            log.info("%s %s %s rid=%s %.1fms%s", method, path, status, rid, ms, extra)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PathCharactersMiddleware:
    """404 for a request path with a control character (a decoded ``%0A``, ``%00``, ...): no route of the API
    has one, and Starlette's route patterns end in ``$``, which also matches before a final newline, so
    ``DELETE /v1/objects/mug%0A`` would otherwise reach the route of ``mug`` (and ``/v1/health%0A`` health)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in CHECKED_SCOPES and _CONTROL.search(scope.get("path", "")):
            message = (
                f"no such path {log_safe(scope['path'])!r}: it contains a control character (a decoded %0A, %00, "
                "...), which no route of this API has; object names are letters, digits, '_' and '-'"
            )
            await refuse(scope, send, 404, {"error": message})
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from ``Content-Length``, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        mb = self.max_bytes / (1024 * 1024)
        return (
            f"request body too large: the limit is {mb:g} MB (server option --max-body-mb); "
            "send fewer or smaller images"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cl = header(scope, b"content-length")
        if cl is not None:
            try:
                length = int(cl)
            except ValueError:
                await send_json(send, 400, {"error": "invalid Content-Length header"})
                return
            if length > self.max_bytes:
                await send_json(send, 413, {"error": self._message()}, [(b"connection", b"close")])
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the handler turns it into JSON.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)
