"""Multi-view toy datasets on disk, in nerfstudio ``transforms.json`` format.

Layout::

    out_dir/
      index.json                      {"objects": ["obj_0000000", ...], "config": {...}}
      obj_0000000/
        transforms.json               per-frame OpenGL camera_to_anchor + fl_x/fl_y/cx/cy/w/h,
                                      "mask_path", "azimuth_deg"/"elevation_deg"/"radius";
                                      top level: "toy_object" (the object spec) and "toy_seed"
        images/000.png ...            RGB renders
        masks/000.png ...             object masks (255 = object, ground excluded)

Read it back with :func:`viewneti_backend.cameras.read_transforms_json` (or :func:`read_object`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..cameras import Camera, TransformsFrame, orbit_pose, pose_to_orbit, read_transforms_json, write_transforms_json
from ..config_cli import option
from ..data import Scene
from .prior.model import HELDOUT_SEED_START
from .renderer import DEFAULT_FOV_Y_DEG, ELEVATION_RANGE, RADIUS_RANGE, CameraSampler, ToyObject, render, to_uint8

CAMERA_LAYOUTS = ("random", "orbit")  # DatasetConfig.cameras


@dataclass
class DatasetConfig:
    """A toy dataset on disk; the fields with ``option`` metadata are ``viewneti toyworld render-dataset``'s
    options (:mod:`..config_cli`)."""

    n_objects: int = field(default=20, metadata=option("objects to render", flag="--objects"))
    views: int = field(default=24, metadata=option("views per object"))
    first_seed: int = field(
        default=0,
        metadata=option(f"object seeds first..first+N-1 (held-out objects start at {HELDOUT_SEED_START})"),
    )
    size: int = field(default=64, metadata=option("image side in pixels"))
    cameras: str = field(
        default="random",
        metadata=option(
            "random: the prior's training distribution; orbit: even azimuths at a fixed elevation",
            choices=CAMERA_LAYOUTS,
        ),
    )
    orbit_elevation_deg: float = 30.0
    orbit_radius: float = 3.6
    elevation_range: tuple[float, float] = ELEVATION_RANGE
    radius_range: tuple[float, float] = RADIUS_RANGE
    fov_y_deg: float = DEFAULT_FOV_Y_DEG
    supersample: int = 2
    seed: int = 0  # camera randomness


def object_dir_name(seed: int) -> str:
    return f"obj_{seed:07d}"


def dataset_cameras(cfg: DatasetConfig, object_seed: int) -> list[Camera]:
    if cfg.cameras == "orbit":
        return [
            Camera(
                orbit_pose(360.0 * i / cfg.views, cfg.orbit_elevation_deg, cfg.orbit_radius),
                cfg.fov_y_deg,
                cfg.size,
                cfg.size,
            )
            for i in range(cfg.views)
        ]
    if cfg.cameras != "random":
        raise ValueError(f"cameras must be 'random' or 'orbit', got {cfg.cameras!r}")
    sampler = CameraSampler((*cfg.elevation_range,), (*cfg.radius_range,), cfg.fov_y_deg)  # tuples of JSON lists
    return sampler.sample(cfg.views, size=cfg.size, seed=cfg.seed * 1_000_003 + object_seed)


def render_object_folder(
    obj: ToyObject,
    cameras: list[Camera],
    folder: str | Path,
    device: str | torch.device = "cpu",
    supersample: int = 2,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Render ``obj`` from ``cameras`` into ``folder`` (images/, masks/, transforms.json)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rgb, mask = render(obj, cameras, device=device, supersample=supersample)
    rgb8, mask8 = to_uint8(rgb), (mask.cpu().numpy().astype(np.uint8) * 255)
    frames = []
    for i, cam in enumerate(cameras):
        img, msk = f"images/{i:03d}.png", f"masks/{i:03d}.png"
        Image.fromarray(rgb8[i]).save(folder / img)
        Image.fromarray(mask8[i]).save(folder / msk)
        az, el, rad = pose_to_orbit(cam.camera_to_anchor)
        frames.append(
            TransformsFrame(
                img, cam, msk, {"azimuth_deg": round(az, 4), "elevation_deg": round(el, 4), "radius": round(rad, 4)}
            )
        )
    write_transforms_json(
        folder / "transforms.json", frames, {"toy_object": obj.to_json(), "toy_seed": obj.seed, **(extra or {})}
    )
    return folder


def render_dataset(
    cfg: DatasetConfig, out_dir: str | Path, device: str | torch.device = "cpu", progress: bool = True
) -> list[Path]:
    """Render ``cfg.n_objects`` objects x ``cfg.views`` views into ``out_dir``; returns the object folders."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for s in tqdm(range(cfg.first_seed, cfg.first_seed + cfg.n_objects), desc="render", disable=not progress):
        obj = ToyObject.from_seed(s)
        folders.append(
            render_object_folder(obj, dataset_cameras(cfg, s), out_dir / object_dir_name(s), device, cfg.supersample)
        )
    index = {"objects": [f.name for f in folders], "config": asdict(cfg)}
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return folders


def read_object(folder: str | Path) -> tuple[ToyObject, list[TransformsFrame]]:
    """The object spec and the frames of one object folder."""
    folder = Path(folder)
    data = json.loads((folder / "transforms.json").read_text())
    return ToyObject.from_json(data["toy_object"]), read_transforms_json(folder / "transforms.json")


def render_scene(seed: int, cameras: list[Camera], device: str = "cpu", name: str | None = None) -> Scene:
    """One toy object seen from ``cameras``, as a training/eval Scene with object masks."""
    rgb, mask = render(ToyObject.from_seed(seed), cameras, device=device, supersample=2)
    images = [Image.fromarray(a) for a in to_uint8(rgb)]
    return Scene(name or f"toy_{seed:07d}", images, list(cameras), [m for m in mask.cpu().numpy()], {"seed": seed})
