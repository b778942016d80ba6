"""Background compilation of render graphs, so that no request waits minutes for ``torch.compile``.

A compiled engine (CUDA) specialises its UNet/VAE graphs to one shape (views per call, image size,
guidance on/off); compiling a shape takes about a minute at SD 2 scale. The server reports ready as
soon as the model is loaded; meanwhile this thread compiles the warm-up shapes (``--warmup``), then
every new shape a request brings. Until a shape is ready, renders at that shape run the eager modules
(same maths, 2-3x slower on a GPU, a second or two rather than a minute). ``GET /v1/health`` lists
what is ready, compiling and queued.

The engine's ``compile_shape`` touches no mapper, cache or text encoder, so it can run here while
the worker thread renders. Compiling is pure Python for minutes and would starve a render of the GIL
(measured on an H200: an uncompiled 768x576 view took 19 s instead of about 1 s), so this thread
pauses at its next Python call whenever the engine renders (``engine.idle`` cleared), for at most
``MAX_PAUSE_S`` at a time so that nothing can wait on it forever.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("viewneti.server")

MAX_PAUSE_S = 30.0


def _yield_to_renders(idle: threading.Event):
    """A profile hook for the compiling thread: wait while the engine renders (Event.wait releases the GIL)."""
    flag = idle.is_set

    def hook(frame: Any, event: str, arg: Any) -> None:
        if not flag():
            idle.wait(MAX_PAUSE_S)

    return hook


class BackgroundCompiler:
    def __init__(self, engine: Any, *, compile_new_shapes: bool = True, name: str = "viewneti-compiler") -> None:
        self._engine = engine
        self._compile_new = compile_new_shapes
        self._cv = threading.Condition()
        self._queue: deque[Any] = deque()
        self._seen: set[Any] = set()
        self._current: Any = None
        self._failed: dict[str, str] = {}
        self._times: dict[str, float] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, warmup: list[Any]) -> None:
        for shape in warmup:
            self.request(shape, warmup=True)
        self._thread.start()

    def request(self, shape: Any, *, warmup: bool = False) -> bool:
        """Queue a shape for compilation (once); True if it was new. Called from any thread."""
        if not warmup and not self._compile_new:
            return False
        with self._cv:
            if shape in self._seen or shape in self._engine.ready_shapes:
                return False
            self._seen.add(shape)
            self._queue.append(shape)
            self._cv.notify_all()
        return True

    def stop(self, timeout: float = 0.5) -> None:
        """Stop taking work; a compile in progress cannot be interrupted (the thread is a daemon)."""
        with self._cv:
            self._stopping = True
            self._queue.clear()
            self._cv.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        with self._cv:
            return {
                "ready": sorted(s.label() for s in self._engine.ready_shapes),
                "compiling": None if self._current is None else self._current.label(),
                "queued": [s.label() for s in self._queue],
                "failed": dict(self._failed),
                "seconds": dict(self._times),
            }

    def _run(self) -> None:
        idle = getattr(self._engine, "idle", None)
        hook = _yield_to_renders(idle) if isinstance(idle, threading.Event) else None
        while True:
            with self._cv:
                while not self._stopping and not self._queue:
                    self._cv.wait()
                if self._stopping:
                    return
                shape = self._current = self._queue.popleft()
            label = shape.label()
            log.info("compiling render graphs for %s in the background (requests at this size run eager)", label)
            t0 = time.perf_counter()
            try:
                sys.setprofile(hook)  # this thread only, and only while it holds none of our locks
                try:
                    self._engine.compile_shape(shape)
                finally:
                    sys.setprofile(None)
            except Exception as exc:  # noqa: BLE001 - reported through /v1/health; that shape stays eager
                log.exception("compiling %s failed; renders at that shape stay eager", label)
                with self._cv:
                    self._failed[label] = f"{type(exc).__name__}: {exc}"
            else:
                seconds = time.perf_counter() - t0
                log.info("compiled %s in %.1f s", label, seconds)
                with self._cv:
                    self._times[label] = round(seconds, 1)
            finally:
                with self._cv:
                    self._current = None
