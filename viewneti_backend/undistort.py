"""Lens undistortion of ``transforms.json`` photos, so that training, inversion and evaluation see
exactly the pinhole camera that ViewNeTI renders.

A frame with lens distortion becomes the image of the pinhole camera with the *same* K (fl_x, fl_y,
cx, cy), as ``cv2.undistort(image, K, dist, newCameraMatrix=K)`` gives: for each output pixel, its
normalized point (x, y) = ((u - cx) / fx, (v - cy) / fy) goes through the forward lens model and the
photo is sampled bilinearly where it lands. Models (nerfstudio's ``camera_model`` values, OpenCV's
formulas; r² = x² + y²):

- ``OPENCV`` (radial-tangential; also nerfstudio's other perspective models and a file without
  ``camera_model``, which nerfstudio reads as a perspective camera)::

      x_d = x (1 + k1 r² + k2 r⁴ + k3 r⁶) + 2 p1 x y + p2 (r² + 2 x²)
      y_d = y (1 + k1 r² + k2 r⁴ + k3 r⁶) + p1 (r² + 2 y²) + 2 p2 x y

- ``OPENCV_FISHEYE`` (equidistant, ``cv2.fisheye``; instant-ngp's ``"is_fisheye": true``), θ = atan r::

      θ_d = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸),   x_d = (θ_d / r) x,   y_d = (θ_d / r) y

Pixel centres are at i + 0.5, the convention in which ``cx = w / 2`` is the image centre (the
project's :class:`~viewneti_backend.cameras.Camera`, nerfstudio's rays); ``cv2.undistort`` puts them
at i, which evaluates the distortion half a pixel away. Output pixels whose point falls outside the
photo, or past the radius where the lens polynomial folds back, have no source: they are filled with
the scene's background colour and are outside its mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError

OPENCV = "OPENCV"
OPENCV_FISHEYE = "OPENCV_FISHEYE"
# nerfstudio's camera_model values that it reads as a perspective camera with radial-tangential
# distortion (nerfstudio.cameras.camera_utils). FULL_OPENCV is not one: its k4 is a rational term.
PERSPECTIVE_MODELS = (OPENCV, "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
COEFFICIENTS = {OPENCV: ("k1", "k2", "k3", "p1", "p2"), OPENCV_FISHEYE: ("k1", "k2", "k3", "k4")}
# Radii (normalized, r = tan of the angle off the axis) at which a lens is checked for folding: far
# past any image's corner (r = 20 is 87 degrees off the axis).
_FOLD_CHECK_RADII = np.linspace(0.0, 20.0, 20001)


@dataclass(frozen=True)
class LensDistortion:
    """A frame's lens: the model (``OPENCV`` or ``OPENCV_FISHEYE``) and its coefficients."""

    model: str
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in COEFFICIENTS:
            raise InputError(f"lens model {self.model!r}: undistortion knows {', '.join(COEFFICIENTS)}")
        unused = [n for n in ("k1", "k2", "k3", "k4", "p1", "p2") if n not in COEFFICIENTS[self.model]]
        given = [f"{n}={getattr(self, n):.6g}" for n in unused if getattr(self, n) != 0.0]
        if given:
            other = OPENCV if self.model == OPENCV_FISHEYE else OPENCV_FISHEYE
            raise InputError(
                f"camera_model {self.model} takes {' '.join(COEFFICIENTS[self.model])}, but the file gives "
                f"{', '.join(given)} ({other}'s): set camera_model to the lens's model, or remove them"
            )

    @classmethod
    def from_transforms(
        cls, distortion: Mapping[str, float], meta: Mapping[str, Any], where: str = "transforms.json"
    ) -> LensDistortion | None:
        """The lens of a frame (its ``distortion`` keys) in a file with top-level keys ``meta``; None
        for a perspective camera whose coefficients are all zero (nothing to undistort). A fisheye is
        undistorted even then (its zero-coefficient lens is equidistant, not a pinhole); other models
        (equirectangular, ...) are not pinhole cameras at all and are refused."""
        values = {}
        for name, v in distortion.items():
            if not math.isfinite(v):
                raise InputError(f"{where}: distortion {name} must be a finite number, got {v}")
            values[name] = float(v)
        model = camera_model(meta, where)
        if model not in COEFFICIENTS:
            raise InputError(
                f"{where}: camera_model {model} is not a pinhole camera and cannot be undistorted here (only "
                f"{', '.join(PERSPECTIVE_MODELS)} and {OPENCV_FISHEYE}): convert the images to a pinhole camera "
                "first (e.g. nerfstudio's ns-process-data or COLMAP's image_undistorter)"
            )
        if model == OPENCV and not any(values.values()):
            return None
        try:
            return cls(model, **values)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def describe(self) -> str:
        """``OPENCV k1=0.0602 k2=-0.0323 ...``: the model and its non-zero coefficients."""
        coefs = [f"{n}={getattr(self, n):.4g}" for n in COEFFICIENTS[self.model] if getattr(self, n)]
        return " ".join([self.model, *coefs])

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward model: undistorted normalized points (x, y) to where the lens puts them (x_d, y_d)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        r2 = x * x + y * y
        if self.model == OPENCV:
            radial = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3))
            xd = x * radial + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x)
            yd = y * radial + self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * x * y
            return xd, yd
        r = np.sqrt(r2)
        scale = self._fisheye_radius(r) / np.where(r > 0.0, r, 1.0)
        scale = np.where(r > 0.0, scale, 1.0)  # θ_d / r -> 1 at the axis
        return x * scale, y * scale

    def _fisheye_radius(self, r: np.ndarray) -> np.ndarray:
        t = np.arctan(r)
        t2 = t * t
        return t * (1.0 + t2 * (self.k1 + t2 * (self.k2 + t2 * (self.k3 + t2 * self.k4))))

    def _radius(self, r: np.ndarray) -> np.ndarray:
        """The distorted radius of the radial part along the axis (tangential terms left out)."""
        if self.model == OPENCV:
            r2 = r * r
            return r * (1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3)))
        return self._fisheye_radius(r)

    def fold_radius(self) -> float:
        """The radius where the radial map stops growing (the lens polynomial folds back, so points
        further out would sample the photo a second time), ``inf`` if it never does in view."""
        rd = self._radius(_FOLD_CHECK_RADII)
        falling = np.nonzero(np.diff(rd) <= 0.0)[0]
        return float(_FOLD_CHECK_RADII[falling[0]]) if falling.size else math.inf


def camera_model(meta: Mapping[str, Any], where: str = "transforms.json") -> str:
    """The file's lens model: nerfstudio's top-level ``camera_model`` (its perspective models read as
    ``OPENCV``), else instant-ngp's ``is_fisheye``, else ``OPENCV`` (nerfstudio's default)."""
    model = meta.get("camera_model")
    fisheye_flag = meta.get("is_fisheye")
    if model is None:
        return OPENCV_FISHEYE if fisheye_flag else OPENCV
    if not isinstance(model, str):
        raise InputError(f"{where}: camera_model must be a string such as {OPENCV!r}, got {model!r}")
    model = OPENCV if model in PERSPECTIVE_MODELS else model
    if fisheye_flag and model != OPENCV_FISHEYE:
        raise InputError(
            f'{where}: camera_model {meta["camera_model"]} contradicts "is_fisheye": true: keep the one that is right'
        )
    return model


@dataclass(frozen=True, eq=False)
class SamplingMap:
    """Where each pixel of the undistorted image samples the photo (array indices, so pixel i's
    centre is at i), and whether the photo has that point at all."""

    x: np.ndarray  # H x W float
    y: np.ndarray  # H x W float
    inside: np.ndarray  # H x W bool

    @property
    def outside_fraction(self) -> float:
        return float(1.0 - self.inside.mean())

    @functools.cached_property
    def taps(self) -> tuple[np.ndarray, np.ndarray]:
        """The bilinear filter on the photo (the same size as the output, as K is the same): for each
        output pixel, the flat indices of its 4 source pixels and their weights (4 x H x W each; a
        point in the photo's outer half pixel takes the edge pixel's value)."""
        height, width = self.inside.shape
        x, y = np.clip(self.x, 0.0, width - 1.0), np.clip(self.y, 0.0, height - 1.0)
        x0 = np.minimum(np.floor(x).astype(np.intp), max(width - 2, 0))
        y0 = np.minimum(np.floor(y).astype(np.intp), max(height - 2, 0))
        x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
        ax, ay = x - x0, y - y0
        index = np.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1]).astype(np.int32)
        weight = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay]).astype(np.float32)
        return index, weight


def undistortion_map(width: int, height: int, k: np.ndarray, lens: LensDistortion) -> SamplingMap:
    """The sampling map of a ``width x height`` photo with intrinsics ``k`` (3x3, pixels) and ``lens``."""
    k = np.asarray(k, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x = (np.arange(width, dtype=np.float64) + 0.5 - cx) / fx
    y = (np.arange(height, dtype=np.float64) + 0.5 - cy) / fy
    xx, yy = np.meshgrid(x, y)
    xd, yd = lens.distort(xx, yy)
    sx, sy = fx * xd + cx - 0.5, fy * yd + cy - 0.5
    inside = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
    inside &= np.hypot(xx, yy) < lens.fold_radius()
    return SamplingMap(sx, sy, inside)


def remap(source: np.ndarray, where: SamplingMap, fill: float | tuple[float, ...]) -> np.ndarray:
    """``source`` (H x W or H x W x C, the photo's size) sampled bilinearly at ``where`` (float32);
    pixels without a source get ``fill``."""
    src = np.asarray(source)
    h, w = src.shape[:2]
    if (h, w) != where.inside.shape:
        mh, mw = where.inside.shape
        raise ValueError(f"a {w}x{h} image cannot go through the sampling map of a {mw}x{mh} photo")
    index, weight = where.taps
    flat = src.reshape(h * w, -1)
    out = np.zeros((*index.shape[1:], flat.shape[1]), dtype=np.float32)
    for i, wt in zip(index, weight):
        out += flat[i] * wt[..., None]
    out[~where.inside] = fill
    return out if src.ndim == 3 else out[..., 0]


def undistort_image(image: Image.Image, where: SamplingMap, fill: tuple[int, int, int]) -> Image.Image:
    """An RGB photo resampled through ``where`` (rounded to 8 bits), ``fill`` where it has no source."""
    out = remap(np.asarray(image.convert("RGB")), where, tuple(float(c) for c in fill))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def undistort_mask(mask: np.ndarray, where: SamplingMap) -> np.ndarray:
    """A boolean mask resampled through ``where``: bilinear, then > 0.5; False where it has no source."""
    return remap(np.asarray(mask, dtype=np.float64), where, 0.0) > 0.5


@dataclass
class Undistorter:
    """Undistorts the images (and masks) of one scene, one sampling map per distinct size, K and
    lens, and keeps what the user is told: which lenses, how many images, how much had no source."""

    background: tuple[int, int, int]
    maps: dict[tuple, SamplingMap] = field(default_factory=dict)
    lenses: list[str] = field(default_factory=list)
    count: int = 0
    outside: float = 0.0  # summed over the images: each one's fraction of pixels without a source
    masked: bool = False

    def add(
        self, image: Image.Image, mask: np.ndarray | None, k: np.ndarray, lens: LensDistortion
    ) -> tuple[Image.Image, np.ndarray | None]:
        """``image`` and ``mask`` as the pinhole camera of intrinsics ``k`` (at the image's size) sees them."""
        key = (image.size, tuple(np.asarray(k, dtype=np.float64).ravel()), lens)
        if key not in self.maps:
            self.maps[key] = undistortion_map(*image.size, k, lens)
        where = self.maps[key]
        self.lenses.append(lens.describe())
        self.count += 1
        self.outside += where.outside_fraction
        self.masked |= mask is not None
        return undistort_image(image, where, self.background), None if mask is None else undistort_mask(mask, where)

    def note(self) -> str | None:
        """What was undistorted, for ``scene.meta["notes"]`` (None if nothing was)."""
        if not self.count:
            return None
        lenses = "; ".join(dict.fromkeys(self.lenses))
        text = (
            f"lens distortion ({lenses}): {self.count} image(s) undistorted to the pinhole camera of the same "
            "fl_x/fl_y/cx/cy (as cv2.undistort with newCameraMatrix = K)"
        )
        share = self.outside / self.count
        if share > 0.0:
            text += f"; {share:.1%} of their pixels lie outside the photo and show the background {self.background}"
            text += ", outside the mask" if self.masked else ""
        return text
