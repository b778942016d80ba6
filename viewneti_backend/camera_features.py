"""Camera parameterisations: how a camera becomes the view-mapper's input vector, in [-1, 1].

Each parameterisation stores its normalisation statistics in the mapper checkpoint, so a mapper
always sees cameras normalised exactly as during training.

- ``dtu-12d`` (faithful to ViewNeTI): the raw 3x4 pixel projection matrix P = K[R|t] (OpenCV,
  at a reference image size), flattened row-major, rounded to 1e-4, per-entry min-max to [-1, 1].
- ``anchor-pose-13d`` (default for new training, dataset-independent): the anchor-relative
  camera-to-anchor rotation (9 entries, already in [-1, 1]), the camera position divided by a
  radius statistic, and log tan(fov_y / 2) min-max normalised.
- ``anchor-distance-14d`` (an option): ``anchor-pose-13d`` with the camera's distance to the anchor
  as a feature of its own: rotation (9), unit direction to the camera (3), log distance and
  log tan(fov_y / 2), both min-max normalised, the distance clamped to the training range. For
  training cameras at varying distances: in 13d the distance is only the length of the position
  entries (about +-11 % in the toy world), which the toy view-mapper did not resolve (one object
  size for every distance); with 14d it did, part of the way (benchmarks/RESULTS.md §3).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .cameras import Camera
from .errors import InputError


def _minmax(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    safe = np.where(span > 1e-12, span, 1.0)
    return np.where(span > 1e-12, 2.0 * (x - lo) / safe - 1.0, 0.0)


def _log_tan_half_fov(cam: Camera) -> float:
    """log tan(fov_y / 2): the field of view on a scale where zooming by a factor is a shift."""
    return math.log(math.tan(math.radians(cam.fov_y_deg) / 2.0))


class CameraParameterization(ABC):
    """Camera -> normalised feature vector; ``stats`` are fitted on training cameras and saved with the mapper."""

    def __init__(self, name: str, dim: int, stats: dict[str, Any] | None = None):
        self.name, self.dim, self.stats = name, dim, dict(stats or {})

    @abstractmethod
    def raw(self, cameras: Sequence[Camera]) -> np.ndarray:
        """Un-normalised features, [N, dim]."""

    @abstractmethod
    def fit(self, cameras: Sequence[Camera]) -> CameraParameterization:
        """Compute the normalisation statistics from the training cameras."""

    @abstractmethod
    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Map raw features to about [-1, 1] with the stored statistics."""

    def features(self, cameras: Sequence[Camera]) -> torch.Tensor:
        if not self.stats:
            raise InputError(
                f"camera parameterisation '{self.name}' has no statistics: fit it on the training cameras first"
            )
        return torch.from_numpy(self.normalize(self.raw(cameras))).float()

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "stats": self.stats}

    def range_warnings(self, cameras: Sequence[Camera]) -> list[str]:
        """Plain-language warnings for cameras outside what the mapper was trained on (none by default).

        Rendering still goes ahead; the engine passes these to the CLI (stderr) and the server
        (``X-Warnings``). A parameterisation that clamps or extrapolates says so here."""
        return []


class Dtu12d(CameraParameterization):
    """ViewNeTI's faithful representation: raw P entries, min-max over the dataset's cameras."""

    def __init__(self, stats: dict[str, Any] | None = None, reference_size: tuple[int, int] = (1600, 1200)):
        super().__init__("dtu-12d", 12, stats)
        self.stats.setdefault("reference_size", list(reference_size))

    def raw(self, cameras: Sequence[Camera]) -> np.ndarray:
        w, h = self.stats["reference_size"]
        rows = [np.round(cam.with_size(w, h).projection_matrix().reshape(-1), 4) for cam in cameras]
        return np.stack(rows).astype(np.float64)

    def fit(self, cameras: Sequence[Camera]) -> Dtu12d:
        raw = self.raw(cameras)
        self.stats.update(min=raw.min(0).tolist(), max=raw.max(0).tolist())
        return self

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        return _minmax(raw, np.asarray(self.stats["min"]), np.asarray(self.stats["max"]))


class AnchorPose13d(CameraParameterization):
    """Dataset-independent: anchor-relative rotation, position / radius, log tan(fov/2)."""

    def __init__(self, stats: dict[str, Any] | None = None):
        super().__init__("anchor-pose-13d", 13, stats)

    def raw(self, cameras: Sequence[Camera]) -> np.ndarray:
        rows = []
        for cam in cameras:
            m = cam.camera_to_anchor
            fov = _log_tan_half_fov(cam)
            rows.append(np.concatenate([m[:3, :3].reshape(-1), m[:3, 3], [fov]]))
        return np.stack(rows)

    def fit(self, cameras: Sequence[Camera]) -> AnchorPose13d:
        raw = self.raw(cameras)
        self.stats.update(
            radius=float(np.linalg.norm(raw[:, 9:12], axis=1).max()),
            fov_min=float(raw[:, 12].min()),
            fov_max=float(raw[:, 12].max()),
        )
        return self

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        out = raw.copy()
        out[:, 9:12] = raw[:, 9:12] / max(self.stats["radius"], 1e-9)
        out[:, 12] = _minmax(raw[:, 12], np.asarray(self.stats["fov_min"]), np.asarray(self.stats["fov_max"]))
        return out


class AnchorDistance14d(CameraParameterization):
    """Anchor-relative rotation, unit direction to the camera, log distance, log tan(fov/2)."""

    MIN_DISTANCE = 1e-3  # a camera at the anchor itself has no direction; its log distance is clamped

    def __init__(self, stats: dict[str, Any] | None = None):
        super().__init__("anchor-distance-14d", 14, stats)

    def raw(self, cameras: Sequence[Camera]) -> np.ndarray:
        rows = []
        for cam in cameras:
            m = cam.camera_to_anchor
            position = m[:3, 3]
            distance = max(float(np.linalg.norm(position)), self.MIN_DISTANCE)
            fov = _log_tan_half_fov(cam)
            rows.append(np.concatenate([m[:3, :3].reshape(-1), position / distance, [math.log(distance), fov]]))
        return np.stack(rows)

    def fit(self, cameras: Sequence[Camera]) -> AnchorDistance14d:
        raw = self.raw(cameras)
        self.stats.update(
            log_distance_min=float(raw[:, 12].min()),
            log_distance_max=float(raw[:, 12].max()),
            fov_min=float(raw[:, 13].min()),
            fov_max=float(raw[:, 13].max()),
        )
        return self

    def range_warnings(self, cameras: Sequence[Camera]) -> list[str]:
        if not self.stats or not cameras:
            return []
        lo, hi = math.exp(self.stats["log_distance_min"]), math.exp(self.stats["log_distance_max"])
        distances = np.exp(self.raw(cameras)[:, 12])
        # 1 % slack: the statistics are float32 (the toy range 3.2-4.0 is stored as 3.20002-3.99999)
        outside = [(i, float(d)) for i, d in enumerate(distances) if not lo * 0.99 <= d <= hi * 1.01]
        if not outside:
            return []
        i, d = outside[0]
        which = f"camera {i}" if len(cameras) > 1 else "the camera"
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        near = lo if d < lo else hi
        return [
            f"{which}{more} is {d:.2f} units from the anchor, outside the view-mapper's trained distances "
            f"{lo:.2f}-{hi:.2f}: it renders the view at distance {near:.2f} (the distance is clamped); "
            f"move the camera to between {lo:.2f} and {hi:.2f}, or scale the anchor"
        ]

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        out = raw.copy()
        # Clamped to the training distances: the mapper's Fourier features turn an extrapolated
        # distance (a Blender camera at twice the training radius reads as ~+5) into a wrong *view*;
        # clamped, such a camera renders the right view at the nearest trained distance.
        out[:, 12] = np.clip(
            _minmax(raw[:, 12], np.asarray(self.stats["log_distance_min"]), np.asarray(self.stats["log_distance_max"])),
            -1.0,
            1.0,
        )
        out[:, 13] = _minmax(raw[:, 13], np.asarray(self.stats["fov_min"]), np.asarray(self.stats["fov_max"]))
        return out


PARAMETERIZATIONS = {"dtu-12d": Dtu12d, "anchor-pose-13d": AnchorPose13d, "anchor-distance-14d": AnchorDistance14d}
DEFAULT_PARAMETERIZATION = "anchor-pose-13d"


def make_parameterization(name: str, stats: dict[str, Any] | None = None) -> CameraParameterization:
    if name not in PARAMETERIZATIONS:
        raise InputError(f"unknown camera parameterisation '{name}': use one of {', '.join(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[name](stats)


def parameterization_from_config(config: dict[str, Any]) -> CameraParameterization:
    return make_parameterization(config["name"], config.get("stats"))
