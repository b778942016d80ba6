"""`render --transforms` reads only the cameras: image sizes from the files' headers, no pixel decoded
or undistorted (a real scene is hundreds of 4K fisheye photos), the same cameras and the same errors
as the scene loader that `eval`, `invert` and `train` use, which still read the pixels."""

import json

import numpy as np
import pytest
from PIL import Image, ImageFile

from viewneti_backend.cameras import orbit_pose
from viewneti_backend.cli import main as cli_main
from viewneti_backend.data import load_transforms_cameras, load_transforms_scene
from viewneti_backend.errors import InputError
from viewneti_backend.sheets import read_png_settings

from .test_transforms_formats import write_blender_nerf, write_fox

FISHEYE = {"camera_model": "OPENCV_FISHEYE", "k1": 0.05, "k2": -0.01}


def write_scene(folder, top, sizes=((48, 32), (48, 32))):
    """Noise photos (PNG) with one orbit camera each; ``top`` holds the file's intrinsics and lens."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
        frames.append({"file_path": f"f{i}.png", "transform_matrix": orbit_pose(70 * i, 20, 3.6).tolist()})
    (folder / "transforms.json").write_text(json.dumps({**top, "frames": frames}))
    return folder / "transforms.json"


def truncate_pixels(folder):
    """Cut every PNG after its header and the start of its first IDAT: the size is readable, the pixels are not."""
    for png in folder.glob("*.png"):
        png.write_bytes(png.read_bytes()[:45])
        with Image.open(png) as im:
            assert im.size[0] > 0
            with pytest.raises(OSError):
                im.load()


SCENES = {
    "pinhole": lambda d: write_scene(d, {"fl_x": 40.0, "fl_y": 41.0, "cx": 23.0, "cy": 17.0, "w": 48, "h": 32}),
    # camera_angle_x only: each size from its image's header (one image of another size)
    "camera_angle_x": lambda d: write_scene(d, {"camera_angle_x": 0.8}, sizes=((48, 32), (32, 48))),
    "blender_nerf_no_extension": lambda d: write_blender_nerf(d, (40, 24), 0.9),
    # instant-ngp's fox: OPENCV k1 k2 p1 p2, intrinsics for 1080x1920, images 54x96 (scaled)
    "opencv_downscaled": lambda d: write_fox(d, n=3),
    "fisheye": lambda d: write_scene(d, {"fl_x": 30.0, "w": 48, "h": 32, **FISHEYE}),
}


@pytest.mark.parametrize("kind", sorted(SCENES))
@pytest.mark.parametrize("views", [None, [1, 0]])
def test_the_cameras_are_those_of_the_scene_loader(tmp_path, kind, views):
    tj = SCENES[kind](tmp_path / "scene")
    scene = load_transforms_scene(tj, views)
    only = load_transforms_cameras(tj, views)
    assert scene.cameras is not None and len(only.cameras) == len(scene.cameras) == len(scene.images)
    for cam, full, image in zip(only.cameras, scene.cameras, scene.images):
        assert cam.to_json() == full.to_json() and (cam.width, cam.height) == image.size
        np.testing.assert_array_equal(cam.intrinsics(), full.intrinsics())
    assert only.split_note is None and only.file == tj


def test_the_lens_note_says_the_pinhole_camera_is_rendered(tmp_path):
    only = load_transforms_cameras(SCENES["opencv_downscaled"](tmp_path / "fox"))
    assert only.notes() == [
        "lens distortion (OPENCV k1=0.0602 k2=-0.0323 p1=0.0014 p2=-0.0004): the cameras are the pinhole "
        "cameras of the same fl_x/fl_y/cx/cy, as the undistorted photos show them (the lens is not rendered)"
    ]
    assert load_transforms_cameras(SCENES["pinhole"](tmp_path / "plain")).notes() == []


def test_no_pixel_is_decoded_or_undistorted(tmp_path, monkeypatch):
    tj = write_scene(tmp_path / "scene", {"camera_angle_x": 0.8, **FISHEYE}, sizes=((48, 32), (40, 40)))
    expected = [c.to_json() for c in load_transforms_cameras(tj).cameras]
    truncate_pixels(tmp_path / "scene")
    with pytest.raises(InputError, match=r"cannot read image .*f0\.png"):
        load_transforms_scene(tj)  # the scene loader does decode them

    def refuse(*args, **kwargs):
        raise AssertionError("the cameras-only loader decoded or undistorted pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr("viewneti_backend.undistort.Undistorter.add", refuse)
    assert [c.to_json() for c in load_transforms_cameras(tj).cameras] == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d, tj: None, r"view indices \[5\] do not exist"),
        (lambda d, tj: (d / "f1.png").unlink(), r"cannot read image .*f1\.png"),
        (lambda d, tj: (d / "f1.png").write_bytes(b"not an image"), r"cannot read image .*f1\.png"),
        (lambda d, tj: tj.write_text("{"), r"cannot read .*transforms\.json"),
        (
            lambda d, tj: tj.write_text(json.dumps({**json.loads(tj.read_text()), "camera_model": "EQUIRECTANGULAR"})),
            r"EQUIRECTANGULAR is not a pinhole camera",
        ),
    ],
)
def test_bad_files_and_views_are_the_same_errors(tmp_path, change, message):
    tj = SCENES["pinhole"](tmp_path / "scene")
    change(tmp_path / "scene", tj)
    views = [5] if "view indices" in message else None
    for load in (load_transforms_scene, load_transforms_cameras):
        with pytest.raises(InputError, match=message):
            load(tj, views)


def test_render_uses_only_the_cameras_and_the_other_commands_still_read_the_pixels(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    tj = write_scene(tmp_path / "scene", {"camera_angle_x": 0.8, **FISHEYE}, sizes=((48, 32), (48, 32)))
    cams = load_transforms_cameras(tj).cameras
    truncate_pixels(tmp_path / "scene")
    model = ["--model", str(tiny_model_dir)]
    out = tmp_path / "views"
    with monkeypatch.context() as m:
        m.setattr("viewneti_backend.undistort.Undistorter.add", lambda *a, **k: pytest.fail("render undistorted"))
        argv = ["render", *model, "--transforms", str(tj), "--views", "1", "--steps", "1", "--out", str(out)]
        assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "note: lens distortion (OPENCV_FISHEYE k1=0.05 k2=-0.01): the cameras are the pinhole cameras" in err
    rendered = read_png_settings(out / "thing_a_view000_seed0.png")["camera"]
    np.testing.assert_array_equal(rendered["camera_to_anchor"], cams[1].camera_to_anchor)
    for argv in (
        ["eval", *model, "--transforms", str(tj), "--views", "1", "--seeds", "0", "--out", str(tmp_path / "e")],
        ["invert", *model, "--transforms", str(tj), "--views", "0", "--name", "cut", "--steps", "1"],
        ["train", *model, "--mode", "2", "--data", str(tmp_path / "scene"), "--out", str(tmp_path / "t")],
    ):
        assert cli_main(argv) == 2, argv[0]
        assert "cannot read image" in capsys.readouterr().err, argv[0]
