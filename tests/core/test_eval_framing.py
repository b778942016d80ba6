"""`eval` never squashes the ground truth (issue 24): when the render size is rounded to the 8-px grid
or `eval --size WxH` has another aspect, the ground truth is centre-cropped to the render's aspect and
the render camera shows exactly that crop (fov_y, cx/cy follow it)."""

import json

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.cameras import (
    Camera,
    camera_from_transforms_fields,
    centre_crop_box,
    compose_projection,
    orbit_pose,
)
from viewneti_backend.cli import main as cli_main
from viewneti_backend.evaluation import framed_ground_truth
from viewneti_backend.sheets import read_png_settings

from .test_newcomer_cli import write_scene
from .test_transforms_formats import write_fox

POINTS = np.array([[0.3, -0.2, 0.4], [-0.5, 0.1, -0.3], [0.0, 0.0, 0.0], [0.2, 0.6, 0.1]])


def pixels(cam: Camera, points=POINTS) -> np.ndarray:
    """Where ``points`` (anchor frame) land in ``cam``'s image, in pixels (x right, y down)."""
    p = compose_projection(cam.intrinsics(), cam.world_to_camera_cv())
    h = (p @ np.c_[points, np.ones(len(points))].T).T
    return h[:, :2] / h[:, 2:]


def expected_pixels(cam: Camera, box, size) -> np.ndarray:
    """Where the points land after cropping ``cam``'s image to ``box`` and resizing it to ``size``."""
    left, top, right, bottom = box
    return (pixels(cam) - [left, top]) * [size[0] / (right - left), size[1] / (bottom - top)]


def test_centre_crop_box_keeps_the_largest_centred_region_of_the_aspect():
    assert centre_crop_box(192, 96, 1.0) == (48.0, 0.0, 144.0, 96.0)
    assert centre_crop_box(54, 96, 40 / 64) == pytest.approx((0.0, 4.8, 54.0, 91.2))
    assert centre_crop_box(64, 40, 1.6) == (0.0, 0.0, 64.0, 40.0)


@pytest.mark.parametrize(
    "cam, size",
    [
        (Camera(orbit_pose(20, 25, 4), 30.0, 192, 96), (64, 64)),  # --size 64x64 on a 2:1 scene
        (Camera(orbit_pose(20, 25, 4), 40.0, 96, 64), (64, 40)),  # 1.5:1 rounded to 1.6:1
        # the fox: off-centre principal point, fl_x != fl_y, 1080x1920 images resized to 54x96 -> 40x64
        (
            camera_from_transforms_fields(
                orbit_pose(-30, 10, 4), {"fl_x": 68.776, "fl_y": 68.7245, "cx": 27.711, "cy": 48.268}, 54, 96
            ),
            (40, 64),
        ),
    ],
)
def test_framed_camera_shows_exactly_the_cropped_ground_truth(cam, size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (cam.height, cam.width, 3), dtype=np.uint8))
    mask = np.zeros((cam.height, cam.width), bool)
    mask[:, : cam.width // 2] = True
    framed, gt, m = framed_ground_truth(cam, image, mask, size)
    box = centre_crop_box(cam.width, cam.height, size[0] / size[1])
    assert (framed.width, framed.height) == size == gt.size and m is not None and m.shape == size[::-1]
    np.testing.assert_allclose(pixels(framed), expected_pixels(cam, box, size), atol=1e-9)
    np.testing.assert_array_equal(np.asarray(gt), np.asarray(image.resize(size, Image.Resampling.BICUBIC, box=box)))
    framed.validated()  # a camera the engine accepts
    if cam.fx is None and cam.cx is None and cam.cy is None:
        assert not framed.has_intrinsics  # a plain camera stays plain: square pixels, centred
    k, k_framed, k_old = cam.intrinsics(), framed.intrinsics(), cam.with_size(*size).intrinsics()
    pixel_aspect = k[0, 0] / k[1, 1]
    assert k_framed[0, 0] / k_framed[1, 1] == pytest.approx(pixel_aspect)  # pixels keep their shape
    # what the old code did (the camera resized, fov_y kept, the whole image resized) was wrong:
    if cam.fx is None:  # plain cameras: the render showed another frustum than the squashed ground truth
        old_render = pixels(cam.with_size(*size))
        old_ground_truth = expected_pixels(cam, (0, 0, cam.width, cam.height), size)
        assert np.abs(old_render - old_ground_truth).max() > 0.2  # pixels, at 64 px
    else:  # explicit fx, fy: the camera got stretched pixels (which the model cannot draw), by 11 %
        assert abs(k_old[0, 0] / k_old[1, 1] / pixel_aspect - 1) > 0.1


def test_framed_ground_truth_refuses_an_image_of_another_size_than_its_camera():
    with pytest.raises(ValueError, match="its camera 64x64"):
        framed_ground_truth(Camera(orbit_pose(0, 0, 4), 40, 64, 64), Image.new("RGB", (32, 32)), None, (32, 32))


def striped(path, size, stripes):
    """An image of equal vertical stripes of the given colours (left to right)."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    for i, colour in enumerate(stripes):
        arr[:, i * w // len(stripes) : (i + 1) * w // len(stripes)] = colour
    Image.fromarray(arr).save(path)


def run_eval(tiny_model_dir, tj, out, *more):
    argv = ["eval", "--model", str(tiny_model_dir), "--transforms", str(tj), "--views", "1", "--seeds", "0"]
    return cli_main([*argv, "--steps", "1", "--out", str(out), *more])


def test_eval_size_of_another_aspect_crops_the_ground_truth_instead_of_squashing(tiny_model_dir, tmp_path, capsys):
    tj = write_scene(tmp_path / "scene", [(192, 96), (192, 96)], angle_x=1.2)
    # view 1: red | blue | blue | green quarters; its centre 96x96 (the 1:1 crop) is all blue
    striped(tmp_path / "scene" / "r_1.png", (192, 96), [(255, 0, 0), (0, 0, 255), (0, 0, 255), (0, 255, 0)])
    assert run_eval(tiny_model_dir, tj, tmp_path / "out", "--size", "64x64") == 0
    assert "the centre 96x96 is scored" in capsys.readouterr().err
    folder = tmp_path / "out" / "scene"
    gt = np.asarray(Image.open(folder / "gt_view001.png")).astype(int)
    assert gt.shape == (64, 64, 3)
    # only the blue centre (bicubic reads a pixel beyond the crop at its edges), no red or green squashed in
    assert np.abs(gt[:, 1:-1] - [0, 0, 255]).max() <= 2 and gt[..., 0].mean() < 1 and gt[..., 1].mean() < 1
    manifest = json.loads((folder / "manifest.json").read_text())
    (cam,) = [Camera.from_json(c) for c in manifest["cameras"]]
    file_fov_y = np.degrees(2 * np.arctan(np.tan(0.6) * 96 / 192))
    assert (cam.width, cam.height) == (64, 64) and not cam.has_intrinsics
    assert cam.fov_y_deg == pytest.approx(file_fov_y) and cam.fov_x_deg == pytest.approx(file_fov_y)
    # the render and the ground truth carry that same camera
    render_cam = read_png_settings(folder / "thing_a_view001_seed0.png")["camera"]
    assert render_cam == read_png_settings(folder / "gt_view001.png")["camera"] == cam.to_json()


def test_eval_of_the_fox_keeps_its_aspect_where_the_grid_rounds_it(tiny_model_dir, tmp_path, capsys):
    """1080x1920 (images 54x96) renders at 40x64: 0.625 instead of 0.5625; the ground truth loses
    4.8 rows top and bottom instead of being stretched, and the camera (fy, cy) follows."""
    tj = write_fox(tmp_path / "fox")
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (96, 54, 3), dtype=np.uint8))
    photo.save(tmp_path / "fox" / "images" / "0001.png")
    data = json.loads(tj.read_text())
    data["frames"][1]["file_path"] = "images/0001.png"  # lossless, so the pixels can be compared
    tj.write_text(json.dumps(data))
    assert run_eval(tiny_model_dir, tj, tmp_path / "out") == 0
    assert "the centre 54x86 is scored" in capsys.readouterr().err
    folder = tmp_path / "out" / "fox"
    box = (0.0, 4.8, 54.0, 91.2)
    gt = np.asarray(Image.open(folder / "gt_view001.png"))
    from viewneti_backend.data import load_transforms_scene

    scene = load_transforms_scene(tj, views=[1])  # the fox's lens distortion undone, as eval scores it
    assert scene.cameras is not None
    np.testing.assert_array_equal(gt, np.asarray(scene.images[0].resize((40, 64), Image.Resampling.BICUBIC, box=box)))
    assert not np.array_equal(gt, np.asarray(photo.resize((40, 64), Image.Resampling.BICUBIC, box=box)))
    cam = Camera.from_json(json.loads((folder / "manifest.json").read_text())["cameras"][0])
    np.testing.assert_allclose(pixels(cam), expected_pixels(scene.cameras[0], box, (40, 64)), atol=1e-6)
    # fov_y is that of the 86.4 rows kept, not the file's 1920 rows
    fy = 1374.49 * 96 / 1920 * 64 / 86.4
    assert cam.fov_y_deg == pytest.approx(np.degrees(2 * np.arctan(32 / fy)))
