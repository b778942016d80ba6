"""Connection limits uvicorn does not have: a deadline for reading a request, and a connection cap
that sheds idle sockets instead of answering 503 to everyone.

uvicorn's ``timeout_keep_alive`` only closes a connection that stays silent *after* a response; a
client that opens a socket and sends nothing (or trickles a header byte now and then) holds it
forever, and ``limit_concurrency`` counts those idle sockets too, so a flood of them makes uvicorn
refuse the real requests (health included) with 503, until the process runs out of file descriptors.

:class:`GuardedH11Protocol` (uvicorn's h11 protocol plus two rules) closes a connection whose
request head is not complete within ``header_timeout_s`` of it opening (or of the previous response),
or whose body is not complete within ``body_timeout_s`` of its head; and when more than
``max_connections`` are open, it closes the ones that have no request in progress, oldest first (a
new connection that cannot make room is closed at once). A request being served or a response
being streamed (SSE) is never cut by either rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import ServerConfig

log = logging.getLogger("viewneti.server")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float  # request line + headers
    body_timeout_s: float  # the body after the headers
    max_connections: int  # open sockets; idle ones are shed first

    @classmethod
    def of(cls, config: ServerConfig) -> ConnectionLimits:
        return cls(config.header_timeout_s, config.body_timeout_s, config.max_connections)


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedH11Protocol(H11Protocol):
    limits = ConnectionLimits.of(ServerConfig())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading = "head"  # head | body | none
        self._opened = time.monotonic()

    # -- deadlines ---------------------------------------------------------------------------------
    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._reading = what
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing() or self._reading != what:
            return
        log.info("closing a connection from %s: its request %s did not arrive in time", self.client, what)
        self.transport.close()

    def _idle(self) -> bool:
        """No request of this connection is being served or streamed."""
        return self.cycle is None or self.cycle.response_complete

    # -- uvicorn hooks ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.limits.header_timeout_s)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            idle = sorted(
                (c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()),
                key=lambda c: c._opened,
            )
            for c in idle[: len(self.connections) - cap]:
                c.transport.close()
                self.connections.discard(c)
            if len(self.connections) > cap:
                log.warning("refusing a connection: %d are open and busy (cap %d)", len(self.connections) - 1, cap)
                transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._reading == "head":
            self._arm("body", self.limits.body_timeout_s)
        elif state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) and self._reading != "none":
            self._reading = "none"
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport is not None and not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm("head", self.limits.header_timeout_s)  # the next request of a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._reading = "none"
        super().connection_lost(exc)
