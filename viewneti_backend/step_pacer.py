"""Keeping the host a bounded amount of denoising work ahead of the GPU, so that a cancel, or a render
served between two steps of another, acts in time.

On CUDA the host issues a render's steps without waiting for them: under the profiler it ran about 7
steps (73 ms) ahead of the GPU in a 768x576 view (RESULTS.md section 1, session 18). A cancel (the
server cuts a live render when a newer request of the same session arrives, e.g. the camera moved
during a refinement) is seen by the host at its next step, but the steps already issued still run on
the GPU, ahead of the next request's work; the same holds for a live render the server serves between
two steps of a sequence job; and progress would report steps the GPU has not done. A :class:`StepPacer`
records an event after each step and, once more than ``ahead`` steps are in flight, waits for the
oldest: at most ``ahead`` steps are left to run when a cancel is seen, and a step is reported done when
the GPU has done it. Two steps keep the GPU fed: the host needs well under a millisecond to issue a step
that takes the GPU 7-11 ms at SD 2 scale. A long step (a sequence job's batch of 8 frames takes ~60 ms a
step on an H100) is paced one step ahead instead: the events are timed, and once a step is known to
take more than ``QUEUED_MS / ahead``, fewer steps are let run ahead (never fewer than one, which still
keeps the GPU fed), so what is left queued stays near ``QUEUED_MS`` or one step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, Self

import torch

STEPS_AHEAD = 2  # denoising steps the host may issue ahead of the GPU while a render can be cancelled
QUEUED_MS = 25.0  # ...and the GPU time those steps may take, once known (at least one step stays ahead)


class _Event(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end_event: Self, /) -> float: ...


def _timed_cuda_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


class StepPacer:
    """``issued(k)`` after step ``k`` (1-based) is issued returns the steps the GPU has now finished
    (to report as progress), waiting for the oldest while more than the allowed steps are in flight;
    ``rest()`` the ones still in flight at the end, without waiting (the decode follows them on the GPU).
    On the CPU, where a step is done when it returns, ``issued(k)`` is ``[k]``.

    The steps allowed in flight are ``ahead``, fewer once a step's GPU time is known (the shortest time
    between two consecutive steps' events so far: an idle GPU between them only lengthens it) and more
    than ``queued_ms / ahead``: ``max(1, queued_ms // step_ms)``."""

    def __init__(
        self,
        device: torch.device,
        ahead: int | None = None,
        event_factory: Callable[[], _Event] | None = None,
        queued_ms: float | None = None,
    ) -> None:
        self.ahead = STEPS_AHEAD if ahead is None else ahead
        if self.ahead < 0:
            raise ValueError(f"ahead must be 0 or more, not {self.ahead}")
        self.queued_ms = QUEUED_MS if queued_ms is None else queued_ms
        if not self.queued_ms > 0:
            raise ValueError(f"queued_ms must be more than 0, not {self.queued_ms}")
        self._event: Callable[[], _Event] | None = event_factory
        if self._event is None and device.type == "cuda":
            self._event = _timed_cuda_event
        self._in_flight: deque[tuple[int, _Event]] = deque()
        self._last_done: _Event | None = None
        self.step_ms: float | None = None  # the shortest GPU time of a step seen so far

    def allowed_ahead(self) -> int:
        """Steps the host may have in flight now."""
        if self.step_ms is None or self.step_ms <= 0 or self.ahead <= 1:
            return self.ahead
        return min(self.ahead, max(1, int(self.queued_ms // self.step_ms)))

    def issued(self, step: int) -> list[int]:
        if self._event is None:
            return [step]
        event = self._event()
        event.record()
        self._in_flight.append((step, event))
        done = []
        while len(self._in_flight) > self.allowed_ahead():
            k, oldest = self._in_flight.popleft()
            oldest.synchronize()  # releases the GIL while it waits
            if self._last_done is not None:
                ms = self._last_done.elapsed_time(oldest)
                self.step_ms = ms if self.step_ms is None else min(self.step_ms, ms)
            self._last_done = oldest
            done.append(k)
        return done

    def rest(self) -> list[int]:
        steps = [k for k, _ in self._in_flight]
        self._in_flight.clear()
        return steps
