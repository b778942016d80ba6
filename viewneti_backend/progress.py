"""One report of a job's progress, as the engine sends it to ``on_progress`` during an inversion.

The same value travels from the engine to its callers: the CLI's progress bar, and the server's
worker, which hands it to the job store (recorded on the job, published as a ``progress`` event; its
``preview`` as a ``preview`` event). Standard library only, so the server and the CLI import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL.Image import Image

Phase = Literal["compiling", "training"]

# A render's timed phases (ms), in order: the text encoder, the denoising loop, the VAE decode. The engine
# fills a render's ``timings`` with them; the server sends them as X-Timings-Ms and sums a sequence's.
RENDER_PHASES = ("encode", "denoise", "decode")


@dataclass(frozen=True, kw_only=True)
class Progress:
    """Where a job stands after ``step`` of ``total`` steps (an inversion's optimisation steps, a
    sequence's frames).

    ``phase`` (inversions): ``"compiling"`` for the step-0 report of the first compiled inversion at a
    training size (no step completes for minutes while the training graph compiles), then
    ``"training"``; None for a sequence. ``loss`` is None before a step has run, ``eta_s`` until the
    pace is known. ``preview``: the token so far rendered from the first reference camera, on the steps
    the caller asked for (``preview_every``), else None.
    """

    step: int
    total: int
    loss: float | None = None
    eta_s: float | None = None
    phase: Phase | None = None
    preview: Image | None = None
