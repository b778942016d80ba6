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


DTU12D_DECIMALS = 4  # the reference prints P with 4 decimals in its view-token strings


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


def reference_token_round(values: np.ndarray) -> np.ndarray:
    """The reference's view-token numbers: the float32 value printed with 4 decimals and parsed back.

    (``torch.tensor`` of the file's numbers is float32; ``num_to_string`` formats each with
    ``f"{x:.4f}"``, which rounds the exact binary value; integers print as integers, same value.)
    """
    v32 = np.asarray(values, dtype=np.float64).astype(np.float32)
    return np.array([float(f"{float(x):.{DTU12D_DECIMALS}f}") for x in v32.reshape(-1)]).reshape(v32.shape)


class Dtu12d(CameraParameterization):
    """ViewNeTI's faithful representation, exactly as the reference code computes it.

    - raw: the 3x4 pixel projection P at ``reference_size`` (DTU: 1600x1200), flattened row-major,
      as float32 and rounded to 4 decimals (the reference parses it back out of its
      ``<view_dtu12d_cam..._p1_...>`` token strings; :func:`reference_token_round`). A camera read
      from a calibration file carries that file's P verbatim (``Camera.calibration``), so its
      features are the file's numbers.
    - normalisation: per entry min-max to [-1, 1], ``(x - min) / (max - min) * 2 - 1`` in float32 as
      the reference does; the min/max are over the *unrounded* (float32) P of the whole calibration
      population (all 64 cal18 cameras for DTU: :meth:`from_projections`), not the training cameras,
      so pretrained and fine-tuned mappers agree.
    """

    def __init__(self, stats: dict[str, Any] | None = None, reference_size: tuple[int, int] = (1600, 1200)):
        super().__init__("dtu-12d", 12, stats)
        self.stats.setdefault("reference_size", list(reference_size))

    def projections(self, cameras: Sequence[Camera]) -> np.ndarray:
        """Unrounded P at the reference size, [N, 12] (float64)."""
        w, h = self.stats["reference_size"]
        return np.stack([cam.with_size(w, h).projection_matrix().reshape(-1) for cam in cameras]).astype(np.float64)

    def raw(self, cameras: Sequence[Camera]) -> np.ndarray:
        return reference_token_round(self.projections(cameras))

    def fit(self, cameras: Sequence[Camera]) -> Dtu12d:
        """Statistics from these cameras' unrounded P (use :meth:`from_projections` for the DTU files)."""
        return self.fit_projections(self.projections(cameras))

    def fit_projections(self, projections: np.ndarray | Sequence[np.ndarray]) -> Dtu12d:
        flat = np.asarray(projections, dtype=np.float64).reshape(-1, 12)
        if not len(flat) or not np.all(np.isfinite(flat)):
            raise InputError("dtu-12d statistics need at least one finite 3x4 projection matrix")
        f32 = flat.astype(np.float32)  # the reference's torch.tensor of the file's numbers
        self.stats.update(
            min=[float(v) for v in f32.min(0)], max=[float(v) for v in f32.max(0)], population=int(len(flat))
        )
        return self

    @classmethod
    def from_projections(
        cls, projections: np.ndarray | Sequence[np.ndarray], reference_size: tuple[int, int] = (1600, 1200)
    ) -> Dtu12d:
        """The reference's statistics: min/max of the raw (unrounded) calibration matrices."""
        return cls(reference_size=reference_size).fit_projections(projections)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float32)
        lo, hi = np.asarray(self.stats["min"], np.float32), np.asarray(self.stats["max"], np.float32)
        span = hi - lo
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (x - lo) / span * np.float32(2.0) - np.float32(1.0)
        return np.where(span > 0, out, np.float32(0.0)).astype(np.float32)  # a constant entry: 0 (reference: NaN)


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


def parameterization_from_config(config: dict[str, Any] | None) -> CameraParameterization:
    if config is None:  # a mapper config's camera_parameterization: None for object mappers
        raise InputError("this mapper stores no camera parameterization: it is not a view-mapper")
    return make_parameterization(config["name"], config.get("stats"))
