"""Bearer-token check: when the server has a token, every request must send ``Authorization: Bearer <token>``.

Every route needs it, ``/v1/health`` and ``/openapi.json`` included. ``--token auto`` makes a new random token per
launch and writes it to a file only this user can read (``<data-dir>/token``, mode 0600), so that other local users
cannot drive the GPU while the add-on (which reads the file) can.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi_util import header, needs_check, refuse


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # http requests and websocket handshakes need the token; lifespan passes; other scope types raise
        if not needs_check(scope) or self.token is None:
            await self.app(scope, receive, send)
            return
        value = header(scope, b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            msg = (
                (
                    "missing access token: send the header 'Authorization: Bearer <token>' with the token the "
                    "server was started with (--token / VIEWNETI_TOKEN; with --token auto it is in <data-dir>/token)"
                )
                if not value
                else (
                    "wrong access token: use the token the server was started with (--token / VIEWNETI_TOKEN; "
                    "--token auto makes a new one at each launch, in <data-dir>/token)"
                )
            )
            await refuse(scope, send, 401, {"error": msg}, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


AUTO_TOKEN = "auto"  # the --token / VIEWNETI_TOKEN value that asks for a per-launch token


def generate_token() -> str:
    """A fresh per-launch token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` atomically, readable by this user only (0600 from creation on, never wider)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_token_file(path: Path, token: str) -> None:
    """Delete the token file at shutdown, unless another server has written its own token there since."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="ascii").strip() == token:
            path.unlink()
