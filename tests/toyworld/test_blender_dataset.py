"""`viewneti toyworld render-dataset --renderer blender`: the toy objects as Blender meshes, rendered by
Cycles and written by the add-on's Export Training Views exporter, in the toy dataset's layout; its
masks agree with the toy ray caster's for the same cameras (the camera convention holds end to end)."""

from __future__ import annotations

import json

import bpy  # noqa: F401  (installed by `make setup`; never skipped)
import numpy as np
import pytest
from PIL import Image

from viewneti_backend import cli
from viewneti_backend.data import load_scene_collection
from viewneti_backend.toyworld.dataset import read_object
from viewneti_backend.toyworld.renderer import ToyObject, render

pytestmark = pytest.mark.blender


def test_blender_renderer_writes_the_toy_layout_through_the_exporter(tmp_path):
    out = tmp_path / "toy"
    args = ["toyworld", "render-dataset", "--renderer", "blender", "--out", str(out), "--objects", "1"]
    assert cli.main(args + ["--views", "2", "--size", "64", "--first-seed", "3", "--samples", "8"]) == 0

    index = json.loads((out / "index.json").read_text())
    assert index["objects"] == ["obj_0000003"] and index["renderer"] == "blender"
    obj, frames = read_object(out / "obj_0000003")
    assert obj.to_json() == ToyObject.from_seed(3).to_json() and len(frames) == 2
    doc = json.loads((out / "obj_0000003" / "transforms.json").read_text())
    assert doc["viewneti_export"]["engine"] == "CYCLES" and doc["toy_seed"] == 3
    (scene,) = load_scene_collection(out)
    assert scene.masks is not None and scene.images[0].size == (64, 64)
    _, toy_masks = render(obj, [f.camera for f in frames])
    for frame, toy in zip(frames, toy_masks):
        assert abs(frame.camera.fov_y_deg - 40.0) < 1e-4
        assert {"azimuth_deg", "elevation_deg", "radius"} <= set(frame.extra)
        ours = np.asarray(Image.open(out / "obj_0000003" / frame.mask_path)) > 127
        toy = toy.numpy()
        assert toy.sum() > 100
        iou = (ours & toy).sum() / (ours | toy).sum()
        assert iou >= 0.9, iou  # measured 0.95-0.98: the ground is in the image, not in the mask
        rgb = np.asarray(Image.open(out / "obj_0000003" / frame.file_path))
        assert rgb.shape == (64, 64, 3) and rgb[~ours].std() > 1  # the ground plane shows around it
