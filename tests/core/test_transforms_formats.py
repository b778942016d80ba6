"""transforms.json as real datasets write it (issue 24): instant-ngp's fox (fl_x/fl_y, cx/cy, w/h,
k1 k2 p1 p2 at the top level), NeRF-synthetic's lego (transforms_train/_val/_test, camera_angle_x,
RGBA on black), per-frame overrides, DTU's off-centre principal point, and exact read/write round trips."""

import json

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.cameras import (
    Camera,
    TransformsFrame,
    compose_projection,
    dtu_projection_to_camera,
    orbit_pose,
    read_transforms,
    write_transforms_json,
)
from viewneti_backend.cli import main as cli_main
from viewneti_backend.data import load_transforms_scene
from viewneti_backend.errors import InputError

FOX_TOP = {
    "camera_angle_x": 0.9928,
    "camera_angle_y": 1.5243,
    "fl_x": 1375.52,
    "fl_y": 1374.49,
    "k1": 0.0602,
    "k2": -0.0323,
    "p1": 0.0014,
    "p2": -0.0004,
    "cx": 554.22,
    "cy": 965.36,
    "w": 1080.0,
    "h": 1920.0,
    "aabb_scale": 4,
}


def write_fox(folder, n=3, image_size=(54, 96)):
    """instant-ngp's fox layout at a tiny image size (the file says 1080x1920, as the real one does)."""
    (folder / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.new("RGB", image_size, (30 * i, 90, 160)).save(folder / "images" / f"{i:04d}.jpg")
        frames.append(
            {
                "file_path": f"images/{i:04d}.jpg",
                "sharpness": 30.5 + i,
                "transform_matrix": orbit_pose(40 * i, 10, 4).tolist(),
            }
        )
    (folder / "transforms.json").write_text(json.dumps({**FOX_TOP, "frames": frames}))
    return folder / "transforms.json"


def project(cam: Camera, point):
    p = compose_projection(cam.intrinsics(), cam.world_to_camera_cv()) @ np.append(point, 1.0)
    return p[:2] / p[2]


def test_fox_keeps_focal_lengths_principal_point_and_distortion(tmp_path):
    tf = read_transforms(write_fox(tmp_path / "fox"))
    cam = tf.frames[0].camera
    assert (cam.width, cam.height) == (1080, 1920)
    k = cam.intrinsics()
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], [1375.52, 1374.49, 554.22, 965.36])
    assert tf.frames[0].distortion == {"k1": 0.0602, "k2": -0.0323, "p1": 0.0014, "p2": -0.0004}
    assert tf.frames[1].extra == {"sharpness": 31.5}
    assert tf.meta["aabb_scale"] == 4


def test_read_write_read_is_exact_and_keeps_the_top_level(tmp_path):
    src = write_fox(tmp_path / "fox")
    tf = read_transforms(src)
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    write_transforms_json(out1, tf.frames, tf.meta)
    again = read_transforms(out1)
    for a, b in zip(tf.frames, again.frames):
        np.testing.assert_array_equal(a.camera.camera_to_anchor, b.camera.camera_to_anchor)
        np.testing.assert_array_equal(a.camera.intrinsics(), b.camera.intrinsics())
        assert (a.camera.width, a.camera.height, a.camera.fov_y_deg) == (
            b.camera.width,
            b.camera.height,
            b.camera.fov_y_deg,
        )
        assert a.distortion == b.distortion and a.extra == b.extra and a.file_path == b.file_path
    assert again.meta == tf.meta  # every top-level key, values unchanged
    write_transforms_json(out2, again.frames, again.meta)
    assert out1.read_bytes() == out2.read_bytes()


def test_extra_never_overrides_the_camera_and_frames_are_never_replaced(tmp_path):
    cam = Camera(orbit_pose(0, 20, 4), 40, 64, 48)
    frame = TransformsFrame("a.png", cam, extra={"fl_x": 1.0, "transform_matrix": np.eye(4).tolist(), "note": "kept"})
    assert frame.extra == {"note": "kept"}
    frame.extra["w"] = 9999  # even added later
    write_transforms_json(tmp_path / "t.json", [frame], {"frames": [], "scene": "mine"})
    data = json.loads((tmp_path / "t.json").read_text())
    row = data["frames"][0]
    assert row["w"] == 64 and row["fl_x"] == pytest.approx(cam.intrinsics()[0, 0]) and row["note"] == "kept"
    assert data["scene"] == "mine" and len(data["frames"]) == 1


def test_extra_added_later_cannot_give_a_frame_a_mask_or_distortion(tmp_path):
    frame = TransformsFrame("a.png", Camera(orbit_pose(0, 20, 4), 40, 64, 48), extra={"note": "kept"})
    frame.extra.update({"mask_path": "m.png", "k1": 0.3, "p2": 0.01, "file_path": "other.png"})
    write_transforms_json(tmp_path / "t.json", [frame])
    row = json.loads((tmp_path / "t.json").read_text())["frames"][0]
    assert not {"mask_path", "k1", "p2"} & set(row) and row["file_path"] == "a.png" and row["note"] == "kept"
    (back,) = read_transforms(tmp_path / "t.json").frames
    assert back.mask_path is None and back.distortion == {} and back.extra == {"note": "kept"}
    # the frame's own mask and distortion are written, and extra's cannot replace them either
    own = TransformsFrame("a.png", frame.camera, "own_mask.png", distortion={"k1": 0.05})
    own.extra.update({"mask_path": "m.png", "k1": 0.3})
    write_transforms_json(tmp_path / "u.json", [own])
    (back,) = read_transforms(tmp_path / "u.json").frames
    assert back.mask_path == "own_mask.png" and back.distortion == {"k1": 0.05}


def write_blender_nerf(folder, size, camera_angle_x, n=2):
    """Blender-NeRF's transforms.json: camera_angle_x only (no w, h, fl_x), the size is the images'."""
    folder.mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.new("RGB", size, (60 * i, 100, 150)).save(folder / f"f_{i}.png")
        frames.append({"file_path": f"f_{i}", "transform_matrix": orbit_pose(45 * i, 15, 4).tolist()})
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": camera_angle_x, "frames": frames}))
    return folder / "transforms.json"


def test_angles_only_file_takes_the_size_from_its_images_and_round_trips(tmp_path):
    """160x90 images, camera_angle_x 0.9 rad (51.6 deg): fov_y is 30.4 deg. The old reader guessed
    512x512 (fov_y 51.6 deg) and the writer baked that into w/h/fl_x."""
    tj = write_blender_nerf(tmp_path / "scene", (160, 90), 0.9)
    fov_y = np.degrees(2 * np.arctan(np.tan(0.45) * 90 / 160))
    assert fov_y == pytest.approx(30.40, abs=0.01)
    tf = read_transforms(tj)
    for fr in tf.frames:
        assert (fr.camera.width, fr.camera.height) == (160, 90)
        assert fr.camera.fov_y_deg == pytest.approx(fov_y) and fr.camera.fov_x_deg == pytest.approx(np.degrees(0.9))
    out = tmp_path / "written" / "transforms.json"  # no images next to it: the size must be in the file
    out.parent.mkdir()
    write_transforms_json(out, tf.frames, tf.meta)
    rows = json.loads(out.read_text())["frames"]
    assert [(r["w"], r["h"]) for r in rows] == [(160, 90)] * 2
    again = read_transforms(out)
    for a, b in zip(tf.frames, again.frames):
        assert (b.camera.width, b.camera.height) == (160, 90) and b.camera.fov_y_deg == pytest.approx(fov_y)
        np.testing.assert_allclose(b.camera.intrinsics(), a.camera.intrinsics(), rtol=1e-12)
    assert again.meta == tf.meta == {"camera_angle_x": 0.9}
    scene = load_transforms_scene(tj)
    assert scene.cameras is not None and scene.cameras[0].fov_y_deg == pytest.approx(fov_y)


def test_angles_only_file_without_its_images_says_what_to_add(tmp_path):
    tj = write_blender_nerf(tmp_path / "scene", (160, 90), 0.9)
    (tmp_path / "scene" / "f_1.png").unlink()
    with pytest.raises(InputError, match=r"frame 1 gives no image size \(w, h\) .*f_1 cannot be read"):
        read_transforms(tj)
    data = json.loads(tj.read_text())
    data["frames"][1].update(w=160, h=90)  # a size in the file is enough
    tj.write_text(json.dumps(data))
    assert read_transforms(tj).frames[1].camera.fov_y_deg == pytest.approx(30.40, abs=0.01)


def test_per_frame_intrinsics_override_the_top_level(tmp_path):
    frames = [
        {"file_path": "a.png", "transform_matrix": orbit_pose(0, 0, 4).tolist()},
        {
            "file_path": "b.png",
            "transform_matrix": orbit_pose(90, 0, 4).tolist(),
            "fl_x": 50.0,
            "fl_y": 50.0,
            "cx": 20.0,
        },
    ]
    (tmp_path / "transforms.json").write_text(
        json.dumps({"fl_x": 100.0, "w": 64, "h": 48, "k1": 0.1, "frames": frames})
    )
    a, b = read_transforms(tmp_path / "transforms.json").frames
    assert a.camera.intrinsics()[0, 0] == 100.0 and a.camera.intrinsics()[1, 1] == 100.0  # fl_y = fl_x
    assert b.camera.intrinsics()[0, 0] == 50.0 and b.camera.intrinsics()[0, 2] == 20.0 and b.camera.cy is None
    assert a.distortion == b.distortion == {"k1": 0.1}


def test_downscaled_images_scale_the_intrinsics_and_keep_the_aspect(tmp_path):
    scene = load_transforms_scene(write_fox(tmp_path / "fox"), views=[0])
    assert scene.cameras is not None
    cam = scene.cameras[0]
    assert (cam.width, cam.height) == (54, 96) == scene.images[0].size
    np.testing.assert_allclose(cam.intrinsics()[0, 0], 1375.52 * 54 / 1080)
    np.testing.assert_allclose(cam.intrinsics()[1, 2], 965.36 * 96 / 1920)
    # undistorted with the scaled K: the note names the file's coefficients, nothing is left to warn about
    assert scene.meta["notes"] == [
        "lens distortion (OPENCV k1=0.0602 k2=-0.0323 p1=0.0014 p2=-0.0004): 1 image(s) undistorted to the "
        "pinhole camera of the same fl_x/fl_y/cx/cy (as cv2.undistort with newCameraMatrix = K); 3.0% of their "
        "pixels lie outside the photo and show the background (255, 255, 255)"
    ]
    assert scene.meta["warnings"] == []


def write_lego(folder, size=32):
    """NeRF-synthetic's layout: transforms_{train,val,test}.json, camera_angle_x, RGBA on black, no extension."""
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        (folder / split).mkdir(parents=True)
        frames = []
        for i in range(n):
            rgba = np.zeros((size, size, 4), np.uint8)  # transparent black background, as lego ships
            rgba[8:24, 8:24] = (200, 30, 30, 255)
            Image.fromarray(rgba, "RGBA").save(folder / split / f"r_{i}.png")
            frames.append(
                {
                    "file_path": f"./{split}/r_{i}",
                    "rotation": 0.0126,
                    "transform_matrix": orbit_pose(60 * i, 30, 4).tolist(),
                }
            )
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.6911, "frames": frames}))


def test_lego_folder_uses_the_train_split_and_its_alpha_as_the_mask(tmp_path):
    write_lego(tmp_path / "lego")
    scene = load_transforms_scene(tmp_path / "lego")
    assert len(scene.images) == 2
    assert "using transforms_train.json" in scene.meta["notes"][0]
    assert "transforms_val.json" in scene.meta["notes"][0]
    assert scene.cameras is not None
    cam = scene.cameras[0]
    assert (cam.width, cam.height) == (32, 32) and cam.fov_x_deg == pytest.approx(np.degrees(0.6911))
    assert scene.masks is not None and scene.masks[0].sum() == 16 * 16 and scene.masks[0][16, 16]
    rgb = np.asarray(scene.images[0])
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # background composited to white, not lego's black
    assert tuple(rgb[16, 16]) == (200, 30, 30)
    val = load_transforms_scene(tmp_path / "lego" / "transforms_val.json")
    assert len(val.images) == 1 and val.meta["notes"] == []
    with pytest.raises(InputError, match="holds no transforms.json"):
        load_transforms_scene(tmp_path / "lego" / "train")


def test_dtu_principal_point_survives_transforms_json(tmp_path):
    """DTU pos_001.txt-like P with an off-centre principal point: the old path dropped it (29.5 px)."""
    k = np.array([[2892.33, 0.0, 823.20], [0.0, 2883.18, 619.07], [0.0, 0.0, 1.0]])
    truth = Camera(orbit_pose(15, 25, 6), 40, 1600, 1200)
    p = compose_projection(k, truth.world_to_camera_cv())
    cam = dtu_projection_to_camera(p, 1600, 1200)
    write_transforms_json(tmp_path / "transforms.json", [TransformsFrame("x.png", cam)])
    back = read_transforms(tmp_path / "transforms.json").frames[0].camera
    point = np.array([0.3, -0.2, 0.4])
    expected = p @ np.append(point, 1.0)
    np.testing.assert_allclose(project(back, point), expected[:2] / expected[2], atol=1e-6)
    centred = Camera(back.camera_to_anchor, back.fov_y_deg, 1600, 1200)  # what the old reader built
    assert np.linalg.norm(project(centred, point) - expected[:2] / expected[2]) > 10


def test_render_cli_says_which_split_and_that_the_lens_is_not_rendered(tiny_model_dir, tmp_path, capsys):
    write_lego(tmp_path / "lego")
    model = ["--model", str(tiny_model_dir), "--steps", "1", "--views", "0"]
    assert cli_main(["render", *model, "--transforms", str(tmp_path / "lego"), "--out", str(tmp_path / "o1")]) == 0
    assert "note: " in capsys.readouterr().err
    tj = write_fox(tmp_path / "fox")
    assert cli_main(["render", *model, "--transforms", str(tj), "--out", str(tmp_path / "o2")]) == 0
    err = capsys.readouterr().err
    lens = "OPENCV k1=0.0602 k2=-0.0323 p1=0.0014 p2=-0.0004"
    assert f"note: lens distortion ({lens}): the cameras are the pinhole cameras of the same fl_x/fl_y/cx/cy" in err
    assert "undistorted to" not in err  # render reads the cameras only: no photo is undistorted
    assert "warning: " not in err
    assert Image.open(tmp_path / "o2" / "thing_a_view000_seed0.png").size == (40, 64)  # 1080x1920 -> native 64
