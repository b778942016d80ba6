"""Bearer-token check: when the server has a token, every request must send ``Authorization: Bearer <token>``."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi_util import header, send_json


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = header(scope, b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            msg = (
                (
                    "missing access token: send the header 'Authorization: Bearer <token>' with the token the "
                    "server was started with (--token / VIEWNETI_TOKEN)"
                )
                if not value
                else "wrong access token: use the token the server was started with (--token / VIEWNETI_TOKEN)"
            )
            await send_json(send, 401, {"error": msg}, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)
