"""Refuse requests that a web page could make: foreign ``Host`` (DNS rebinding), foreign ``Origin``, cross-site fetches.

A server on 127.0.0.1 is reachable from every page the user's browser opens. Two ways in, both closed here:

- **DNS rebinding**: a page on ``evil.example`` re-resolves its own name to 127.0.0.1 and is then same-origin
  with this server. Its requests carry ``Host: evil.example:7860``, so only our own names are accepted
  (localhost, 127.0.0.1, [::1], the bind address, plus ``--allowed-host`` names), on the server's port. A Host
  without a port means port 80 (RFC 9110), so a loopback name without a port only matches a server on port 80.
- **Cross-site requests** (CSRF, ``fetch(..., {mode: "no-cors"})``, forms, a sandboxed ``Origin: null``): any
  ``Origin`` that is not ``http(s)://<allowed host>`` and any ``Sec-Fetch-Site: cross-site`` get 403, whatever the
  method and body (e.g. a bodiless POST to ``/v1/jobs/{id}/cancel``).

No CORS headers are ever sent, so no other origin can read a response either. Pure ASGI: it answers before
FastAPI parses anything. Websocket handshakes get the same checks (a page can open a websocket to any
origin); any other scope type but lifespan is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi_util import header, needs_check, refuse

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ALLOWED_HOSTS_ENV = "VIEWNETI_ALLOWED_HOSTS"
_DEFAULT_PORT = 80  # what a Host header without a port means for http
_WILDCARD_BINDS = {"0.0.0.0", "::", "[::]", ""}


def normalize_host_name(name: str) -> str:
    """Lower-case; IPv6 literals in brackets (``::1`` -> ``[::1]``). Raises ValueError for what a Host cannot be."""
    n = name.strip().lower()
    if not n:
        raise ValueError("an empty host name")
    bare = n[1:-1] if n.startswith("[") and n.endswith("]") else n
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        if any(c in n for c in "/@?#[]: \t") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in n):
            raise ValueError(f"{name!r} is not a host name (use e.g. myhost.lan or 192.168.1.5)") from None
        return n
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def parse_allowed_host(entry: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:PORT`` (``[v6]:PORT``) as given to ``--allowed-host``; the port is optional."""
    e = entry.strip()
    name, port = e, None
    if e.startswith("["):
        close = e.find("]")
        if close > 0 and e[close + 1 :].startswith(":"):
            name, port = e[: close + 1], e[close + 2 :]
    elif e.count(":") == 1:
        name, port = e.split(":")
    p: int | None = None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--allowed-host {entry!r}: the port must be a number from 1 to 65535")
        p = int(port)
    try:
        return normalize_host_name(name), p
    except ValueError as exc:
        raise ValueError(f"--allowed-host {entry!r}: {exc}") from None


def split_host_header(value: str) -> tuple[str, int]:
    """``Host`` header -> (normalised name, port); raises ValueError for a malformed one."""
    v = value.strip()
    if v.startswith("["):
        close = v.find("]")
        if close < 0:
            raise ValueError("unclosed '['")
        name, rest = v[: close + 1], v[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ']'")
        port = rest[1:] if rest else ""
    else:
        name, _, port = v.partition(":")
    if port == "" and v.endswith(":"):
        raise ValueError("empty port")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError("bad port")
    return normalize_host_name(name), int(port) if port else _DEFAULT_PORT


class HostOriginMiddleware:
    """421 JSON for a foreign, malformed or missing Host; 403 for a foreign Origin and for
    ``Sec-Fetch-Site: cross-site`` (see the module doc).

    ``bind_host`` is the address the server listens on (a specific address is one of its own names);
    ``extra_hosts`` are ``--allowed-host`` entries. The port a request must name is the one its connection
    arrived on (``scope["server"]``), so ``--port 0`` works too.
    """

    def __init__(self, app: ASGIApp, bind_host: str = "127.0.0.1", extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        names: set[str] = set(LOOPBACK_NAMES)
        if bind_host.strip().lower() not in _WILDCARD_BINDS:
            names.add(normalize_host_name(bind_host))
        self.any_port: set[str] = set()  # names allowed on the server's port, or without a port
        self.fixed: set[tuple[str, int]] = set()  # NAME:PORT entries
        for entry in extra_hosts:
            name, port = parse_allowed_host(entry)
            if port is None:
                self.any_port.add(name)
            else:
                self.fixed.add((name, port))
        self.own_names = names

    def host_allowed(self, name: str, port: int, server_port: int | None) -> bool:
        if (name, port) in self.fixed:
            return True
        if name in self.any_port:  # without a port: through a reverse proxy, or a server on 80/443
            return port in (server_port, 80, 443)
        return name in self.own_names and port == server_port

    def _server_port(self, scope: Scope) -> int | None:
        server = scope.get("server")
        return int(server[1]) if server and server[1] is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not needs_check(scope):  # lifespan; an unknown scope type raises (fail closed)
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)  # http requests and websocket handshakes alike
        if refusal is not None:
            status, message = refusal
            await refuse(scope, send, status, {"error": message})
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) for a request to refuse, None for one to serve."""
        server_port = self._server_port(scope)
        raw = header(scope, b"host")
        if raw is None or not raw.strip():
            return 421, (
                "missing Host header: send 'Host: 127.0.0.1:PORT' (HTTP/1.1 clients do this themselves); "
                "requests without a Host are refused to prevent DNS rebinding"
            )
        text = raw.decode("latin-1")
        try:
            name, port = split_host_header(text)
        except ValueError:
            return 421, f"malformed Host header {_show(text)}: send 'Host: 127.0.0.1:PORT'"
        if not self.host_allowed(name, port, server_port):
            return 421, (
                f"Host {_show(text)} is not a name of this server, so the request is refused (it could come from a "
                f"web page using DNS rebinding). Use http://127.0.0.1:{server_port}/ or http://localhost:"
                f"{server_port}/, or, if {_show(name)} is really this machine's name, start the server with "
                f"--allowed-host {name} (or set {ALLOWED_HOSTS_ENV})"
            )
        origin = header(scope, b"origin")
        if origin is not None:
            o = _ascii(origin)
            if o is None or not self.origin_allowed(o.strip(), server_port):
                shown = _show(o) if o is not None else "(not ASCII)"
                return 403, (
                    f"cross-origin request refused: Origin {shown} is not this server. Web pages may not "
                    "drive the ViewNeTI server; use the Blender add-on, curl or a script (they send no Origin), "
                    "or open the page from this server itself"
                )
        site = header(scope, b"sec-fetch-site")
        if site is not None and site.strip().lower() == b"cross-site":
            return 403, (
                "cross-site request refused (Sec-Fetch-Site: cross-site): web pages on other sites may not drive "
                "the ViewNeTI server; open it directly (type its address) or use the add-on, curl or a script"
            )
        return None

    def origin_allowed(self, origin: str, server_port: int | None) -> bool:
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or "/" in rest:
            return False  # includes "null" (sandboxed frames, file://, redirects)
        try:
            name, port = split_host_header(rest)
        except ValueError:
            return False
        if ":" not in rest.rsplit("]", 1)[-1] and scheme.lower() == "https":
            port = 443
        return self.host_allowed(name, port, server_port)


def _ascii(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _show(text: str, limit: int = 100) -> str:
    """Quote untrusted header text for a message (repr escapes control characters; long values are cut)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
