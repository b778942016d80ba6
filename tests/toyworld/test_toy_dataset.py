from __future__ import annotations

import json

import numpy as np
from PIL import Image

from viewneti_backend.cameras import pose_to_orbit, read_transforms_json
from viewneti_backend.toyworld.dataset import DatasetConfig, read_object, render_dataset
from viewneti_backend.toyworld.renderer import ELEVATION_RANGE, ToyObject, render


def test_dataset_roundtrip(tmp_path):
    cfg = DatasetConfig(n_objects=2, views=5, first_seed=10, size=32, supersample=1)
    folders = render_dataset(cfg, tmp_path, progress=False)
    assert [f.name for f in folders] == ["obj_0000010", "obj_0000011"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["objects"] == ["obj_0000010", "obj_0000011"]
    obj, frames = read_object(folders[0])
    assert obj.to_json() == ToyObject.from_seed(10).to_json()
    assert len(frames) == 5
    for fr in frames:
        img = np.asarray(Image.open(folders[0] / fr.file_path))
        assert fr.mask_path is not None
        msk = np.asarray(Image.open(folders[0] / fr.mask_path))
        assert img.shape == (32, 32, 3) and msk.shape == (32, 32)
        assert fr.camera.width == 32 and abs(fr.camera.fov_y_deg - 40.0) < 1e-6
        az, el, r = pose_to_orbit(fr.camera.camera_to_anchor)
        assert ELEVATION_RANGE[0] - 1e-6 <= el <= ELEVATION_RANGE[1] + 1e-6
        assert abs(fr.extra["elevation_deg"] - el) < 1e-3
        # the saved camera re-renders the saved mask
        _, m = render(obj, [fr.camera])
        assert np.array_equal(m[0].numpy(), msk > 127)


def test_orbit_dataset_cameras(tmp_path):
    cfg = DatasetConfig(n_objects=1, views=4, size=32, cameras="orbit", supersample=1)
    (folder,) = render_dataset(cfg, tmp_path, progress=False)
    frames = read_transforms_json(folder / "transforms.json")
    az = [round(f.extra["azimuth_deg"]) % 360 for f in frames]
    assert az == [0, 90, 180, 270]
