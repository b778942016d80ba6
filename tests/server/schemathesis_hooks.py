"""Schemathesis hooks for fuzzing the server (``SCHEMATHESIS_HOOKS=schemathesis_hooks``, tests/server on the path).

JSON Schema cannot say everything the server checks: a camera pose must be rigid (orthonormal rotation with
det +1, bottom row [0,0,0,1]), an inversion image must be a decodable image file, and there is one camera
per image (inversion) and per frame number (sequence). server/API.md documents these rules and the server
answers 400/422 with a message when they are broken. A *positive* (schema-valid) case drawn at random
almost never satisfies them, so without help every positive render, sequence and inversion would stop at
that 400 and never reach the engine.

This hook repairs positive cases just before they are sent, keeping everything the fuzzer chose that
the rules allow (sizes, field of view, seeds, steps, counts, the translation, the other fields): the
rotation becomes a rigid one derived from the drawn numbers, images become a small PNG, lists are cut to
equal length, an explicit ``fy`` is sent without ``fov_y_deg`` (they must agree) and kept to a field of view
the camera accepts, and an inversion camera is cut to the 4:1 aspect ratio references may have. The repaired case stays schema-valid (Schemathesis re-validates it), so the
``positive_data_acceptance`` check stays strict: any other refusal of a valid request is a real finding.
Negative cases are never touched.

A cost budget, for CPU test runs only: a schema-valid inversion may ask for 100 000 steps and a sequence for
10 000 frames, and a fuzzer that opens such a job's event stream waits until the job ends. Positive cases
are cut to ``VIEWNETI_FUZZ_INVERT_STEPS`` steps and ``VIEWNETI_FUZZ_FRAMES`` cameras (defaults 4 and 3; still
schema-valid; 0 disables the cut).
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any

import schemathesis

from viewneti_backend import limits

INVERT_STEPS = int(os.environ.get("VIEWNETI_FUZZ_INVERT_STEPS", "4"))
FRAMES = int(os.environ.get("VIEWNETI_FUZZ_FRAMES", "3"))


def _png_b64(size: int = 64) -> str:
    from PIL import Image

    im = Image.new("RGB", (size, size), (200, 60, 40))
    im.paste((30, 40, 210), (size // 4, size // 4, size // 2, size // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG_B64 = _png_b64()


def rigid_pose(drawn: Any) -> list[list[float]]:
    """A rigid camera-to-anchor matrix: rotation from Euler angles derived from the drawn entries, the drawn
    translation kept (any finite value is valid)."""
    rows = drawn if isinstance(drawn, list) else []
    flat = [float(v) for row in rows if isinstance(row, list) for v in row if isinstance(v, (int, float))]
    sums = [sum(flat[i::3]) if flat else 0.0 for i in range(3)]  # may overflow to inf or nan: then 0
    a, b, c = (math.fmod(x, 2 * math.pi) if math.isfinite(x) else 0.0 for x in sums)
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rot = [
        [cb * cc, -cb * sc, sb],
        [sa * sb * cc + ca * sc, -sa * sb * sc + ca * cc, -sa * cb],
        [-ca * sb * cc + sa * sc, ca * sb * sc + sa * cc, ca * cb],
    ]
    t = []
    for i in range(3):
        try:
            v = float(rows[i][3])
        except (IndexError, TypeError, ValueError):
            v = 0.0
        t.append(v if math.isfinite(v) else 0.0)
    return [[*rot[0], t[0]], [*rot[1], t[1]], [*rot[2], t[2]], [0.0, 0.0, 0.0, 1.0]]


def _repair_camera(cam: Any, max_aspect: float | None = None) -> None:
    if not isinstance(cam, dict):
        return
    if "camera_to_anchor" in cam:
        cam["camera_to_anchor"] = rigid_pose(cam["camera_to_anchor"])
    fy = cam.get("fy")
    if isinstance(fy, (int, float)) and not isinstance(fy, bool):
        # fy defines the vertical field of view: send it alone (a drawn fov_y_deg would disagree), and keep the
        # fov it implies inside the accepted range (a drawn 1e-300 px would mean 180 degrees)
        cam.pop("fov_y_deg", None)
        height = cam.get("height", 512)
        fov = math.degrees(2.0 * math.atan(0.5 * height / fy)) if fy > 0 else 0.0
        if not limits.MIN_FOV_DEG * 2 <= fov <= 179.0:
            cam["fy"] = 0.5 * height / math.tan(math.radians(39.6) / 2)
    w, h = cam.get("width", 512), cam.get("height", 512)  # JSON integers: 632 or 632.0
    sizes_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h))
    if max_aspect and sizes_ok and max(w, h) > max_aspect * min(w, h):
        long_side = int(max_aspect * min(w, h)) // limits.SIZE_MULTIPLE * limits.SIZE_MULTIPLE
        cam["width" if w > h else "height"] = long_side


def repair_body(path: str, body: Any) -> None:
    """Make a schema-valid body also satisfy the rules JSON Schema cannot express (in place)."""
    if not isinstance(body, dict):
        return
    if path.endswith("/render"):
        _repair_camera(body.get("camera"))
        return
    cams = body.get("cameras")
    if not isinstance(cams, list) or not cams:
        return
    invert = path.endswith("/jobs/invert")
    for cam in cams:
        _repair_camera(cam, limits.MAX_INVERT_ASPECT if invert else None)
    if path.endswith("/jobs/sequence"):
        n = len(cams) if FRAMES <= 0 else min(len(cams), FRAMES)
        frames = body.get("frames")
        if isinstance(frames, list) and frames:
            n = min(n, len(frames))
            body["frames"] = frames[:n]
        body["cameras"] = cams[:n]
    elif path.endswith("/jobs/invert"):
        body["images"] = [PNG_B64] * len(cams)
        steps = body.get("steps")
        if INVERT_STEPS > 0 and isinstance(steps, int) and steps > INVERT_STEPS:
            body["steps"] = INVERT_STEPS


@schemathesis.hook
def before_call(context, case, kwargs) -> None:  # noqa: ARG001 - the hook's signature
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    mode = getattr(generation, "mode", None)
    if mode is None or not mode.is_positive or case.method.upper() != "POST":
        return
    repair_body(case.operation.path, case.body)
