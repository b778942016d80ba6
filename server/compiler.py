"""Background compilation of render graphs, so that no request waits minutes for ``torch.compile``.

A compiled engine (CUDA) specialises its UNet/VAE graphs to one shape (views per call, image size,
guidance on/off); compiling a shape takes about a minute at SD 2 scale. The server reports ready as
soon as the model is loaded; meanwhile this thread compiles the warm-up shapes (``--warmup``), then
every new shape a request brings. Until a shape is ready, renders at that shape run the eager modules
(same maths, 2-3x slower on a GPU, a second or two rather than a minute). ``GET /v1/health`` lists
what is ready, compiling and queued.

The engine's ``compile_shape`` touches no mapper, cache or text encoder, so it can run here while
the worker thread renders. Compiling is pure Python for minutes and would starve a render of the GIL
(measured on an H200: an uncompiled 768x576 view took 19 s instead of about 1 s). So each shape is
first compiled by helper processes (``processes`` of them, :mod:`viewneti_backend.compile_warmer`)
into torch's on-disk caches, several shapes at once; this thread then compiles it in the server from
those caches in seconds, pausing at its next Python call whenever the engine renders (``engine.idle``
cleared), for at most ``MAX_PAUSE_S`` at a time so that nothing can wait on it forever. If a helper
fails, the shape is compiled here from scratch (slower, same result).

After the warm-up shapes the helpers compile the training graphs of likely first inversions (optional
work, minutes of CPU and then a training step on the GPU): a helper doing that is stopped (SIGSTOP)
while the engine renders and goes on once no render has run for ``RESUME_AFTER_IDLE_S``.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from viewneti_backend.compile_warmer import TRAINING_LABEL_PREFIX
from viewneti_backend.switches import env_switch

log = logging.getLogger("viewneti.server")

MAX_PAUSE_S = 30.0
HELPER_IDLE_S = 120.0  # a helper idle this long exits and frees its copy of the model
# A helper compiling an inversion's training graphs ahead is stopped while the engine renders, and goes on
# once no render has run for this long (the next camera move of a user at work is usually sooner).
RESUME_AFTER_IDLE_S = 1.0
PAUSE_TRAINING_AHEAD_ENV = "VIEWNETI_PAUSE_TRAINING_AHEAD"  # "0": training-ahead helpers run beside renders


def pause_training_ahead_requested() -> bool:
    """Whether training-ahead helpers stop while the engine renders (``VIEWNETI_PAUSE_TRAINING_AHEAD``:
    unset or ``1`` yes, ``0`` no)."""
    return env_switch(PAUSE_TRAINING_AHEAD_ENV)


def _yield_to_renders(idle: threading.Event):
    """A profile hook for the compiling thread: wait while the engine renders (Event.wait releases the GIL)."""
    flag = idle.is_set

    def hook(frame: Any, event: str, arg: Any) -> None:
        if not flag():
            idle.wait(MAX_PAUSE_S)

    return hook


class _Warming:
    """A shape handed to the helper processes: done is set when they compiled it (or failed)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self.seconds = 0.0


class BackgroundCompiler:
    def __init__(
        self,
        engine: Any,
        *,
        compile_new_shapes: bool = True,
        processes: int = 0,
        helper_idle_s: float = HELPER_IDLE_S,
        pause_training_ahead: bool | None = None,
        resume_after_idle_s: float = RESUME_AFTER_IDLE_S,
        name: str = "viewneti-compiler",
    ) -> None:
        """``processes``: helper processes that compile shapes ahead into the on-disk caches (0: none,
        everything compiles in this process; engines without ``compile_warmer`` get none). A helper
        with nothing to compile for ``helper_idle_s`` exits (its copy of the model freed) and starts
        again for the next shape. ``pause_training_ahead`` (default: :func:`pause_training_ahead_requested`):
        a helper compiling training graphs ahead is stopped while the engine renders (its ``rendering``
        event), until no render has run for ``resume_after_idle_s``; helpers compiling render shapes never
        are (renders at those shapes wait for them)."""
        self._helper_idle_s = helper_idle_s
        if pause_training_ahead is None:
            pause_training_ahead = pause_training_ahead_requested()
        self._resume_after_idle_s = resume_after_idle_s
        self._training_helpers: dict[Any, str] = {}  # helper -> the training label it compiles now
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
        self._warm_queue: queue.Queue[Any] = queue.Queue()
        self._warming: dict[Any, _Warming] = {}
        self._training: dict[str, str] = {}  # training size label -> queued, compiling, done, or the error
        self._helpers: list[Any] = []
        factory = getattr(engine, "compile_warmer", None)
        if processes > 0 and callable(factory):
            self._helpers = [factory() for _ in range(processes)]
        self._helper_threads = [
            threading.Thread(target=self._helper_loop, args=(h,), name=f"{name}-helper-{i}", daemon=True)
            for i, h in enumerate(self._helpers)
        ]
        rendering, idle = getattr(engine, "rendering", None), getattr(engine, "idle", None)
        if (
            self._helpers
            and pause_training_ahead
            and isinstance(rendering, threading.Event)
            and isinstance(idle, threading.Event)
        ):
            self._helper_threads.append(
                threading.Thread(
                    target=self._pause_training_ahead, args=(rendering, idle), name=f"{name}-pauser", daemon=True
                )
            )

    def start(self, warmup: list[Any], training: Sequence[Any] = ()) -> None:
        """Compile the ``warmup`` shapes; then, in the helper processes only (none: nothing), the
        ``training`` sizes (``TrainingSize``): they fill the on-disk caches, and the first inversion at
        such a size compiles its training graphs from them (``status()["training_ahead"]``)."""
        for shape in warmup:
            self.request(shape, warmup=True)
        if self._helpers:
            with self._cv:
                for size in training:
                    self._warming[size] = _Warming()
                    self._training[size.label()] = "queued"
                    self._warm_queue.put(size)
        for t in self._helper_threads:
            t.start()
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
            if self._helpers:
                self._warming[shape] = _Warming()
                self._warm_queue.put(shape)
            self._cv.notify_all()
        return True

    def stop(self, timeout: float = 0.5) -> None:
        """Stop taking work; a compile in progress cannot be interrupted (the thread is a daemon)."""
        with self._cv:
            self._stopping = True
            self._queue.clear()
            self._cv.notify_all()
        for _ in self._helpers:
            self._warm_queue.put(None)
        for helper in self._helpers:
            helper.close(timeout=0)  # a helper mid-compile is killed: its work is only a cache
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
                "helper_processes": len(self._helpers),
                "training_ahead": {k.removeprefix(TRAINING_LABEL_PREFIX): v for k, v in self._training.items()},
                # compiled renders that raised inside torch and were redone eager (engine.compiled_failures)
                "render_failures": {k: dict(v) for k, v in getattr(self._engine, "compiled_failures", {}).items()},
            }

    def _helper_loop(self, helper: Any) -> None:
        while True:
            try:
                shape = self._warm_queue.get(timeout=self._helper_idle_s)
            except queue.Empty:  # nothing to compile for a while: give its model's memory back
                helper.close()  # a later shape starts it again (one model load, seconds)
                continue
            if shape is None or self._stopping:
                return
            warming = self._warming[shape]
            label = shape.label()
            training = label in self._training
            if training:
                with self._cv:
                    self._training[label] = "compiling"
                    self._training_helpers[helper] = label
            try:
                reply = helper.warm(label)
                warming.seconds = float(reply.get("seconds", 0.0)) + float(reply.get("load_s", 0.0))
            except Exception as exc:  # noqa: BLE001 - a shape is then compiled in this process
                if not self._stopping:
                    instead = (
                        "the first inversion there compiles it" if training else f"compiling {label} in the server"
                    )
                    log.warning("compile helper: %s; %s instead", exc, instead)
                warming.error = str(exc)
            else:
                if training:
                    log.info(
                        "compiled the training graphs of %s ahead in a helper in %.1f s (the first inversion "
                        "at that size compiles them from the cache)",
                        label.removeprefix(TRAINING_LABEL_PREFIX),
                        warming.seconds,
                    )
            finally:
                if training:
                    with self._cv:
                        self._training_helpers.pop(helper, None)
                        self._training[label] = "done" if warming.error is None else f"failed: {warming.error}"
                    resume = getattr(helper, "resume", None)
                    if callable(resume):  # paused after its reply came: idle now, and never stopped when idle
                        resume()
                warming.done.set()

    def _pause_training_ahead(self, rendering: threading.Event, idle: threading.Event) -> None:
        """Stop the helpers that compile training graphs while the engine renders: their compiling and
        their training step on the GPU would slow the renders (the user's camera moves) for the minutes
        after a start. They go on once no render has run for ``resume_after_idle_s``."""
        while not self._stopping:
            if not rendering.wait(1.0):  # asks whether to stop once a second while nothing renders
                continue
            paused: set[Any] = set()
            while not self._stopping:
                with self._cv:  # under the lock: a helper leaves _training_helpers only under it
                    for helper, label in self._training_helpers.items():
                        pause = getattr(helper, "pause", None)
                        if callable(pause) and pause():  # False for one paused already
                            paused.add(helper)
                            self._training[label] = "paused"
                if idle.wait(0.25) and not rendering.wait(self._resume_after_idle_s):
                    break  # no render for resume_after_idle_s
            with self._cv:
                for helper in paused:
                    helper.resume()
                    label = self._training_helpers.get(helper)
                    if label is not None and self._training.get(label) == "paused":
                        self._training[label] = "compiling"

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
                warming = self._warming.get(shape)
            label = shape.label()
            t0 = time.perf_counter()
            if warming is not None:
                log.info("compiling render graphs for %s in a helper process (requests at this size run eager)", label)
                while not warming.done.wait(0.5):  # Event.wait releases the GIL: renders run at full speed
                    if self._stopping:
                        return
            else:
                log.info("compiling render graphs for %s in the background (requests at this size run eager)", label)
            stats: dict[str, int] = {}
            t_here = time.perf_counter()
            try:
                sys.setprofile(hook)  # this thread only, and only while it holds none of our locks
                try:
                    if warming is not None:
                        self._engine.compile_shape(shape, cache_stats=stats)
                    else:
                        self._engine.compile_shape(shape)
                finally:
                    sys.setprofile(None)
            except Exception as exc:  # noqa: BLE001 - reported through /v1/health; that shape stays eager
                log.exception("compiling %s failed; renders at that shape stay eager", label)
                with self._cv:
                    self._failed[label] = f"{type(exc).__name__}: {exc}"
            else:
                seconds = time.perf_counter() - t0
                if warming is not None and warming.error is None:
                    log.info(
                        "compiled %s in %.1f s (helper %.1f s, then %.1f s in the server: %d graphs from the "
                        "cache, %d compiled again)",
                        label,
                        seconds,
                        warming.seconds,
                        time.perf_counter() - t_here,
                        stats.get("hits", 0),
                        stats.get("misses", 0),
                    )
                else:
                    log.info("compiled %s in %.1f s", label, seconds)
                with self._cv:
                    self._times[label] = round(seconds, 1)
            finally:
                with self._cv:
                    self._current = None
