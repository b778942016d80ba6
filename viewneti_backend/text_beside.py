"""A new pose's text phase beside its denoising loop, on a second CUDA stream.

A new pose needs its encodings at every (step, layer): steps x 16 prompts through the text encoder,
46-56 ms of GPU time for a 30-step view before its first UNet step (RESULTS.md section 1). Step ``i``
needs only step ``i``'s encodings, and about a third of the UNet's kernels leave SMs idle (grids under
one wave). So the text phase is cut into chunks of steps (:func:`step_chunks`): the first on the
render's own stream before the loop, the others on a side stream queued once the first step is, each
with an event the loop waits on (on the GPU, not the host) before the first step that reads it.

Same maths, same encodings: every chunk is the same prompts through the same modules; the cache gets
the chunks joined. A render that uses this split (one view, see :class:`ChunkedConditions`) projects its
keys/values chunk by chunk also from a cached encoding, so that a re-render of a pose gives the same
bytes as its first render (a cuBLAS GEMM may round differently at another row count).

Stream safety: side-stream work always starts after everything queued on the render's stream so far
(``wait_stream``), and the render's stream waits for all of it (``settle``) before the render returns
or raises; so no tensor freed on one stream can be handed to the other while still in use.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence

import torch

TEXT_BESIDE_ENV = "VIEWNETI_TEXT_BESIDE"  # "0": off; "1": on (also on a CPU, where it runs in turn)
TEXT_BESIDE_DEFAULT = False  # unset: off until measured on a GPU (gpu_render_options --sections text-beside)
HEAD_STEPS_PER_30 = 2  # steps of encodings computed before the loop, per 30 steps (at least 1)
CHUNK_GROWTH = 3  # each later chunk ends at this multiple of where it starts

# What ``queue_rest`` returns: the later chunks' tensors, each with the event that says it is computed
# (None where it was computed on the render's own stream), and the side stream's last event (or None).
Rest = tuple[list[tuple[torch.Tensor, "torch.cuda.Event | None"]], "torch.cuda.Event | None"]


def text_beside_requested(device: torch.device) -> bool:
    """Whether single-view renders compute a new pose's later encodings beside the loop
    (``VIEWNETI_TEXT_BESIDE``: ``1`` yes, ``0`` no; unset: :data:`TEXT_BESIDE_DEFAULT`, on CUDA only)."""
    value = os.environ.get(TEXT_BESIDE_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{TEXT_BESIDE_ENV}={value!r}: set it to 1 (on) or 0 (off), or unset it")
    if value == "":
        return TEXT_BESIDE_DEFAULT and device.type == "cuda"
    return value == "1"


def step_chunks(steps: int, head: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) step ranges: ``head`` steps (default: :data:`HEAD_STEPS_PER_30` per 30), then chunks
    ending at :data:`CHUNK_GROWTH` times their start, the last cut at ``steps``. 30 steps: (0, 2), (2, 6),
    (6, 18), (18, 30); 8 steps: (0, 1), (1, 3), (3, 8). A later chunk has the time of the steps before it
    to be computed beside them, so the chunks grow with it."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if head is None:
        head = max(1, round(steps * HEAD_STEPS_PER_30 / 30))
    if head < 1:
        raise ValueError(f"head must be at least 1 step, got {head}")
    bounds = [0, min(head, steps)]
    while bounds[-1] < steps:
        bounds.append(min(steps, bounds[-1] * CHUNK_GROWTH))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class ChunkedConditions:
    """What the UNet gets at each step, held as chunks of steps ([n, B, ...] each); ``conds[i]`` is step
    ``i``'s. Chunks still computing on the side stream have an event: the first read of such a chunk
    makes the current stream wait for it (queued on the GPU; the host does not wait).

    ``queue_rest`` (a callable that queues the side chunks and returns them, see :data:`Rest` and
    ``ViewNeTIPipeline``) runs at :meth:`start_rest`, once the loop's first step is queued: the GPU then
    has that step to run while the host queues the text encoder's kernels. :meth:`settle` (in the loop's
    ``finally``) makes the render's stream wait for all side work, also for a cancelled render."""

    def __init__(
        self,
        chunks: Sequence[tuple[int, int]],
        parts: Sequence[torch.Tensor | None],
        device: torch.device,
        queue_rest: Callable[[], Rest] | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self._device = device
        self._starts = [start for start, _ in self.chunks]
        self._parts: list[torch.Tensor | None] = list(parts)
        self._events: list[torch.cuda.Event | None] = [None] * len(self._parts)
        self._queue_rest = queue_rest
        self._settled: torch.cuda.Event | None = None  # the side stream's last event for this render
        if queue_rest is None and any(p is None for p in self._parts):
            raise ValueError("chunks without tensors need a queue_rest that computes them")

    def __len__(self) -> int:
        return self.chunks[-1][1]

    def start_rest(self) -> None:
        """Queue the chunks not computed yet (once; nothing if all are)."""
        if self._queue_rest is None:
            return
        queue_rest, self._queue_rest = self._queue_rest, None
        rest, self._settled = queue_rest()
        missing = [k for k, p in enumerate(self._parts) if p is None]
        if len(rest) != len(missing):
            raise RuntimeError(f"queue_rest gave {len(rest)} chunks for {len(missing)}")
        for k, (tensor, event) in zip(missing, rest, strict=True):
            self._parts[k], self._events[k] = tensor, event

    def __getitem__(self, step: int) -> torch.Tensor:
        k = bisect.bisect_right(self._starts, step) - 1
        if k < 0 or step >= len(self):
            raise IndexError(f"step {step} of {len(self)}")
        if self._parts[k] is None:
            self.start_rest()
        event = self._events[k]
        if event is not None:
            torch.cuda.current_stream(self._device).wait_event(event)
            self._events[k] = None
        part = self._parts[k]
        assert part is not None  # start_rest filled every chunk
        return part[step - self.chunks[k][0]]

    def settle(self) -> None:
        """Make the current stream wait for everything queued on the side stream for this render."""
        if self._settled is not None:
            torch.cuda.current_stream(self._device).wait_event(self._settled)
            self._settled = None
        self._events = [None] * len(self._events)
