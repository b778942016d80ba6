"""Cameras: the one convention of the project and every conversion to and from it.

Everything user-facing (wire format, datasets we write, the Blender add-on) uses **Blender's
convention**: right-handed world with +Z up; a camera looks down its local -Z axis with +Y up
(OpenGL); a pose is the 4x4 camera-to-world matrix. Poses are taken relative to an *anchor* (the
scene's subject): ``camera_to_anchor = inv(anchor_to_world) @ camera_to_world``.

OpenCV-style data (DTU, COLMAP) looks down +Z with +Y down and stores world-to-camera; the
conversions live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .limits import MIN_FOV_DEG, MIN_SIZE, SIZE_MULTIPLE, size_error

# Flip between an OpenGL/Blender camera frame (-Z forward, +Y up) and an OpenCV one (+Z forward, +Y down).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

ORTHONORMAL_TOLERANCE = 1e-3


class CameraError(InputError):
    """A camera that cannot be used, with a message that says what to fix."""


INTRINSIC_FIELDS = ("fx", "fy", "cx", "cy")
# How far fov_y_deg may disagree with an explicit fy (degrees) before a camera is refused as contradictory.
FOV_FY_TOLERANCE_DEG = 1e-4
# Largest skew (relative to fx) a decomposed projection may carry; it is dropped (0.3 px at DTU's fx).
MAX_RELATIVE_SKEW = 1e-4


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: anchor-relative pose (Blender convention), vertical field of view, image size.

    ``fx, fy, cx, cy`` (pixels, OpenCV convention, at ``width x height``) are optional full
    intrinsics for cameras that have them (DTU's calibrated P, nerfstudio's fl_x/cx). Each one left
    out is derived as before: fy from ``fov_y_deg``, fx = fy (square pixels), the principal point at
    the image centre. When fy is given, ``fov_y_deg`` must agree with it (``from_json`` and
    :meth:`from_intrinsics` derive it).
    """

    camera_to_anchor: np.ndarray
    fov_y_deg: float = 39.6
    width: int = 512
    height: int = 512
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera_to_anchor", np.asarray(self.camera_to_anchor, dtype=np.float64))
        for name in INTRINSIC_FIELDS:
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, float(v))
        if self.calibration is not None:
            self.calibration.check_matches(self)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_intrinsics(cls, camera_to_anchor: np.ndarray, k: np.ndarray, width: int, height: int) -> Camera:
        """A camera with the full 3x3 intrinsics ``k`` (pixels at width x height).

        Skew is not modelled: a residual skew up to MAX_RELATIVE_SKEW * fx (what decomposing a
        calibrated, printed P leaves, e.g. DTU's) is dropped; more is refused."""
        k = np.asarray(k, dtype=np.float64)
        if k.shape != (3, 3):
            raise CameraError(f"intrinsics must be a 3x3 matrix, got shape {k.shape}")
        if not abs(k[0, 1]) <= MAX_RELATIVE_SKEW * abs(k[0, 0]):
            raise CameraError(
                f"intrinsics with skew {k[0, 1]:.6g} px (more than {MAX_RELATIVE_SKEW:g} x fx) are not supported: "
                "use a zero-skew camera"
            )
        fy = float(k[1, 1])
        fov = fov_y_from_intrinsics(k, height) if math.isfinite(fy) and fy > 0 else float("nan")
        return cls(camera_to_anchor, fov, width, height, float(k[0, 0]), fy, float(k[0, 2]), float(k[1, 2]))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Camera:
        """Build and validate a camera from the wire format (see server/API.md)."""
        if not isinstance(data, dict):
            raise CameraError("camera must be an object with camera_to_anchor, fov_y_deg, width, height")
        missing = [k for k in ("camera_to_anchor",) if k not in data]
        if missing:
            raise CameraError(f"camera is missing {', '.join(missing)}: send a 4x4 row-major camera_to_anchor matrix")
        width, height = int(data.get("width", 512)), int(data.get("height", 512))
        intr: dict[str, float | None] = {}
        for name in INTRINSIC_FIELDS:
            v = data.get(name)
            if v is not None:
                try:
                    intr[name] = float(v)
                except (TypeError, ValueError):
                    raise CameraError(f"camera {name} must be a number of pixels, got {v!r}") from None
        fy = intr.get("fy")
        if "fov_y_deg" in data and data["fov_y_deg"] is not None:
            fov_y = float(data["fov_y_deg"])
        elif fy is not None and math.isfinite(fy) and fy > 0:
            fov_y = fov_from_focal(fy, height)  # fy alone defines the vertical fov
        else:
            fov_y = 39.6
        cam = cls(
            _as_matrix(data["camera_to_anchor"]),
            fov_y,
            width,
            height,
            fx=intr.get("fx"),
            fy=intr.get("fy"),
            cx=intr.get("cx"),
            cy=intr.get("cy"),
        )
        return cam.validated()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "camera_to_anchor": self.camera_to_anchor.tolist(),
            "fov_y_deg": float(self.fov_y_deg),
            "width": int(self.width),
            "height": int(self.height),
        }
        for name in INTRINSIC_FIELDS:  # only the explicit ones: a plain camera's wire format is unchanged
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v)
        return out

    def validated(self, *, size_multiple: int = SIZE_MULTIPLE) -> Camera:
        validate_pose(self.camera_to_anchor)
        problem = fov_error("fov_y_deg", self.fov_y_deg)
        if problem:
            raise CameraError(problem)
        for name, v in (("width", self.width), ("height", self.height)):
            problem = size_error(name, v, size_multiple)
            if problem:
                raise CameraError(problem)
        self._check_intrinsics()
        return self

    def _check_intrinsics(self) -> None:
        for name in INTRINSIC_FIELDS:
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0.0):
                raise CameraError(
                    f"camera {name} must be a finite positive number of pixels, got {v}: "
                    f"leave it out to derive it ({'from fov_y_deg' if name[0] == 'f' else 'the image centre'})"
                )
        if self.fy is not None:
            implied = math.degrees(2.0 * math.atan(0.5 * self.height / self.fy))
            if abs(implied - self.fov_y_deg) > FOV_FY_TOLERANCE_DEG:
                raise CameraError(
                    f"fov_y_deg {self.fov_y_deg:.6g} disagrees with fy {self.fy:.6g} px at height {self.height} "
                    f"(which means fov_y_deg {implied:.6g}): send fy alone or make them agree"
                )

    # -- derived quantities --------------------------------------------------------------------
    @property
    def has_intrinsics(self) -> bool:
        """True when any of fx, fy, cx, cy was given (not all derived from fov_y_deg)."""
        return any(getattr(self, n) is not None for n in INTRINSIC_FIELDS)

    @property
    def fov_x_deg(self) -> float:
        if self.fx is not None:
            return math.degrees(2.0 * math.atan(0.5 * self.width / self.fx))
        return fov_x_from_fov_y(self.fov_y_deg, self.width, self.height)

    @property
    def position(self) -> np.ndarray:
        return self.camera_to_anchor[:3, 3].copy()

    def intrinsics(self) -> np.ndarray:
        """OpenCV 3x3 intrinsics K in pixels: the explicit fx, fy, cx, cy, each missing one derived
        (fy from fov_y_deg, fx = fy, principal point at the image centre)."""
        k = intrinsics_from_fov(self.fov_y_deg, self.width, self.height)
        fy = self.fy if self.fy is not None else float(k[1, 1])
        k[0, 0] = self.fx if self.fx is not None else fy
        k[1, 1] = fy
        if self.cx is not None:
            k[0, 2] = self.cx
        if self.cy is not None:
            k[1, 2] = self.cy
        return k

    def intrinsics_key(self) -> tuple[float, ...]:
        """Size-independent intrinsics (fov_y and K's entries over the image size), for caches."""
        k = self.intrinsics()
        w, h = float(self.width), float(self.height)
        key = (round(self.fov_y_deg, 6), *(round(v, 9) for v in (k[0, 0] / w, k[1, 1] / h, k[0, 2] / w, k[1, 2] / h)))
        if self.calibration is not None:  # the verbatim P may differ from K[R|t] in its last digits
            key += (hash(self.calibration.projection.tobytes()),)
        return key

    def world_to_camera_cv(self) -> np.ndarray:
        return blender_c2w_to_opencv_w2c(self.camera_to_anchor)

    def projection_matrix(self) -> np.ndarray:
        """3x4 pixel projection P = K [R | t] in the OpenCV convention (the DTU calibration format).

        A calibrated camera returns its file's P verbatim at the calibration's image size (scaled
        rows 1-2 at other sizes), not the K[R|t] rebuilt from it."""
        if self.calibration is not None:
            return self.calibration.at_size(self.width, self.height)
        return compose_projection(self.intrinsics(), self.world_to_camera_cv())

    def with_size(self, width: int, height: int) -> Camera:
        """The same camera at another image size: explicit intrinsics scale with the image (x with the
        width, y with the height), the field of view is kept, as when the image is resized."""
        sx, sy = width / self.width, height / self.height

        def scaled(v: float | None, s: float) -> float | None:
            return None if v is None else v * s

        return Camera(
            self.camera_to_anchor,
            self.fov_y_deg,
            width,
            height,
            scaled(self.fx, sx),
            scaled(self.fy, sy),
            scaled(self.cx, sx),
            scaled(self.cy, sy),
            self.calibration,
        )

    def cropped(self, box: tuple[float, float, float, float], width: int, height: int) -> Camera:
        """The camera of the image region ``box`` = (left, top, right, bottom), in pixels of this
        camera's image (fractions allowed), resampled to ``width x height``: what a crop-and-resize of
        the image shows. Intrinsics equal to the derived defaults (square pixels, centred principal
        point) stay implicit; fov_y follows the crop. A calibrated P no longer applies: dropped."""
        left, top, right, bottom = (float(v) for v in box)
        if not (right > left and bottom > top):
            raise CameraError(f"a crop box needs right > left and bottom > top, got {box}")
        sx, sy = width / (right - left), height / (bottom - top)
        k = self.intrinsics()
        fx, fy = float(k[0, 0]) * sx, float(k[1, 1]) * sy
        cx, cy = (float(k[0, 2]) - left) * sx, (float(k[1, 2]) - top) * sy
        return pinhole_camera(self.camera_to_anchor, width, height, fx, fy, cx, cy)

    def framed(self, width: int, height: int) -> Camera:
        """This camera at ``width x height`` without squashing: its image's largest centred region of
        that aspect (:func:`centre_crop_box`), resampled (at the image's own aspect: all of it)."""
        return self.cropped(centre_crop_box(self.width, self.height, width / height), width, height)

    def with_pose(self, camera_to_anchor: np.ndarray) -> Camera:
        """The same lens and image at another pose (a calibrated P no longer applies: dropped)."""
        return dataclasses.replace(self, camera_to_anchor=camera_to_anchor, calibration=None)


# How far a carried calibration P may differ from the camera's own K[R|t] (relative to its largest
# entry) before the camera is refused as contradictory: decomposition round-off and a printed P's
# residual skew are ~1e-8.
CALIBRATION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Calibration:
    """A calibrated 3x4 projection kept verbatim (e.g. a DTU ``pos_XXX.txt``), at its image size.

    Features that read P (dtu-12d) then see the file's numbers exactly, not a K[R|t] rebuilt from
    the decomposed camera (which differs in the last digits and drops the skew).
    """

    projection: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        p = np.array(self.projection, dtype=np.float64)
        if p.shape != (3, 4) or not np.all(np.isfinite(p)):
            raise CameraError(f"a calibration projection must be a finite 3x4 matrix, got shape {p.shape}")
        p.setflags(write=False)
        object.__setattr__(self, "projection", p)

    def at_size(self, width: int, height: int) -> np.ndarray:
        if (width, height) == (self.width, self.height):
            return self.projection.copy()
        return np.diag([width / self.width, height / self.height, 1.0]) @ self.projection

    def check_matches(self, cam: Camera) -> None:
        p = self.at_size(cam.width, cam.height)
        scale = np.linalg.norm(p[2, :3]) * np.sign(np.linalg.det(p[:, :3]))
        own = compose_projection(cam.intrinsics(), cam.world_to_camera_cv())
        err = float(np.abs(p / scale - own).max() / max(np.abs(own).max(), 1e-12))
        if not err <= CALIBRATION_TOLERANCE:
            raise CameraError(
                f"the camera's calibration P does not match its pose and intrinsics (relative error {err:.3g}): "
                "a moved camera must drop its calibration (Camera.with_pose)"
            )


def _differs(a: float | None, b: float) -> bool:
    """``a`` is given and not ``b`` (up to round-off): an intrinsic worth keeping explicit."""
    return a is not None and abs(a - b) > 1e-9 * max(1.0, abs(b))


def pinhole_camera(
    camera_to_anchor: np.ndarray,
    width: int,
    height: int,
    fx: float,
    fy: float,
    cx: float | None = None,
    cy: float | None = None,
) -> Camera:
    """The camera with these pixel intrinsics (``cx``/``cy`` None: the image centre). fov_y comes from
    fy; fx and the principal point stay implicit where they equal the derived defaults (square pixels,
    centred), so a plain camera stays plain."""
    return Camera(
        np.asarray(camera_to_anchor, dtype=np.float64),
        math.degrees(2.0 * math.atan(0.5 * height / fy)),
        width,
        height,
        fx if _differs(fx, fy) else None,
        None,  # fy is fov_y exactly
        cx if _differs(cx, width / 2.0) else None,
        cy if _differs(cy, height / 2.0) else None,
    )


def _as_matrix(value: Any) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CameraError(f"camera_to_anchor must be a 4x4 list of numbers: {exc}") from None
    if m.shape != (4, 4):
        raise CameraError(f"camera_to_anchor must be 4x4 (row-major list of 4 rows of 4 numbers), got shape {m.shape}")
    return m


def validate_pose(camera_to_world: np.ndarray, tolerance: float = ORTHONORMAL_TOLERANCE) -> None:
    """Raise CameraError unless the matrix is a finite rigid transform (orthonormal rotation, det +1)."""
    m = np.asarray(camera_to_world, dtype=np.float64)
    if m.shape != (4, 4):
        raise CameraError(f"a pose must be a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise CameraError("camera_to_anchor contains NaN or infinity: send finite numbers")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise CameraError(f"the bottom row of camera_to_anchor must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > tolerance:
        raise CameraError(
            f"the rotation part of camera_to_anchor is not orthonormal (max error {err:.3g} > {tolerance}): "
            "remove scale and shear from the camera and anchor (in Blender: apply scale, or send "
            "matrix_world.normalized())"
        )
    if np.linalg.det(r) < 0:
        raise CameraError("the rotation part of camera_to_anchor is a reflection (det < 0): use a right-handed pose")


# ------------------------------------------------------------------------------------------------
# Field of view and intrinsics
# ------------------------------------------------------------------------------------------------
def fov_error(what: str, fov_deg: float) -> str | None:
    """Why ``fov_deg`` is not a usable field of view (degrees), or None."""
    if not (math.isfinite(fov_deg) and MIN_FOV_DEG <= fov_deg < 180.0):
        return f"{what} must be in [{MIN_FOV_DEG}, 180) degrees, got {fov_deg}"
    return None


def fov_x_from_fov_y(fov_y_deg: float, width: int, height: int) -> float:
    return math.degrees(2.0 * math.atan(math.tan(math.radians(fov_y_deg) / 2.0) * width / height))


def fov_y_from_fov_x(fov_x_deg: float, width: int, height: int) -> float:
    return math.degrees(2.0 * math.atan(math.tan(math.radians(fov_x_deg) / 2.0) * height / width))


def intrinsics_from_fov(fov_y_deg: float, width: int, height: int) -> np.ndarray:
    fy = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
    return np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def size_for_long_side(width: int, height: int, long_side: int, multiple: int = 8) -> tuple[int, int]:
    """(w, h) with the aspect of ``width x height``, the long side ``long_side``, both multiples of
    ``multiple`` (the latent grid) and at least MIN_SIZE: how a non-square camera is resized."""
    scale = long_side / max(width, height)

    def snap(v: float) -> int:
        return max(MIN_SIZE, int(math.floor(v / multiple + 0.5)) * multiple)  # half up: 36 -> 40

    return snap(width * scale), snap(height * scale)


def centre_crop_box(width: int, height: int, aspect: float) -> tuple[float, float, float, float]:
    """The largest centred region of a ``width x height`` image whose width / height is ``aspect``
    (left, top, right, bottom; fractional pixels): what is kept when an image changes its aspect
    without being squashed."""
    if width / height > aspect:  # wider than wanted: trim left and right
        w = height * aspect
        return ((width - w) / 2.0, 0.0, (width + w) / 2.0, float(height))
    h = width / aspect
    return (0.0, (height - h) / 2.0, float(width), (height + h) / 2.0)


def fov_from_focal(focal: float, size: int) -> float:
    """The field of view in degrees of a focal length in pixels across an image side of ``size`` pixels."""
    return math.degrees(2.0 * math.atan(0.5 * size / focal))


def fov_y_from_intrinsics(k: np.ndarray, height: int) -> float:
    return fov_from_focal(float(k[1, 1]), height)


# ------------------------------------------------------------------------------------------------
# Pose construction
# ------------------------------------------------------------------------------------------------
def look_at(
    eye: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0),
    up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """Camera-to-world (Blender convention) of a camera at ``eye`` looking at ``target``."""
    eye_v = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye_v
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise CameraError("look_at: eye and target coincide")
    forward /= norm
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: pick any perpendicular
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -forward, eye_v
    return m


def orbit_pose(
    azimuth_deg: float, elevation_deg: float, radius: float, target: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Camera on a sphere around ``target``: azimuth 0 looks from -Y towards +Y (Blender's front view),
    increasing azimuth moves the camera counter-clockwise seen from above (+Z)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    offset = radius * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    return look_at(np.asarray(target, dtype=np.float64) + offset, target)


def pose_to_orbit(camera_to_anchor: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`orbit_pose` for the camera position: (azimuth_deg, elevation_deg, radius)."""
    x, y, z = np.asarray(camera_to_anchor, dtype=np.float64)[:3, 3]
    radius = float(math.sqrt(x * x + y * y + z * z))
    elevation = math.degrees(math.asin(z / radius)) if radius > 0 else 0.0
    azimuth = math.degrees(math.atan2(x, -y))
    return azimuth, elevation, radius


def camera_to_anchor(camera_to_world: np.ndarray, anchor_to_world: np.ndarray | None = None) -> np.ndarray:
    """Pose relative to the anchor; the anchor's (uniform) scale normalises distances, its rotation is kept."""
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    c2w = remove_scale(c2w)
    if anchor_to_world is None:
        return c2w
    return np.linalg.inv(np.asarray(anchor_to_world, dtype=np.float64)) @ c2w


def remove_scale(matrix: np.ndarray) -> np.ndarray:
    """Normalise the columns of the rotation block (Blender cameras often carry object scale)."""
    m = np.array(matrix, dtype=np.float64)
    norms = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(norms < 1e-12):
        raise CameraError("a camera with zero scale has no orientation")
    m[:3, :3] /= norms
    return m


# ------------------------------------------------------------------------------------------------
# OpenCV / DTU / COLMAP
# ------------------------------------------------------------------------------------------------
def blender_c2w_to_opencv_w2c(camera_to_world: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(camera_to_world, dtype=np.float64) @ GL_TO_CV)


def opencv_w2c_to_blender_c2w(world_to_camera: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64)) @ GL_TO_CV


def compose_projection(k: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    return np.asarray(k, dtype=np.float64) @ np.asarray(world_to_camera, dtype=np.float64)[:3, :4]


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection P = K [R|t] into K (positive diagonal, K[2,2]=1) and the 4x4 world-to-camera."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (3, 4):
        raise CameraError(f"a projection matrix must be 3x4, got {p.shape}")
    if np.linalg.det(p[:, :3]) < 0:  # projective scale is free: pick the sign that gives det(R) = +1
        p = -p
    flip = np.eye(3)[::-1]  # RQ decomposition through QR of the row-reversed transpose
    q, r = np.linalg.qr((flip @ p[:, :3]).T)
    k_raw, rot = flip @ r.T @ flip, flip @ q.T
    signs = np.diag(np.sign(np.diag(k_raw)))
    k_raw, rot = k_raw @ signs, signs @ rot
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = np.linalg.solve(k_raw, p[:, 3])
    k = k_raw / k_raw[2, 2]
    return k, w2c


def read_dtu_projection(path: str | Path) -> np.ndarray:
    """Read a DTU ``pos_XXX.txt`` calibration file (3x4 pixel projection of the 1600x1200 images)."""
    values = [float(v) for v in Path(path).read_text().split()]
    if len(values) != 12:
        raise InputError(f"{path}: a DTU calibration file holds 12 numbers (3x4), found {len(values)}")
    return np.asarray(values, dtype=np.float64).reshape(3, 4)


def dtu_projection_to_camera(
    p: np.ndarray, width: int = 1600, height: int = 1200, anchor_to_world: np.ndarray | None = None
) -> Camera:
    """The camera of a DTU projection with its full intrinsics (fx, fy, cx, cy from P's K); in DTU's own
    frame (no anchor) it also carries P verbatim (:class:`Calibration`)."""
    k, w2c = decompose_projection(p)
    c2w = opencv_w2c_to_blender_c2w(w2c)
    cam = Camera.from_intrinsics(camera_to_anchor(c2w, anchor_to_world), k, width, height)
    if anchor_to_world is None:
        cam = dataclasses.replace(cam, calibration=Calibration(np.asarray(p, dtype=np.float64), width, height))
    return cam


# ------------------------------------------------------------------------------------------------
# nerfstudio / Blender-NeRF transforms.json
# ------------------------------------------------------------------------------------------------
# The camera's own keys in a transforms.json (top level: shared; per frame: overrides). Everything else
# a frame carries goes to TransformsFrame.extra and back, and can never override these.
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
FRAME_KEYS = ("file_path", "transform_matrix", "mask_path")
CAMERA_KEYS = INTRINSIC_KEYS + DISTORTION_KEYS + FRAME_KEYS


@dataclass
class TransformsFrame:
    """One frame: image path, camera (full pinhole intrinsics), optional mask, the lens distortion as
    read (k1 k2 k3 k4 p1 p2: kept and written back; the data loader undistorts the images with it,
    :mod:`.undistort`), and every other key."""

    file_path: str
    camera: Camera
    mask_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    distortion: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.extra = {k: v for k, v in self.extra.items() if k not in CAMERA_KEYS}


@dataclass
class TransformsFile:
    """A whole transforms.json: its frames and every top-level key but ``frames`` (kept on write)."""

    frames: list[TransformsFrame]
    meta: dict[str, Any] = field(default_factory=dict)


def camera_from_transforms_fields(
    camera_to_anchor: np.ndarray, fields: dict[str, Any], width: int, height: int, where: str = "transforms.json"
) -> Camera:
    """The pinhole camera of nerfstudio / instant-ngp / Blender-NeRF intrinsics at ``width x height``.

    ``fl_x``/``fl_y`` (pixels) come first, then ``camera_angle_x``/``camera_angle_y`` (radians, full
    angles); a missing focal length equals the other one (square pixels); ``cx``/``cy`` default to the
    image centre. Values equal to the derived defaults stay implicit, so a plain camera stays plain."""

    def num(key: str) -> float | None:
        v = fields.get(key)
        if v is None:
            return None
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{where}: '{key}' must be a number, got {v!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{where}: '{key}' must be a positive number, got {v!r}")
        return v

    fx, fy = num("fl_x"), num("fl_y")
    ax, ay = num("camera_angle_x"), num("camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * width / math.tan(ax / 2.0)
    if fy is None and ay is not None:
        fy = 0.5 * height / math.tan(ay / 2.0)
    if fx is None and fy is None:
        raise InputError(f"{where}: no intrinsics: give fl_x/fl_y (pixels) or camera_angle_x/camera_angle_y (radians)")
    fx = fx if fx is not None else fy
    fy = fy if fy is not None else fx
    assert fx is not None and fy is not None
    return pinhole_camera(camera_to_anchor, width, height, fx, fy, num("cx"), num("cy"))


def transforms_image_path(root: Path, file_path: str) -> Path:
    """A frame's image: the path as written, or with .png/.jpg added (Blender-NeRF leaves it out)."""
    file = root / file_path
    if not file.suffix and not file.exists():
        file = next((file.with_suffix(s) for s in (".png", ".jpg") if file.with_suffix(s).exists()), file)
    return file


def image_file_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header (the pixels are not decoded), or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def read_transforms(path: str | Path) -> TransformsFile:
    """Read a nerfstudio / instant-ngp / Blender-NeRF ``transforms.json`` (OpenGL camera-to-world).

    Intrinsics and distortion are shared at the top level and may be overridden per frame (nerfstudio's
    rule). A frame without ``w``/``h`` (Blender-NeRF and NeRF-synthetic give ``camera_angle_x`` only)
    takes its size from its image file's header, read only then: an angle means nothing without the
    size (fov_y follows from the aspect), so an unreadable image is an error, never a guess."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with a 'frames' list")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: expected a non-empty 'frames' list")
    top = {k: data[k] for k in INTRINSIC_KEYS + DISTORTION_KEYS if k in data}
    out = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "transform_matrix" not in fr or "file_path" not in fr:
            raise InputError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        merged = {**top, **{k: fr[k] for k in INTRINSIC_KEYS + DISTORTION_KEYS if k in fr}}
        w, h = int(merged.get("w") or 0), int(merged.get("h") or 0)
        if not (w and h):
            image = transforms_image_path(path.parent, str(fr["file_path"]))
            size = image_file_size(image)
            if size is None:
                raise InputError(
                    f"{path}: frame {i} gives no image size (w, h) and its image {image} cannot be read to find "
                    'it: put the image there or add "w" and "h" (pixels) to the file'
                )
            w, h = size
        try:
            matrix = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: frame {i} transform_matrix must be a 4x4 list of numbers") from None
        if matrix.shape != (4, 4):
            raise InputError(f"{path}: frame {i} transform_matrix must be 4x4, got shape {matrix.shape}")
        validate_pose(matrix, tolerance=1e-2)
        intrinsics = {k: merged[k] for k in INTRINSIC_KEYS if k in merged}
        cam = camera_from_transforms_fields(matrix, intrinsics, w, h, where=f"{path}: frame {i}")
        distortion = {}
        for k in DISTORTION_KEYS:
            if k in merged:
                try:
                    distortion[k] = float(merged[k])
                except (TypeError, ValueError):
                    raise InputError(
                        f"{path}: frame {i} distortion '{k}' must be a number, got {merged[k]!r}"
                    ) from None
        out.append(TransformsFrame(str(fr["file_path"]), cam, fr.get("mask_path"), dict(fr), distortion))
    return TransformsFile(out, {k: v for k, v in data.items() if k != "frames"})


def read_transforms_json(path: str | Path) -> list[TransformsFrame]:
    """The frames of a ``transforms.json`` (see :func:`read_transforms`, which also keeps the top level)."""
    return read_transforms(path).frames


def transforms_rows(frames: Sequence[TransformsFrame]) -> list[dict[str, Any]]:
    """Per-frame JSON rows: the frame's other keys, then its camera, mask and distortion. ``extra`` keys
    that name those (even ones added to ``extra`` after the frame was made) are left out: they would
    change the mask or the distortion when the file is read back."""
    rows = []
    for fr in frames:
        k = fr.camera.intrinsics()
        row: dict[str, Any] = {key: v for key, v in fr.extra.items() if key not in CAMERA_KEYS}
        row.update(
            {
                "file_path": fr.file_path,
                "transform_matrix": fr.camera.camera_to_anchor.tolist(),
                "fl_x": float(k[0, 0]),
                "fl_y": float(k[1, 1]),
                "cx": float(k[0, 2]),
                "cy": float(k[1, 2]),
                "w": int(fr.camera.width),
                "h": int(fr.camera.height),
                **{key: float(fr.distortion[key]) for key in DISTORTION_KEYS if key in fr.distortion},
            }
        )
        if fr.mask_path:
            row["mask_path"] = fr.mask_path
        rows.append(row)
    return rows


def write_transforms_json(
    path: str | Path, frames: Sequence[TransformsFrame], extra: dict[str, Any] | None = None
) -> None:
    """Write a nerfstudio-style ``transforms.json``: per-frame fl_x/fl_y/cx/cy/w/h, distortion, OpenGL
    poses. ``extra`` holds the top-level keys (e.g. :attr:`TransformsFile.meta`), kept as they are;
    ``frames`` is always these frames. Reading the result gives the same cameras, distortion, extra
    keys and top level, and writing that again gives the same bytes."""
    meta = {k: v for k, v in (extra or {}).items() if k != "frames"}
    if extra is None:  # a new file says its model; a file read back keeps exactly its own top level
        meta["camera_model"] = "OPENCV"
    data = {**meta, "frames": transforms_rows(frames)}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
