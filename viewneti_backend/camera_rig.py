"""Camera rig: drive a view-mapper trained on DTU's cameras from cameras in the anchor frame (Blender).

A DTU-trained view-mapper (dtu-12d) has only seen DTU's 64 calibrated cameras: projection matrices
in DTU's world frame (millimetres, OpenCV, +y down, the object ~0.65 m in front of the cameras)
with DTU's lens. A Blender camera around an anchor gives meaningless numbers there (entries up to
|49| against a training range of [-1, 1]). The rig is a similarity transform from the anchor frame
into DTU's frame, fitted from the calibration cameras, plus DTU's intrinsics:

- object centre: the point closest to every camera's optical axis (least squares);
- up: DTU's cameras are upright (no roll), so world up is perpendicular to every camera's image
  x axis: the least-squares such direction, signed like the cameras' image up;
- front: the mean direction from the centre to the cameras (the cap's axis), made perpendicular to
  up. The anchor's Blender front view (azimuth 0, elevation 0: a camera on -Y looking at +Y, +Z
  up) maps to the middle of DTU's camera cap;
- scale: DTU's mean camera distance corresponds to ``anchor_radius`` anchor units.

A camera without explicit intrinsics gets DTU's (the median K of the calibration), so the
mapper sees the lens it was trained with. The rig is stored in the view-mapper's config
(``camera_parameterization["rig"]``); the engine applies it to every user camera.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cameras import Camera, dtu_projection_to_camera, pose_to_orbit
from .errors import InputError

DEFAULT_ANCHOR_RADIUS = 3.6  # anchor units of DTU's mean camera distance (the CLI's default orbit radius)
DTU_SIZE = (1600, 1200)


@dataclass(frozen=True)
class CameraRig:
    """anchor frame (Blender convention, anchor units) -> DTU world frame (mm), and DTU's lens."""

    centre: tuple[float, float, float]  # the anchor's origin in DTU coordinates (mm)
    axes: tuple[tuple[float, float, float], ...]  # 3x3: columns = anchor X, Y, Z in DTU coordinates
    scale: float  # mm per anchor unit
    intrinsics: tuple[float, float, float, float]  # DTU's fx, fy, cx, cy at ``size``
    size: tuple[int, int] = DTU_SIZE
    anchor_radius: float = DEFAULT_ANCHOR_RADIUS
    cap: dict[str, list[float]] | None = None  # the calibration cameras' azimuth/elevation/radius ranges

    # -- fitting ------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        projections: Sequence[np.ndarray],
        anchor_radius: float = DEFAULT_ANCHOR_RADIUS,
        size: tuple[int, int] = DTU_SIZE,
    ) -> CameraRig:
        """Fit the rig from calibration matrices (e.g. all 64 cal18 ``pos_XXX.txt``)."""
        if len(projections) < 3:
            raise InputError(f"a camera rig needs at least 3 calibrated cameras, got {len(projections)}")
        if not (math.isfinite(anchor_radius) and anchor_radius > 0):
            raise InputError(f"the rig's anchor radius must be a positive number of anchor units, got {anchor_radius}")
        cams = [dtu_projection_to_camera(p, *size) for p in projections]
        c2w = np.stack([c.camera_to_anchor for c in cams])  # Blender convention, DTU frame
        origins, axis_x, axis_up, looks = c2w[:, :3, 3], c2w[:, :3, 0], c2w[:, :3, 1], -c2w[:, :3, 2]
        # centre: min sum of squared distances to the optical axes
        a = np.zeros((3, 3))
        b = np.zeros(3)
        for o, d in zip(origins, looks):
            proj = np.eye(3) - np.outer(d, d)
            a += proj
            b += proj @ o
        if np.linalg.cond(a) > 1e8:
            raise InputError("the calibration cameras' optical axes are (nearly) parallel: cannot find the object")
        centre = np.linalg.solve(a, b)
        # up: perpendicular to every image x axis; signed like the image up vectors
        _, vecs = np.linalg.eigh(axis_x.T @ axis_x)
        up = vecs[:, 0]
        if up @ axis_up.sum(0) < 0:
            up = -up
        offsets = origins - centre
        distances = np.linalg.norm(offsets, axis=1)
        front = (offsets / distances[:, None]).mean(0)
        front -= (front @ up) * up
        if np.linalg.norm(front) < 1e-6:
            raise InputError("the calibration cameras surround the object evenly: no front direction to anchor to")
        front /= np.linalg.norm(front)
        y_axis, z_axis = -front, up  # Blender's front camera sits on -Y, looking along +Y
        x_axis = np.cross(y_axis, z_axis)
        axes = np.stack([x_axis, y_axis, z_axis], axis=1)
        ks = np.stack([c.intrinsics() for c in cams])
        k = tuple(float(np.median(ks[:, i, j])) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
        rig = cls(
            centre=(float(centre[0]), float(centre[1]), float(centre[2])),
            axes=tuple(tuple(float(v) for v in row) for row in axes),  # type: ignore[arg-type]
            scale=float(distances.mean() / anchor_radius),
            intrinsics=k,  # type: ignore[arg-type]
            size=(int(size[0]), int(size[1])),
            anchor_radius=float(anchor_radius),
        )
        orbits = np.array([pose_to_orbit(rig.from_dtu(c).camera_to_anchor) for c in cams])
        cap = {
            "azimuth_deg": [float(orbits[:, 0].min()), float(orbits[:, 0].max())],
            "elevation_deg": [float(orbits[:, 1].min()), float(orbits[:, 1].max())],
            "radius": [float(orbits[:, 2].min()), float(orbits[:, 2].max())],
        }
        return CameraRig(rig.centre, rig.axes, rig.scale, rig.intrinsics, rig.size, rig.anchor_radius, cap)

    # -- mapping ------------------------------------------------------------------------------------
    def _similarity(self) -> tuple[np.ndarray, np.ndarray, float]:
        return np.asarray(self.axes, dtype=np.float64), np.asarray(self.centre, dtype=np.float64), float(self.scale)

    def to_dtu(self, cam: Camera) -> Camera:
        """The camera in DTU's frame, same image size; DTU's lens unless the camera has its own."""
        m, c, s = self._similarity()
        pose = cam.camera_to_anchor
        out = np.eye(4)
        out[:3, :3] = m @ pose[:3, :3]
        out[:3, 3] = c + s * (m @ pose[:3, 3])
        if cam.has_intrinsics:
            return Camera(out, cam.fov_y_deg, cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)
        fx, fy, cx, cy = self.intrinsics
        sx, sy = cam.width / self.size[0], cam.height / self.size[1]
        k = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        return Camera.from_intrinsics(out, k, cam.width, cam.height)

    def from_dtu(self, cam: Camera) -> Camera:
        """Inverse of :meth:`to_dtu` for the pose; the camera keeps its intrinsics (calibration dropped)."""
        m, c, s = self._similarity()
        pose = cam.camera_to_anchor
        out = np.eye(4)
        out[:3, :3] = m.T @ pose[:3, :3]
        out[:3, 3] = m.T @ (pose[:3, 3] - c) / s
        return Camera(out, cam.fov_y_deg, cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy)

    def describe_cap(self) -> str:
        if not self.cap:
            return f"radius {self.anchor_radius:g}"
        az, el, r = self.cap["azimuth_deg"], self.cap["elevation_deg"], self.cap["radius"]
        return (
            f"the view-mapper's DTU cameras span azimuth {az[0]:.0f}..{az[1]:.0f} deg, elevation "
            f"{el[0]:.0f}..{el[1]:.0f} deg, radius {r[0]:.2f}..{r[1]:.2f} around the anchor, with DTU's lens "
            f"(fov_y {math.degrees(2 * math.atan(0.5 * self.size[1] / self.intrinsics[1])):.1f} deg)"
        )

    # -- persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "dtu-similarity",
            "centre": list(self.centre),
            "axes": [list(r) for r in self.axes],
            "scale": self.scale,
            "intrinsics": list(self.intrinsics),
            "size": list(self.size),
            "anchor_radius": self.anchor_radius,
            "cap": self.cap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CameraRig:
        try:
            axes = np.asarray(data["axes"], dtype=np.float64)
            rig = cls(
                centre=tuple(float(v) for v in data["centre"]),  # type: ignore[arg-type]
                axes=tuple(tuple(float(v) for v in r) for r in axes),  # type: ignore[arg-type]
                scale=float(data["scale"]),
                intrinsics=tuple(float(v) for v in data["intrinsics"]),  # type: ignore[arg-type]
                size=(int(data["size"][0]), int(data["size"][1])),
                anchor_radius=float(data.get("anchor_radius", DEFAULT_ANCHOR_RADIUS)),
                cap=data.get("cap"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(
                f"the view-mapper's camera rig is malformed ({exc}): re-fit it with `viewneti rig`"
            ) from None
        if axes.shape != (3, 3) or not np.allclose(axes.T @ axes, np.eye(3), atol=1e-6) or np.linalg.det(axes) < 0:
            raise InputError("the view-mapper's camera rig axes are not a rotation: re-fit it with `viewneti rig`")
        if not (rig.scale > 0 and len(rig.centre) == 3 and len(rig.intrinsics) == 4):
            raise InputError("the view-mapper's camera rig is malformed: re-fit it with `viewneti rig`")
        return rig


def rig_from_mapper_config(camera_parameterization: dict[str, Any] | None) -> CameraRig | None:
    """The rig stored with a view-mapper, if any."""
    if not camera_parameterization or not camera_parameterization.get("rig"):
        return None
    return CameraRig.from_dict(camera_parameterization["rig"])


# How far past [-1, 1] a feature may be before a camera is reported as outside the mapper's training
# range (dtu-12d's rounded entries against unrounded bounds overshoot by ~1e-5).
RANGE_TOLERANCE = 1e-3


def range_warnings(features: np.ndarray, rig: CameraRig | None = None) -> list[str]:
    """One message per camera whose view-mapper input leaves [-1, 1] (the training range)."""
    out = []
    for i, row in enumerate(np.asarray(features, dtype=np.float64)):
        worst = float(np.abs(row).max()) if row.size else 0.0
        if not math.isfinite(worst) or worst > 1.0 + RANGE_TOLERANCE:
            where = int(np.argmax(np.abs(row)))
            msg = (
                f"camera {i}: outside the view-mapper's training range (feature {where} is {row[where]:+.2f}, "
                "trained on -1..1): the view is extrapolated and may be wrong"
            )
            if rig is not None:
                msg += f"; {rig.describe_cap()}"
            out.append(msg)
    return out
