"""Every size, step and name limit of the project, defined once (stdlib only: no torch, no numpy).

The server's request schemas, its caps, the camera checks and the token library read these values;
the Blender add-on (stdlib only, never imports this package) keeps a copy of the wire-level ones in
``blender_addon/limits.py``, and ``tests/core/test_limits.py`` checks that the two agree.
"""

from __future__ import annotations

import re
from typing import TypeGuard

# -- image sizes (the wire contract) ----------------------------------------------------------------
MIN_SIZE = 16  # smallest image side a render may request
MAX_SIZE = 2048  # largest image side any server allows (a server may cap lower, see device_max_size)
SIZE_MULTIPLE = 8  # sides are multiples of the VAE's downsampling factor (the latent grid)

# -- cameras ---------------------------------------------------------------------------------------
# Narrowest field of view accepted: below every Blender camera (5000 mm lens on a 1 mm sensor: 0.0115 deg) and
# far from where tan(fov/2) underflows (the camera features take its log).
MIN_FOV_DEG = 0.01
MAX_FRAME = 9_999_999  # largest frame number of a sequence: frames name files frame_NNNNNNN.png
MAX_SEQUENCE_FRAMES = 10_000  # cameras (frames) of one sequence job

# -- sampling ---------------------------------------------------------------------------------------
# Classifier-free guidance scale of a render (requests, a model's sampling.json, the add-on's field). The
# pipeline computes uncond + g * (cond - uncond): 1 turns guidance off (no unconditional pass), 0 samples the
# unconditional model and values in between interpolate, so 0 is a meaningful lower bound; above 30 images
# saturate.
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 30.0

# -- steps ------------------------------------------------------------------------------------------
MAX_STEPS = 150  # denoising steps of one render (contract); --max-steps may only lower it
MAX_INVERT_STEPS = 100_000  # contract bound of an inversion's optimisation steps
DEFAULT_MAX_INVERT_STEPS = 5_000  # server cap (--max-invert-steps); the paper's 3000-step runs fit under it
# Default optimisation steps of an inversion (CLI `invert`, POST /v1/jobs/invert without steps, the
# add-on's Steps 0; GET /v1/health invert_steps): the paper's 3000 on a GPU (minutes at SD 2 scale on
# an H200: RESULTS.md §1). On a CPU a toy-model step takes about a second or two on 2 cores (§5), so 3000
# would take over an hour; 150 steps come close to the quality of 600 (§3).
GPU_INVERT_STEPS = 3000
CPU_INVERT_STEPS = 150
CPU_SECONDS_PER_INVERT_STEP = 1.5  # for the CLI's ETA on a CPU


def default_invert_steps(device: object) -> int:
    """The paper's 3000 steps on an accelerator, :data:`CPU_INVERT_STEPS` on a CPU (a torch.device or str)."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return CPU_INVERT_STEPS if kind == "cpu" else GPU_INVERT_STEPS


# -- warnings ---------------------------------------------------------------------------------------
# A render whose long side is more than this many times the model's native size gets a warning: the
# model never saw such images (the toy model at 512 px on its 64-px training size draws a tiled mosaic).
SIZE_WARNING_FACTOR = 2.0

# -- inversion references ---------------------------------------------------------------------------
MAX_REFERENCE_SIDE = 4096  # a reference image may be at most this many pixels per side ...
MAX_REFERENCE_PIXELS = MAX_REFERENCE_SIDE * MAX_REFERENCE_SIDE  # ... and this many in all
MAX_REFERENCE_BYTES = 20 * 1024 * 1024  # encoded file size of one reference
MAX_REFERENCES = 16  # images (and cameras) per inversion
# Long side / short side of an inversion reference (and its camera). The trainer resizes the long
# side to the training size: beyond 4:1 the short side falls below a few latent cells (8 at SD 2's
# 512, 2 in the toy world), and the fitted token learns a smear.
MAX_INVERT_ASPECT = 4.0

# -- device-aware render cap ------------------------------------------------------------------------
# On a CPU the attention cost grows with the square of the pixel count (toy world, 1 step, 1 thread:
# 64 px 0.3 s, 256 px 2.1 s, 512 px 30 s, 1024 px ~4 min), so a CPU server caps the side at this many
# times the model's native size (toy world: 256); GPUs keep MAX_SIZE.
CPU_SIZE_FACTOR = 4

# -- names ------------------------------------------------------------------------------------------
# Object tokens: they become folder names. NAME_PATTERN is the JSON Schema (ECMAScript) form, where '$' is the
# end of the text; in Python '$' also matches before a trailing newline ("mug\n"), so Python code checks names
# with NAME_RE, anchored with \A...\Z (its .match, .fullmatch and .search all refuse "mug\n").
_NAME_BODY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
NAME_PATTERN = f"^{_NAME_BODY}$"
NAME_MAX_LENGTH = 64
NAME_RE = re.compile(rf"\A{_NAME_BODY}\Z")
NAME_RULE = "use 1-64 letters, digits, '_' or '-', starting with a letter or digit (no paths, dots or spaces)"


def is_valid_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def size_error(what: str, value: int, multiple: int = SIZE_MULTIPLE) -> str | None:
    """Why ``value`` is not a valid image side, or None (``multiple``: the latent grid; DTU scores at 4)."""
    if not MIN_SIZE <= value <= MAX_SIZE:
        return f"{what} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value}"
    if value % multiple:
        return f"{what} must be a multiple of {multiple} (the model's latent grid), got {value}"
    return None


def device_max_size(device: str | None, native_size: int | None, configured: int = MAX_SIZE) -> int:
    """The largest render side a server on ``device`` allows: ``configured`` (--max-size) capped at
    MAX_SIZE, and on a CPU also at CPU_SIZE_FACTOR x the model's native size (rounded to SIZE_MULTIPLE)."""
    cap = min(int(configured), MAX_SIZE)
    if device is not None and str(device).split(":")[0] == "cpu" and native_size:
        cpu_cap = (int(native_size) * CPU_SIZE_FACTOR) // SIZE_MULTIPLE * SIZE_MULTIPLE
        cap = min(cap, max(MIN_SIZE, cpu_cap))
    return cap


def aspect_error(width: int, height: int, what: str = "the image") -> str | None:
    """Why an inversion reference of ``width`` x ``height`` is refused (too elongated), or None."""
    lo, hi = sorted((int(width), int(height)))
    if lo <= 0:
        return f"{what} is empty ({width}x{height})"
    if hi / lo > MAX_INVERT_ASPECT:
        return (
            f"{what} is {width}x{height}, an aspect ratio of {hi / lo:.1f}:1; inversion accepts at most "
            f"{MAX_INVERT_ASPECT:g}:1: crop it closer to the object"
        )
    return None
