"""Keeping the host a bounded number of denoising steps ahead of the GPU, so that a cancel acts in time.

On CUDA the host issues a render's steps without waiting for them: under the profiler it ran about 7
steps (73 ms) ahead of the GPU in a 768x576 view (RESULTS.md section 1, session 18). A cancel (the
server cuts a live render when a newer request of the same session arrives, e.g. the camera moved
during a refinement) is seen by the host at its next step, but the steps already issued still run on
the GPU, ahead of the next request's work; and progress would report steps the GPU has not done. A
:class:`StepPacer` records an event after each step and, once more than ``ahead`` steps are in flight,
waits for the oldest: at most ``ahead`` steps are left to run when a cancel is seen, and a step is
reported done when the GPU has done it. Two steps keep the GPU fed: the host needs well under a
millisecond to issue a step that takes the GPU 7-11 ms at SD 2 scale.

A render served between two steps of another (the server serves live renders between a sequence job's
steps) waits on the GPU for the steps issued before it: two of a job's 8-frame steps take ~120 ms on an
H100. While ``lockstep()`` says so, the host issues a step only once the GPU has done the one before (no
step ahead): the served render then waits for at most the step in progress, and the GPU idles for the
host's time to issue each step (~2 ms of a 60-ms step; RESULTS.md section 6, session 26).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import torch

STEPS_AHEAD = 2  # denoising steps the host may issue ahead of the GPU while a render can be cancelled


class _Event(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...


class StepPacer:
    """``issued(k)`` after step ``k`` (1-based) is issued returns the steps the GPU has now finished
    (to report as progress), waiting for the oldest while more than ``ahead`` are in flight (none while
    ``lockstep()`` is true, asked at each step); ``rest()`` the ones still in flight at the end, without
    waiting (the decode follows them on the GPU). On the CPU, where a step is done when it returns,
    ``issued(k)`` is ``[k]``."""

    def __init__(
        self,
        device: torch.device,
        ahead: int | None = None,
        event_factory: Callable[[], _Event] | None = None,
        lockstep: Callable[[], bool] | None = None,
    ) -> None:
        self.ahead = STEPS_AHEAD if ahead is None else ahead
        if self.ahead < 0:
            raise ValueError(f"ahead must be 0 or more, not {self.ahead}")
        self._event: Callable[[], _Event] | None = event_factory
        if self._event is None and device.type == "cuda":
            self._event = torch.cuda.Event  # no timing: the lightest kind of event
        self._lockstep = lockstep
        self._in_flight: deque[tuple[int, _Event]] = deque()

    def issued(self, step: int) -> list[int]:
        if self._event is None:
            return [step]
        event = self._event()
        event.record()
        self._in_flight.append((step, event))
        done = []
        ahead = 0 if self._lockstep is not None and self._lockstep() else self.ahead
        while len(self._in_flight) > ahead:
            k, oldest = self._in_flight.popleft()
            oldest.synchronize()  # releases the GIL while it waits
            done.append(k)
        return done

    def rest(self) -> list[int]:
        steps = [k for k, _ in self._in_flight]
        self._in_flight.clear()
        return steps
