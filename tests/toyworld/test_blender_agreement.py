"""Acceptance: the toy renderer and Blender agree on object silhouettes for the same camera.

This proves that the renderer's camera convention (pose, field of view, pixel centres) is Blender's.
"""

from __future__ import annotations

import bpy  # noqa: E402  (installed by `make setup`; never skipped)
import numpy as np
import pytest

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.toyworld.renderer import ToyObject, render

pytestmark = pytest.mark.blender

POSES = [(0, 20), (60, 35), (130, 12), (200, 45), (270, 25), (330, 50), (95, 30), (165, 40)]
WIDTH, HEIGHT = 96, 72


def _blender_mask(tmp_path, cam: Camera) -> np.ndarray:
    from PIL import Image

    from viewneti_backend.toyworld.blender_scene import set_blender_camera

    set_blender_camera(cam)
    scene = bpy.context.scene
    scene.render.filepath = str(tmp_path / "blender.png")
    bpy.ops.render.render(write_still=True)
    rgba = np.asarray(Image.open(tmp_path / "blender.png").convert("RGBA"))
    return rgba[..., 3] > 127  # transparent film, no ground: alpha = object coverage


def _setup_cycles() -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"


@pytest.mark.parametrize("seed", [2, 11])
def test_silhouettes_match_blender(tmp_path, seed):
    from viewneti_backend.toyworld.blender_scene import build_blender_scene

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = ToyObject.from_seed(seed)
    build_blender_scene(obj.to_json(), ground=False)
    _setup_cycles()
    ious = []
    for i, (az, el) in enumerate(POSES):
        cam = Camera(orbit_pose(az, el, 3.2 + 0.1 * i), 40.0, WIDTH, HEIGHT)
        ref = _blender_mask(tmp_path, cam)
        _, mask = render(obj, [cam])
        ours = mask[0].numpy()
        assert ref.shape == ours.shape == (HEIGHT, WIDTH)
        assert ref.sum() > 200, "Blender rendered no object: scene or camera set-up is broken"
        iou = float((ours & ref).sum() / (ours | ref).sum())
        ious.append(iou)
    assert min(ious) >= 0.9, f"silhouette IoU per pose {[(p, round(v, 3)) for p, v in zip(POSES, ious)]}"


def test_blender_scene_has_ground_and_materials():
    from viewneti_backend.toyworld.blender_scene import build_blender_scene

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = ToyObject.from_seed(5)
    created = build_blender_scene(obj)
    assert len(created) == len(obj.parts) + 1
    assert created[-1].name == "toy_ground"
    box = created[0]
    if obj.body.kind == "box":
        assert len(box.data.materials) == 2  # body colour + accent face
