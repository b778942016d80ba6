"""Live mode: debounced, latest-wins re-rendering while the camera moves, refined once it stays still.

A plain class with an injectable clock and render function, no bpy: the timer shell feeds it the
current request on the main thread (`observe`) and calls `tick`; renders run on worker threads and
come back through a queue, so a tick never waits on the network.

Policy: a change starts a quiet period (`debounce` seconds); every further change restarts it; only
when the camera has been still for that long is the *latest* request sent. At most `max_in_flight`
requests run at once (the server cuts an older request of the same session when a newer one
arrives, at its next denoising step, with at most two steps of it left to run on a GPU), and a result
older than one already shown is dropped.

While `held` (the backend cannot render for a while: it compiles an inversion's training graph on
the thread that renders), nothing is sent; the latest pose goes as soon as it is released.

Refinement (as Cycles' viewport does): once a live render of a pose has been shown and the camera
has stayed at that pose for a further `refine_delay` seconds, the pose's full-quality request is sent
once (unless it equals the live one). It is shown only if the camera is still at that pose when it
arrives; a move restarts everything, so coming back to a pose refines it again.
"""

import queue
import threading
import time
from dataclasses import dataclass

from .client import Superseded


@dataclass
class LiveResult:
    generation: int
    request: dict
    value: object = None  # whatever the render function returned
    error: Exception | None = None
    key: object = None  # the pose it shows (the key given to `observe`)
    refined: bool = False  # the full-quality render of a still pose, not a live one


class LiveController:
    """`render(request)` renders a live request; `refine(request)` (default: `render`) a full one.

    `refine_delay` 0 never refines."""

    def __init__(self, render, debounce=0.25, clock=time.monotonic, max_in_flight=2, refine=None, refine_delay=0.0):
        self._render = render
        self._refine = refine or render
        self.debounce = float(debounce)
        self.refine_delay = float(refine_delay)
        self._clock = clock
        self.max_in_flight = max(1, int(max_in_flight))
        self._results = queue.Queue()
        self._pending = None  # (key, request) waiting for the quiet period to end
        self._changed_at = 0.0
        self._last_key = None  # key of the newest request seen (pending or sent)
        self._full = None  # the full-quality request of `_last_key`, None if the live one already is
        self._shown_at = None  # when a live render of `_last_key` was shown (None: not yet)
        self._refined_key = None  # the pose whose refinement was sent: once per still pose
        self._refining = None  # (generation, key) of the refinement in flight
        self._generation = 0
        self._delivered = 0  # newest generation handed to the caller
        self._in_flight = 0
        self._threads = []
        self.requests_sent = 0
        self.stopped = False
        self.held = False  # set by the shell while the backend cannot render (see the module docstring)

    @property
    def busy(self):
        """True while a request waits for its quiet period, a render is running, or the shown pose's
        refinement is still to be sent (scripts that wait for live mode to settle wait for it too)."""
        return self._pending is not None or self._in_flight > 0 or self._refine_scheduled()

    @property
    def results_waiting(self):
        """Renders that have finished and wait for the next `tick()` (scripts and tests wait on this)."""
        return self._results.qsize()

    @property
    def refining(self):
        """True while the refinement of the current pose runs (not one of a pose the camera left)."""
        return self._refining is not None and self._refining[1] == self._last_key

    def is_current(self, key):
        """Whether `key` is the newest state seen already (then `observe` would ignore it)."""
        return key == self._last_key

    def observe(self, key, request, full=None):
        """Record the current state (main thread); a new key restarts the quiet period.

        `full` is the pose's full-quality request, sent once the pose has been still for
        `refine_delay` after its live render was shown; None, or equal to `request`: never."""
        if self.stopped or self.is_current(key):
            return False
        self._last_key = key
        self._pending = (key, request)
        self._full = None if full == request else full
        self._shown_at = None
        self._refined_key = None
        self._changed_at = self._clock()
        return True

    def tick(self):
        """Start a due request and return finished results, newest-only. Never blocks."""
        finished = []
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            self._in_flight -= 1
            if result.refined and self._refining is not None and self._refining[0] == result.generation:
                self._refining = None
            if isinstance(result.error, Superseded) or result.generation <= self._delivered:
                continue  # a newer request replaced it: nothing to show, nothing to report
            if result.refined and result.key != self._last_key:
                continue  # the camera moved on: never show an old pose's refinement over its live view
            finished.append(result)
        if finished:
            newest = max(finished, key=lambda r: r.generation)
            self._delivered = newest.generation
            finished = [newest]
            if not newest.refined and newest.error is None and newest.key == self._last_key:
                self._shown_at = self._clock()
        self._threads = [t for t in self._threads if t.is_alive()]
        if self.stopped or self.held or self._in_flight >= self.max_in_flight:
            return finished
        if self._pending is not None and self._clock() - self._changed_at >= self.debounce:
            key, request = self._pending
            self._pending = None
            self._start(key, request)
        elif self._refine_due():
            self._refined_key = self._last_key
            self._start(self._last_key, self._full, refined=True)
            self._refining = (self._generation, self._last_key)
        return finished

    def _refine_scheduled(self):
        """The current pose's live render was shown and its refinement has not been sent yet."""
        return (
            not self.stopped
            and self.refine_delay > 0
            and self._full is not None
            and self._pending is None
            and self._shown_at is not None
            and self._refined_key != self._last_key
        )

    def _refine_due(self):
        return self._refine_scheduled() and self._clock() - self._shown_at >= self.refine_delay

    def _start(self, key, request, refined=False):
        self._generation += 1
        self._in_flight += 1
        self.requests_sent += 1
        thread = threading.Thread(
            target=self._work, args=(self._generation, key, request, refined), name="viewneti-live", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self, generation, key, request, refined):
        render = self._refine if refined else self._render
        try:
            result = LiveResult(generation, request, value=render(request), key=key, refined=refined)
        except Exception as exc:  # reported on the main thread by whoever calls tick()
            result = LiveResult(generation, request, error=exc, key=key, refined=refined)
        self._results.put(result)

    def stop(self):
        """Send nothing more; results of running renders are discarded."""
        self.stopped = True
        self._pending = None

    def join(self, timeout=None):
        """Wait for worker threads (tests, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
