"""Tiny helpers for the pure-ASGI middlewares (which must answer before FastAPI sees a request)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import Scope, Send

# The scope types a security check applies to. "lifespan" (startup/shutdown, no peer) passes; any other
# type is refused (fail closed): a new protocol must be added here, checked, before it can reach the app.
CHECKED_SCOPES = ("http", "websocket")
WEBSOCKET_DENIAL = "websocket.http.response"  # the ASGI extension that lets a refused handshake carry a body
_MAX_CLOSE_REASON = 123  # bytes: RFC 6455's limit for a close frame's reason


def _json_response(body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None) -> tuple[bytes, list]:
    payload = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    return payload, hdrs + (headers or [])


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload, hdrs = _json_response(body, headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": payload})


def needs_check(scope: Scope) -> bool:
    """True for a request to check (http, websocket), False for lifespan; raises for any other scope type."""
    if scope["type"] in CHECKED_SCOPES:
        return True
    if scope["type"] == "lifespan":
        return False
    raise RuntimeError(f"refusing an ASGI {scope['type']!r} scope: only http and websocket requests are checked")


async def refuse(
    scope: Scope, send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer a refused request: a JSON error for http; for a websocket handshake the same JSON response
    where the server supports it, else a close before accepting (which servers send as HTTP 403)."""
    if scope["type"] == "http":
        await send_json(send, status, body, headers)
    elif WEBSOCKET_DENIAL in (scope.get("extensions") or {}):
        payload, hdrs = _json_response(body, headers)
        await send({"type": "websocket.http.response.start", "status": status, "headers": hdrs})
        await send({"type": "websocket.http.response.body", "body": payload})
    else:
        reason = str(body.get("error", "")).encode()[:_MAX_CLOSE_REASON].decode(errors="ignore")
        await send({"type": "websocket.close", "code": 1008, "reason": reason})  # 1008: policy violation


def header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None
