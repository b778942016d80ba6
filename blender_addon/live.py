"""Live mode: debounced, latest-wins re-rendering while the camera moves.

A plain class with an injectable clock and render function, no bpy: the timer shell feeds it the
current request on the main thread (`observe`) and calls `tick`; renders run on worker threads and
come back through a queue, so a tick never waits on the network.

Policy: a change starts a quiet period (`debounce` seconds); every further change restarts it; only
when the camera has been still for that long is the *latest* request sent. At most `max_in_flight`
requests run at once (the server cuts an older request of the same session when a newer one
arrives, so a second one in flight costs nothing), and a result older than one already shown is
dropped.
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


class LiveController:
    def __init__(self, render, debounce=0.25, clock=time.monotonic, max_in_flight=2):
        self._render = render
        self.debounce = float(debounce)
        self._clock = clock
        self.max_in_flight = max(1, int(max_in_flight))
        self._results = queue.Queue()
        self._pending = None  # (key, request) waiting for the quiet period to end
        self._changed_at = 0.0
        self._last_key = None  # key of the newest request seen (pending or sent)
        self._generation = 0
        self._delivered = 0  # newest generation handed to the caller
        self._in_flight = 0
        self._threads = []
        self.requests_sent = 0
        self.stopped = False

    @property
    def busy(self):
        """True while a request waits for its quiet period or a render is running."""
        return self._pending is not None or self._in_flight > 0

    @property
    def results_waiting(self):
        """Renders that have finished and wait for the next `tick()` (scripts and tests wait on this)."""
        return self._results.qsize()

    def observe(self, key, request):
        """Record the current state (main thread); a new key restarts the quiet period."""
        if self.stopped or key == self._last_key:
            return False
        self._last_key = key
        self._pending = (key, request)
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
            if isinstance(result.error, Superseded) or result.generation <= self._delivered:
                continue  # a newer request replaced it: nothing to show, nothing to report
            finished.append(result)
        if finished:
            newest = max(finished, key=lambda r: r.generation)
            self._delivered = newest.generation
            finished = [newest]
        self._threads = [t for t in self._threads if t.is_alive()]
        if (
            not self.stopped
            and self._pending is not None
            and self._clock() - self._changed_at >= self.debounce
            and self._in_flight < self.max_in_flight
        ):
            _key, request = self._pending
            self._pending = None
            self._start(request)
        return finished

    def _start(self, request):
        self._generation += 1
        self._in_flight += 1
        self.requests_sent += 1
        thread = threading.Thread(
            target=self._work, args=(self._generation, request), name="viewneti-live", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self, generation, request):
        try:
            self._results.put(LiveResult(generation, request, value=self._render(request)))
        except Exception as exc:  # reported on the main thread by whoever calls tick()
            self._results.put(LiveResult(generation, request, error=exc))

    def stop(self):
        """Send nothing more; results of running renders are discarded."""
        self.stopped = True
        self._pending = None

    def join(self, timeout=None):
        """Wait for worker threads (tests, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
