"""Server-Sent Events for jobs: a thread-safe hub (the worker thread publishes, the event loop
delivers) and the per-client stream, which replays the job's current state and then follows it live.

A client that disconnects only unsubscribes; the job itself never notices.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

TERMINAL_EVENTS = {"done", "error", "cancelled", "interrupted"}
KEEPALIVE_S = 15.0

Event = tuple[str, dict[str, Any]]


class EventHub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, set[asyncio.Queue[Event]]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, job_id: str) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        with self._lock:
            self._subs.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue[Event]) -> None:
        with self._lock:
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self._subs[job_id]

    def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Deliver an event to every subscriber of the job; callable from any thread."""
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        loop = self._loop
        if not subs or loop is None:
            return
        for q in subs:
            try:
                loop.call_soon_threadsafe(q.put_nowait, (event, data))
            except RuntimeError:  # loop closed: the server is going away
                return

    def subscriber_count(self, job_id: str) -> int:
        with self._lock:
            return len(self._subs.get(job_id, ()))


def format_sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Dedup:
    """Drops events the client has already seen (the replayed snapshot overlaps the live queue)."""

    def __init__(self) -> None:
        self.last_step = -1
        self.last_phase = None
        self.last_preview = -1
        self.frames: set[int | None] = set()  # a frame event without an index is recorded once, as None
        self.finished = False

    def accept(self, event: str, data: dict[str, Any]) -> bool:
        if self.finished:
            return False
        if event == "progress":
            step, phase = int(data.get("step", 0)), data.get("phase")
            # a new phase at the same step is news too (an inversion's step 0: queued, then "compiling")
            if step < self.last_step or (step == self.last_step and (phase is None or phase == self.last_phase)):
                return False
            self.last_step, self.last_phase = step, phase
        elif event == "preview":
            step = int(data.get("step", 0))
            if step <= self.last_preview:
                return False
            self.last_preview = step
        elif event == "frame":
            if data.get("index") in self.frames:
                return False
            self.frames.add(data.get("index"))
        elif event in TERMINAL_EVENTS:
            self.finished = True
        return True


async def job_event_stream(
    job_id: str, hub: EventHub, snapshot: Callable[[], list[Event]], keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[str]:
    """Subscribe first, then replay ``snapshot()``, then follow live events until a terminal one."""
    q = hub.subscribe(job_id)
    seen = _Dedup()
    try:
        for event, data in snapshot():
            if seen.accept(event, data):
                yield format_sse(event, data)
        while not seen.finished:
            try:
                event, data = await asyncio.wait_for(q.get(), timeout=keepalive_s)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if seen.accept(event, data):
                yield format_sse(event, data)
    finally:
        hub.unsubscribe(job_id, q)
