"""Cameras: the one convention of the project and every conversion to and from it.

Everything user-facing (wire format, datasets we write, the Blender add-on) uses **Blender's
convention**: right-handed world with +Z up; a camera looks down its local -Z axis with +Y up
(OpenGL); a pose is the 4x4 camera-to-world matrix. Poses are taken relative to an *anchor* (the
scene's subject): ``camera_to_anchor = inv(anchor_to_world) @ camera_to_world``.

OpenCV-style data (DTU, COLMAP) looks down +Z with +Y down and stores world-to-camera; the
conversions live here and nowhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# Flip between an OpenGL/Blender camera frame (-Z forward, +Y up) and an OpenCV one (+Z forward, +Y down).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

ORTHONORMAL_TOLERANCE = 1e-3
MIN_SIZE, MAX_SIZE = 16, 2048


class CameraError(InputError):
    """A camera that cannot be used, with a message that says what to fix."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: anchor-relative pose (Blender convention), vertical field of view, image size."""

    camera_to_anchor: np.ndarray
    fov_y_deg: float = 39.6
    width: int = 512
    height: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera_to_anchor", np.asarray(self.camera_to_anchor, dtype=np.float64))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Camera:
        """Build and validate a camera from the wire format (see server/API.md)."""
        if not isinstance(data, dict):
            raise CameraError("camera must be an object with camera_to_anchor, fov_y_deg, width, height")
        missing = [k for k in ("camera_to_anchor",) if k not in data]
        if missing:
            raise CameraError(f"camera is missing {', '.join(missing)}: send a 4x4 row-major camera_to_anchor matrix")
        cam = cls(
            camera_to_anchor=_as_matrix(data["camera_to_anchor"]),
            fov_y_deg=float(data.get("fov_y_deg", 39.6)),
            width=int(data.get("width", 512)),
            height=int(data.get("height", 512)),
        )
        return cam.validated()

    def to_json(self) -> dict[str, Any]:
        return {
            "camera_to_anchor": self.camera_to_anchor.tolist(),
            "fov_y_deg": float(self.fov_y_deg),
            "width": int(self.width),
            "height": int(self.height),
        }

    def validated(self, *, size_multiple: int = 8) -> Camera:
        validate_pose(self.camera_to_anchor)
        if not math.isfinite(self.fov_y_deg) or not 0.0 < self.fov_y_deg < 180.0:
            raise CameraError(f"fov_y_deg must be in (0, 180) degrees, got {self.fov_y_deg}")
        for name, v in (("width", self.width), ("height", self.height)):
            if not MIN_SIZE <= v <= MAX_SIZE:
                raise CameraError(f"{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {v}")
            if v % size_multiple:
                raise CameraError(f"{name} must be a multiple of {size_multiple} (the model's latent grid), got {v}")
        return self

    # -- derived quantities --------------------------------------------------------------------
    @property
    def fov_x_deg(self) -> float:
        return fov_x_from_fov_y(self.fov_y_deg, self.width, self.height)

    @property
    def position(self) -> np.ndarray:
        return self.camera_to_anchor[:3, 3].copy()

    def intrinsics(self) -> np.ndarray:
        """OpenCV 3x3 intrinsics K in pixels (principal point at the image centre)."""
        return intrinsics_from_fov(self.fov_y_deg, self.width, self.height)

    def world_to_camera_cv(self) -> np.ndarray:
        return blender_c2w_to_opencv_w2c(self.camera_to_anchor)

    def projection_matrix(self) -> np.ndarray:
        """3x4 pixel projection P = K [R | t] in the OpenCV convention (the DTU calibration format)."""
        return compose_projection(self.intrinsics(), self.world_to_camera_cv())

    def with_size(self, width: int, height: int) -> Camera:
        return Camera(self.camera_to_anchor, self.fov_y_deg, width, height)


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


def fov_y_from_intrinsics(k: np.ndarray, height: int) -> float:
    return math.degrees(2.0 * math.atan(0.5 * height / float(k[1, 1])))


# ------------------------------------------------------------------------------------------------
# Pose construction
# ------------------------------------------------------------------------------------------------
def look_at(
    eye: Sequence[float], target: Sequence[float] = (0.0, 0.0, 0.0), up: Sequence[float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Camera-to-world (Blender convention) of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise CameraError("look_at: eye and target coincide")
    forward /= norm
    up = np.asarray(up, dtype=np.float64)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: pick any perpendicular
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -forward, eye
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
    k, w2c = decompose_projection(p)
    c2w = opencv_w2c_to_blender_c2w(w2c)
    return Camera(camera_to_anchor(c2w, anchor_to_world), fov_y_from_intrinsics(k, height), width, height)


# ------------------------------------------------------------------------------------------------
# nerfstudio / Blender-NeRF transforms.json
# ------------------------------------------------------------------------------------------------
@dataclass
class TransformsFrame:
    file_path: str
    camera: Camera
    mask_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_transforms_json(path: str | Path) -> list[TransformsFrame]:
    """Read a nerfstudio / Blender-NeRF ``transforms.json``: OpenGL camera-to-world per frame.

    Intrinsics come from ``fl_y``/``h`` (nerfstudio) or ``camera_angle_x`` (Blender-NeRF), per frame
    or shared at the top level.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: expected a non-empty 'frames' list")
    out = []
    for i, fr in enumerate(frames):
        merged = {**data, **fr}
        if "transform_matrix" not in fr or "file_path" not in fr:
            raise InputError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'")
        w = int(merged.get("w", 0) or 0)
        h = int(merged.get("h", 0) or 0)
        if "fl_y" in merged and h:
            fov_y = math.degrees(2 * math.atan(0.5 * h / float(merged["fl_y"])))
        elif "camera_angle_y" in merged:
            fov_y = math.degrees(float(merged["camera_angle_y"]))
        elif "camera_angle_x" in merged:
            if not (w and h):
                w = h = 1  # aspect unknown until the image is read; square by default
            fov_y = fov_y_from_fov_x(math.degrees(float(merged["camera_angle_x"])), w, h)
        else:
            raise InputError(f"{path}: frame {i} has no intrinsics (fl_y+h, camera_angle_x or camera_angle_y)")
        cam = Camera(np.asarray(fr["transform_matrix"], dtype=np.float64), fov_y, w or 512, h or 512)
        validate_pose(cam.camera_to_anchor, tolerance=1e-2)
        extra = {k: v for k, v in fr.items() if k not in ("file_path", "transform_matrix", "mask_path")}
        out.append(TransformsFrame(fr["file_path"], cam, fr.get("mask_path"), extra))
    return out


def write_transforms_json(
    path: str | Path, frames: Sequence[TransformsFrame], extra: dict[str, Any] | None = None
) -> None:
    """Write a nerfstudio-style ``transforms.json`` (per-frame fl_x/fl_y/cx/cy/w/h, OpenGL poses)."""
    rows = []
    for fr in frames:
        k = fr.camera.intrinsics()
        row = {
            "file_path": fr.file_path,
            "transform_matrix": fr.camera.camera_to_anchor.tolist(),
            "fl_x": k[0, 0],
            "fl_y": k[1, 1],
            "cx": k[0, 2],
            "cy": k[1, 2],
            "w": fr.camera.width,
            "h": fr.camera.height,
        }
        if fr.mask_path:
            row["mask_path"] = fr.mask_path
        row.update(fr.extra)
        rows.append(row)
    data = {"camera_model": "OPENCV", "frames": rows, **(extra or {})}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
