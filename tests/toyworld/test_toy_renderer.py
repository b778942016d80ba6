from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.toyworld.renderer import (
    ToyObject,
    camera_rays,
    orbit_cameras,
    orbit_poses_torch,
    random_cameras,
    render,
)


def test_objects_are_deterministic_and_json_roundtrip():
    a, b = ToyObject.from_seed(7), ToyObject.from_seed(7)
    assert a.to_json() == b.to_json()
    text = json.dumps(a.to_json())
    assert ToyObject.from_json(json.loads(text)).to_json() == a.to_json()
    assert ToyObject.from_seed(8).to_json() != a.to_json()


@pytest.mark.parametrize("seed", range(40))
def test_objects_are_well_formed(seed):
    obj = ToyObject.from_seed(seed)
    assert 2 <= len(obj.parts) <= ToyObject.MAX_PARTS
    assert any(p.side in ("left", "right", "front", "back") for p in obj.attachments)
    assert obj.radius() < 1.7
    for p in obj.parts:  # everything rests on or above the ground
        lowest = p.center[2] - p.size[2]
        assert lowest >= -1e-6


def test_render_shapes_ranges_and_determinism():
    obj = ToyObject.from_seed(3)
    cams = orbit_cameras(4, 30, 3.6, size=(48, 32))
    rgb, mask = render(obj, cams)
    assert rgb.shape == (4, 32, 48, 3) and rgb.dtype == torch.float32
    assert mask.shape == (4, 32, 48) and mask.dtype == torch.bool
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    rgb2, mask2 = render(obj, cams)
    assert torch.equal(rgb, rgb2) and torch.equal(mask, mask2)


@pytest.mark.parametrize("seed", range(12))
def test_mask_is_nonempty_and_inside_the_image(seed):
    obj = ToyObject.from_seed(seed)
    cams = orbit_cameras(6, 30, 3.6, size=64) + random_cameras(6, seed=seed, size=64)
    _, mask = render(obj, cams)
    area = mask.float().mean(dim=(1, 2))
    assert bool((area > 0.03).all()), area
    border = torch.cat([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], dim=1)
    assert not bool(border.any()), "the object touches the image border"


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_views_from_left_and_right_differ(seed):
    obj = ToyObject.from_seed(seed)
    left = Camera(orbit_pose(270, 25, 3.6), 40, 64, 64)
    right = Camera(orbit_pose(90, 25, 3.6), 40, 64, 64)
    front = Camera(orbit_pose(0, 25, 3.6), 40, 64, 64)
    back = Camera(orbit_pose(180, 25, 3.6), 40, 64, 64)
    rgb, mask = render(obj, [left, right, front, back])
    for i, j in ((0, 1), (2, 3)):
        assert float((rgb[i] - rgb[j]).abs().mean()) > 0.02
        # not just a mirror image either: the object is asymmetric
        assert float((rgb[i] - rgb[j].flip(1)).abs().mean()) > 0.01


def test_batched_objects_match_single_renders():
    objs = [ToyObject.from_seed(s) for s in (1, 2, 3)]
    cams = random_cameras(3, seed=0, size=32)
    rgb, mask = render(objs, cams)
    for i in range(3):
        r1, m1 = render(objs[i], [cams[i]])
        assert torch.allclose(rgb[i], r1[0], atol=1e-5)
        assert torch.equal(mask[i], m1[0])


def test_torch_orbit_matches_numpy_orbit():
    az = torch.tensor([0.0, 45.0, 190.0, 300.0], dtype=torch.float64)
    el = torch.tensor([10.0, 30.0, 50.0, 20.0], dtype=torch.float64)
    r = torch.tensor([3.2, 3.5, 4.0, 3.7], dtype=torch.float64)
    poses = orbit_poses_torch(az, el, r).numpy()
    for i in range(4):
        np.testing.assert_allclose(poses[i], orbit_pose(float(az[i]), float(el[i]), float(r[i])), atol=1e-9)


def test_rays_agree_with_camera_intrinsics():
    cam = Camera(orbit_pose(33, 27, 3.4), 41.0, 40, 24)
    o, d = camera_rays(
        torch.as_tensor(cam.camera_to_anchor[None]),
        torch.tensor([cam.fov_y_deg], dtype=torch.float64),
        cam.width,
        cam.height,
    )
    p = cam.projection_matrix()
    pts = (o + 2.5 * d)[0].numpy()
    uvw = p @ np.concatenate([pts, np.ones((len(pts), 1))], 1).T
    uv = (uvw[:2] / uvw[2]).T.reshape(cam.height, cam.width, 2)
    jj, ii = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    np.testing.assert_allclose(uv[..., 0], jj, atol=1e-6)
    np.testing.assert_allclose(uv[..., 1], ii, atol=1e-6)


def test_front_view_shows_left_part_on_the_left():
    # The object's "left" (-X) appears on the image's left in the front view (azimuth 0, camera at -Y).
    for seed in range(30):
        obj = ToyObject.from_seed(seed)
        if any(p.side == "left" for p in obj.attachments) and not any(p.side == "right" for p in obj.attachments):
            break
    _, mask = render(obj, [Camera(orbit_pose(0, 20, 3.6), 40, 64, 64)])
    cols = torch.nonzero(mask[0])[:, 1].float()
    assert float(cols.mean()) < 31.5  # mass shifted towards the image's left


def test_supersampling_keeps_masks_close():
    obj = ToyObject.from_seed(9)
    cams = orbit_cameras(3, 30, 3.6, size=32)
    _, m1 = render(obj, cams)
    _, m2 = render(obj, cams, supersample=2)
    iou = (m1 & m2).sum() / (m1 | m2).sum()
    assert float(iou) > 0.85


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    obj = ToyObject.from_seed(2)
    cams = orbit_cameras(2, 30, 3.6, size=32)
    a, ma = render(obj, cams)
    b, mb = render(obj, cams, device="cuda")
    assert torch.allclose(a, b.cpu(), atol=1e-3)
