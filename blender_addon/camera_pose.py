"""Camera pose and intrinsics in the wire format of the render service, as pure functions.

Matrices are anything indexable as ``m[row][col]`` (lists, tuples, ``mathutils.Matrix``), so the
maths is tested without Blender. Conventions (server/API.md): Blender world, camera looks down its
local -Z with +Y up, pose = camera-to-world, expressed relative to an anchor whose scale normalises
distances; the rotation sent must be orthonormal, so every scale is removed from it here.
"""

import math

from .limits import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE

IDENTITY = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))


class PoseError(ValueError):
    """The camera or anchor cannot be expressed as a valid pose; the text says how to fix it."""


def _rows(m):
    return [[float(m[r][c]) for c in range(4)] for r in range(4)]


def _matmul(a, b):
    return [[sum(a[r][k] * b[k][c] for k in range(4)) for c in range(4)] for r in range(4)]


def _affine_inverse(m, what="anchor"):
    """Inverse of an affine 4x4 (bottom row 0 0 0 1), via the 3x3 adjugate."""
    (a, b, c), (d, e, f), (g, h, i) = (m[r][:3] for r in range(3))
    co = [
        [e * i - f * h, c * h - b * i, b * f - c * e],
        [f * g - d * i, a * i - c * g, c * d - a * f],
        [d * h - e * g, b * g - a * h, a * e - b * d],
    ]
    det = a * co[0][0] + b * co[1][0] + c * co[2][0]
    if abs(det) < 1e-12:
        raise PoseError(f"The {what} has zero scale on some axis: give it a non-zero scale.")
    inv3 = [[co[r][k] / det for k in range(3)] for r in range(3)]
    t = [m[r][3] for r in range(3)]
    out = [inv3[r] + [-sum(inv3[r][k] * t[k] for k in range(3))] for r in range(3)]
    return out + [[0.0, 0.0, 0.0, 1.0]]


def _normalize(v, what):
    n = math.sqrt(sum(x * x for x in v))
    if n < 1e-12 or not math.isfinite(n):
        raise PoseError(f"The {what} is degenerate (zero scale): give it a non-zero scale.")
    return [x / n for x in v]


def orthonormalize(rot3):
    """Closest-in-spirit rotation to a scaled/sheared 3x3: keep the view axis (-Z) exact, then up (+Y).

    Columns are the camera's local axes in anchor space. Gram-Schmidt in the order Z, Y keeps where
    the camera looks and where its up points; X is rebuilt as Y x Z so that det = +1 even for
    mirrored (negatively scaled) cameras or anchors.
    """
    col = [[rot3[r][c] for r in range(3)] for c in range(3)]
    z = _normalize(col[2], "camera")
    y_raw = col[1]
    d = sum(y_raw[k] * z[k] for k in range(3))
    y = _normalize([y_raw[k] - d * z[k] for k in range(3)], "camera")
    x = [y[1] * z[2] - y[2] * z[1], y[2] * z[0] - y[0] * z[2], y[0] * z[1] - y[1] * z[0]]
    return [[x[r], y[r], z[r]] for r in range(3)]


def camera_to_anchor(camera_matrix_world, anchor_matrix_world=None):
    """Row-major 4x4 list: ``inv(anchor) @ camera`` with the rotation made orthonormal.

    The anchor's scale divides distances (a subject scaled 2x is "seen from half as far"), the
    camera's own scale is meaningless for a pose and dropped.
    """
    cam = _rows(camera_matrix_world)
    anchor = IDENTITY if anchor_matrix_world is None else _rows(anchor_matrix_world)
    for m, what in ((cam, "camera"), (anchor, "anchor")):
        if not all(math.isfinite(x) for row in m for x in row):
            raise PoseError(f"The {what}'s transform has non-finite values: reset its transform.")
    rel = _matmul(_affine_inverse(anchor), cam)
    rot = orthonormalize([row[:3] for row in rel[:3]])
    return [rot[r] + [rel[r][3]] for r in range(3)] + [[0.0, 0.0, 0.0, 1.0]]


def sensor_fit_for(sensor_fit, frame_width, frame_height):
    """Resolve Blender's 'AUTO' fit the way Blender does: the larger frame dimension fits the sensor."""
    if sensor_fit == "AUTO":
        return "HORIZONTAL" if frame_width >= frame_height else "VERTICAL"
    return sensor_fit


def fov_y_deg(lens, sensor_width, sensor_height, sensor_fit, frame_width, frame_height):
    """Vertical field of view of a perspective Blender camera for a frame of the given aspect.

    ``frame_width/height`` are the displayed frame (resolution x pixel aspect). In AUTO mode
    Blender uses ``sensor_width`` for whichever side is larger; in HORIZONTAL/VERTICAL mode the
    named sensor dimension spans that side of the frame.
    """
    if lens <= 0:
        raise PoseError("The camera's focal length must be positive.")
    if frame_width <= 0 or frame_height <= 0:
        raise PoseError("The output resolution must be positive.")
    fit = sensor_fit_for(sensor_fit, frame_width, frame_height)
    if fit == "VERTICAL":
        sensor = sensor_width if sensor_fit == "AUTO" else sensor_height
        half_tan = sensor / (2.0 * lens)
    else:
        half_tan = sensor_width / (2.0 * lens) * frame_height / frame_width
    return math.degrees(2.0 * math.atan(half_tan))


def camera_fov_y_deg(camera_data, frame_width, frame_height):
    """`fov_y_deg` for a ``bpy.types.Camera``; refuses camera types the method cannot express."""
    if camera_data.type != "PERSP":
        raise PoseError(
            f"Camera '{camera_data.name}' is {camera_data.type.lower()}: ViewNeTI needs a "
            "perspective camera (Camera properties > Lens > Type: Perspective)."
        )
    return fov_y_deg(
        camera_data.lens,
        camera_data.sensor_width,
        camera_data.sensor_height,
        camera_data.sensor_fit,
        frame_width,
        frame_height,
    )


def _round_size(x):
    x = int(math.floor(x / SIZE_MULTIPLE + 0.5)) * SIZE_MULTIPLE  # half up, not to even
    return max(MIN_SIZE, min(MAX_SIZE, x))


def render_size(frame_width, frame_height, long_side):
    """Image size for a request: the frame's aspect, the given long side, multiples of SIZE_MULTIPLE in [MIN_SIZE, MAX_SIZE]."""
    if frame_width <= 0 or frame_height <= 0:
        raise PoseError("The output resolution must be positive.")
    long_side = _round_size(long_side)
    if frame_width >= frame_height:
        return long_side, _round_size(long_side * frame_height / frame_width)
    return _round_size(long_side * frame_width / frame_height), long_side


def scene_frame_size(render_settings):
    """Displayed frame size of a scene (``scene.render``): resolution times pixel aspect."""
    return (
        render_settings.resolution_x * render_settings.pixel_aspect_x,
        render_settings.resolution_y * render_settings.pixel_aspect_y,
    )


def camera_payload(camera_object, anchor_object, render_settings, long_side):
    """The ``camera`` object of a request for a Blender camera object, from the current frame."""
    frame_w, frame_h = scene_frame_size(render_settings)
    width, height = render_size(frame_w, frame_h, long_side)
    anchor = None if anchor_object is None else anchor_object.matrix_world
    return {
        "camera_to_anchor": camera_to_anchor(camera_object.matrix_world, anchor),
        "fov_y_deg": camera_fov_y_deg(camera_object.data, frame_w, frame_h),
        "width": width,
        "height": height,
    }


def pose_key(payload, digits=5):
    """Hashable, rounded signature of a camera payload, so float noise does not count as a move."""
    m = tuple(round(x, digits) for row in payload["camera_to_anchor"] for x in row)
    return m + (round(payload["fov_y_deg"], digits), payload["width"], payload["height"])
