"""The toy dataset rendered by Blender instead of the torch ray caster: the same objects (built as
Blender meshes by :mod:`.blender_scene`), the same cameras, the same folder layout, written by the
Blender add-on's own **Export Training Views** exporter (``blender_addon/export.py``).

So one exporter makes both a user's training views and the toy world's Blender variant, and the toy
tests exercise the path a user's scenes take. Needs the ``bpy`` module and the repository checkout
(the exporter lives in the add-on, which the backend otherwise never imports).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..cameras import pose_to_orbit
from ..errors import InputError
from .dataset import DatasetConfig, dataset_cameras, object_dir_name
from .renderer import ToyObject

IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]


def _exporter() -> tuple[Any, Any]:
    try:
        import bpy  # noqa: PLC0415
    except ImportError:
        raise InputError("--renderer blender needs the bpy module (pip install bpy==5.0.1, on Python 3.11)") from None
    try:
        from blender_addon import export  # noqa: PLC0415
    except ImportError:
        raise InputError(
            "--renderer blender renders through the Blender add-on's exporter (blender_addon/export.py): "
            "run it from the repository checkout, or put the checkout on PYTHONPATH"
        ) from None
    return bpy, export


def render_dataset_blender(
    cfg: DatasetConfig, out_dir: str | Path, *, samples: int = 16, progress: bool = True
) -> list[Path]:
    """Render ``cfg.n_objects`` toy objects x ``cfg.views`` cameras with Cycles into ``out_dir``.

    Each object: a fresh empty file, its primitives and the ground plane as meshes, the toy sun and
    ambient, then one export (ground kept in the images, excluded from the masks as the torch
    renderer does); transforms.json also records ``toy_object`` and ``toy_seed`` (:func:`.dataset.read_object`).
    The current Blender file is replaced.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from .blender_scene import add_toy_lighting, build_blender_scene  # noqa: PLC0415

    bpy, export = _exporter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = export.ExportSettings(
        views=cfg.views,
        distance=cfg.orbit_radius,
        fov_y_deg=cfg.fov_y_deg,
        width=cfg.size,
        height=cfg.size,
        engine="CYCLES",
        samples=samples,
        other_objects="KEEP",
        anchor="ORIGIN",
    )
    folders = []
    for seed in tqdm(range(cfg.first_seed, cfg.first_seed + cfg.n_objects), desc="blender", disable=not progress):
        obj = ToyObject.from_seed(seed)
        bpy.ops.wm.read_homefile(use_factory_startup=True, use_empty=True)
        scene = bpy.context.scene
        created = build_blender_scene(obj, ground=True)
        add_toy_lighting()
        scene.render.engine = "CYCLES"
        scene.cycles.pixel_filter_type = "BOX"  # the ray caster's pixel footprint
        scene.cycles.filter_width = 1.0
        scene.cycles.use_denoising = False
        views = []
        for cam in dataset_cameras(cfg, seed):
            az, el, radius = pose_to_orbit(cam.camera_to_anchor)
            extra = {"azimuth_deg": round(az, 4), "elevation_deg": round(el, 4), "radius": round(radius, 4)}
            views.append(export.View(cam.camera_to_anchor.tolist(), extra))
        parts = [o for o in created if o.name != "toy_ground"]
        subject = export.Subject(
            object_dir_name(seed), parts, IDENTITY, 1.0, {"toy_object": obj.to_json(), "toy_seed": obj.seed}
        )
        job = export.ExportJob(scene, [subject], str(out_dir), settings, views=views).run()
        if job.state != "done":
            raise RuntimeError(job.message) from job.error
        folders.append(out_dir / subject.name)
    index = {"objects": [f.name for f in folders], "config": asdict(cfg), "renderer": "blender", "samples": samples}
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return folders
