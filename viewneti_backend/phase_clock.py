"""Timing a render's phases without draining the GPU between them."""

from __future__ import annotations

import time

import torch


class PhaseClock:
    """Marks at phase boundaries; ``phases_ms()`` gives the time between consecutive marks.

    Waiting for the GPU at each boundary (to read the host clock) leaves the GPU idle while the host
    prepares the next phase. Under the profiler that idle time was visible; on an idle host the wall
    time did not change measurably (RESULTS.md §1, session 18), so this matters when the host is busy.
    On CUDA each mark is an event recorded on the current stream, read once the last one is done. The
    first mark is taken with the GPU idle (a render starts after the previous one's images reached the
    host), so the phases add up to the wall time of the render. On the CPU, where work runs as it is
    issued, the marks are host clock readings.
    """

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._events: list[torch.cuda.Event] = []
        self._times: list[float] = []
        self.mark()

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)
        else:
            self._times.append(time.perf_counter())

    def phases_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (waits for the last mark's work on a GPU)."""
        if self._cuda:
            self._events[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self._events, self._events[1:])]
        return [(b - a) * 1e3 for a, b in zip(self._times, self._times[1:])]
