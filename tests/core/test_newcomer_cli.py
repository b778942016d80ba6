"""What a new user meets on the command line (issue 24): sizes that default to the model's native size
and keep the camera's aspect, warnings on stderr, `invert --image`, run manifests and PNG metadata,
`eval` that writes its images and leaves the training view out."""

import json

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.camera_features import AnchorDistance14d
from viewneti_backend.cameras import Camera, orbit_pose, size_for_long_side
from viewneti_backend.cli import main as cli_main
from viewneti_backend.sheets import contact_sheet, read_png_settings


def write_scene(folder, sizes, angle_x=0.7):
    """A Blender-NeRF-style scene: camera_angle_x only, one orbit camera per image."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i % 255, 120, 200)).save(folder / f"r_{i}.png")
        frames.append({"file_path": f"r_{i}.png", "transform_matrix": orbit_pose(90 * i, 20, 4).tolist()})
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    return folder / "transforms.json"


def test_long_side_keeps_the_aspect_on_the_latent_grid():
    assert size_for_long_side(1920, 1080, 64) == (64, 40)  # 36 rounds to the 8-px grid
    assert size_for_long_side(1080, 1920, 128) == (72, 128)
    assert size_for_long_side(800, 800, 64) == (64, 64)
    assert size_for_long_side(4000, 100, 64) == (64, 16)  # never below the 16-px minimum


def test_render_transforms_defaults_to_the_native_long_side_and_keeps_the_aspect(tiny_model_dir, tmp_path):
    tj = write_scene(tmp_path / "scene", [(192, 96), (192, 96)])
    for size, expect in ((None, (64, 32)), ("128", (128, 64)), ("48x32", (48, 32))):
        out = tmp_path / f"out_{size}"
        argv = ["render", "--model", str(tiny_model_dir), "--transforms", str(tj), "--steps", "1", "--out", str(out)]
        assert cli_main(argv + (["--size", size] if size else [])) == 0
        img = out / "thing_a_view000_seed0.png"
        assert Image.open(img).size == expect
        cam = read_png_settings(img)["camera"]
        # fov_y stays the file's (camera_angle_x at 2:1), whatever the size
        expected_fov_y = np.degrees(2 * np.arctan(np.tan(0.35) * 96 / 192))
        assert cam["fov_y_deg"] == pytest.approx(expected_fov_y, abs=1e-6)


def test_render_writes_a_manifest_png_metadata_and_a_sheet_of_this_run_only(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "views"
    out.mkdir()
    Image.new("RGB", (64, 64), "red").save(out / "thing_a_view007_seed0.png")  # an earlier run's file
    argv = ["render", "--model", str(tiny_model_dir), "--orbit", "2", "--steps", "1", "--seed", "3"]
    assert cli_main(argv + ["--out", str(out), "--sheet"]) == 0
    manifest = json.loads((out / "thing_a_seed3_manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["steps"] == 1 and manifest["object"] == "thing_a"
    assert manifest["model"] == str(tiny_model_dir) and manifest["sheet"] == "thing_a_seed3_sheet.png"
    assert [v["file"] for v in manifest["views"]] == ["thing_a_view000_seed3.png", "thing_a_view001_seed3.png"]
    assert len(manifest["views"][1]["camera"]["camera_to_anchor"]) == 4
    meta = read_png_settings(out / "thing_a_view001_seed3.png")
    assert meta["seed"] == 3 and meta["view"] == 1 and meta["guidance"] == manifest["guidance"]
    sheet = Image.open(out / "thing_a_seed3_sheet.png")
    # 2 cells (not 3: the stale view007 is not this run's), each enlarged to >= 160 px, plus a row title
    assert sheet.size[0] > 2 * 160 and sheet.size[0] < 3 * 160 + 200
    assert read_png_settings(out / "thing_a_seed3_sheet.png")["object"] == "thing_a"


def test_contact_sheet_rows_have_titles_and_labels_are_drawn(tmp_path):
    cells = [Image.new("RGB", (64, 64), "white") for _ in range(4)]
    plain = contact_sheet(cells, tmp_path / "a.png", columns=2, labels=[""] * 4)
    titled = contact_sheet(
        cells, tmp_path / "b.png", columns=2, labels=["v0", "v1", "v2", "v3"], row_titles=["gt", "x"]
    )
    a, b = Image.open(plain), Image.open(titled)
    assert b.size[0] > a.size[0] and b.size[1] > a.size[1]  # title column, label rows
    left = np.asarray(b.convert("L"))[:, :20]
    assert (left < 128).any(), "row titles are drawn in the left margin"


def test_render_warns_on_stderr_when_far_above_the_native_size(tiny_model_dir, tmp_path, capsys):
    argv = ["render", "--model", str(tiny_model_dir), "--orbit", "1", "--steps", "1", "--size", "192"]
    assert cli_main(argv + ["--out", str(tmp_path / "big")]) == 0
    err = capsys.readouterr().err
    assert "warning: 192x192 is 3x the model's native size (64 px)" in err
    manifest = json.loads((tmp_path / "big" / "thing_a_seed0_manifest.json").read_text())
    assert manifest["warnings"] and "native size" in manifest["warnings"][0]
    assert cli_main(argv[:-2] + ["--out", str(tmp_path / "native")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_distance_outside_the_trained_range_is_named_not_silently_clamped():
    cams = [Camera(orbit_pose(0, 20, r), 40, 64, 64) for r in (3.2, 3.6, 4.0)]
    param = AnchorDistance14d().fit(cams)
    assert param.range_warnings(cams) == []
    far = [Camera(orbit_pose(0, 20, 8.0), 40, 64, 64), Camera(orbit_pose(90, 20, 1.0), 40, 64, 64)]
    (w,) = param.range_warnings(far)
    assert "camera 0 (and 1 more) is 8.00 units from the anchor" in w and "3.20-4.00" in w
    # the features are still clamped to the trained range (the render goes ahead at 4.0)
    np.testing.assert_allclose(param.features(far[:1]).numpy()[0, 12], 1.0)


def test_invert_checks_names_and_files_before_loading_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    missing = ["--model", str(tmp_path / "no-model-here")]  # loading it would fail: it must not get that far
    assert cli_main(["invert", *missing, "--image", str(tmp_path / "x.png"), "--name", "bad name"]) == 2
    assert "invalid object name 'bad name'" in capsys.readouterr().err
    assert cli_main(["invert", *missing, "--image", str(tmp_path / "x.png"), "--name", "ok"]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert cli_main(["invert", *missing, "--image", str(tmp_path / "broken.png"), "--name", "ok"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="either --image"):
        cli_main(["invert", *missing, "--name", "ok"])


def test_invert_from_one_image_with_an_orbit_camera_then_eval_leaves_that_view_out(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    tj = write_scene(tmp_path / "scene", [(96, 64)] * 3)
    model = ["--model", str(tiny_model_dir)]
    assert (
        cli_main(
            [
                "invert",
                *model,
                "--image",
                str(tmp_path / "scene" / "r_0.png"),
                "--azimuth",
                "0",
                "--elevation",
                "20",
                "--radius",
                "4",
                "--fov",
                "35",
                "--name",
                "from_photo",
                "--steps",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "training at 64x40" in err and "reference 96x64" in err and "about 2 s at the 1.5 s/step" in err
    assert (
        cli_main(["invert", *model, "--transforms", str(tj), "--views", "1", "--name", "from_view1", "--steps", "1"])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "eval"
    assert (
        cli_main(
            [
                "eval",
                *model,
                "--transforms",
                str(tj),
                "--object",
                "from_view1",
                "--seeds",
                "0",
                "--steps",
                "1",
                "--out",
                str(out),
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "views [0, 2] (all but the training view(s) [1])" in captured.err
    assert "eval from_view1 on scene" in captured.err  # the progress bar
    assert "scene " in captured.out and "from_view1 " not in captured.out  # the scene column names the scene
    result = json.loads((tmp_path / "e.json").read_text())
    assert list(result["per_scene"]) == ["scene"] and result["views"] == [0, 2]
    written = sorted(p.name for p in (out / "scene").iterdir())
    assert written == [
        "from_view1_view000_seed0.png",
        "from_view1_view002_seed0.png",
        "gt_view000.png",
        "gt_view002.png",
        "manifest.json",
        "sheet.png",
    ]
    assert Image.open(out / "scene" / "gt_view000.png").size == (64, 40)  # ground truth at the render's aspect


def test_default_inversion_steps_are_cpu_sized():
    import torch

    from viewneti_backend.engine import CPU_INVERT_STEPS, GPU_INVERT_STEPS, default_invert_steps

    assert default_invert_steps(torch.device("cpu")) == CPU_INVERT_STEPS == 150
    assert default_invert_steps(torch.device("cuda")) == GPU_INVERT_STEPS == 3000


def test_docs_state_the_toy_models_shipped_sampling_defaults():
    """README, server/API.md and the add-on's README quote the toy model's sampling.json, not stale values."""
    from pathlib import Path

    from viewneti_backend.engine import embedded_model_dir

    root = Path(__file__).resolve().parents[2]
    d = json.loads((embedded_model_dir() / "viewneti" / "sampling.json").read_text())
    api = (root / "server" / "API.md").read_text()
    quoted = f'{{"guidance": {d["guidance"]:.1f}, "steps": {d["steps"]}, "live_steps": {d["live_steps"]}}}'
    assert api.count(quoted) == 2, quoted  # the Conventions example and the health example
    assert (
        f"The toy model ships {d['steps']} / {d['guidance']:.1f} / {d['live_steps']}"
        in (root / "README.md").read_text()
    )
    addon = (root / "blender_addon" / "README.md").read_text()
    assert f"{d['steps']} steps, guidance {d['guidance']:g}, live {d['live_steps']}" in addon


def test_render_reads_its_camera_files_before_loading_the_model(tmp_path, capsys):
    no_model = ["--model", str(tmp_path / "no-model-here")]  # loading it would fail differently
    assert cli_main(["render", *no_model, "--transforms", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    tj = write_scene(tmp_path / "scene", [(64, 64)])
    assert cli_main(["render", *no_model, "--transforms", str(tj), "--views", "5", "--out", str(tmp_path / "o")]) == 2
    assert "view indices [5] do not exist" in capsys.readouterr().err


def test_invert_references_keep_their_alpha_as_the_mask(tmp_path):
    """`invert --image` keeps an RGBA photo's alpha (the engine composites it on the model's reference
    background); a transforms scene is composited on that same background, not on white."""
    from viewneti_backend.cli import build_parser, reference_from_args
    from viewneti_backend.engine import TOY_BACKGROUND, flatten_reference

    rgba = np.zeros((40, 64, 4), np.uint8)
    rgba[10:30, 20:40] = (200, 30, 30, 255)  # an opaque red object on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    orbit = ["--azimuth", "0", "--elevation", "20", "--radius", "4", "--fov", "35", "--name", "cut"]
    images, cameras = reference_from_args(
        build_parser().parse_args(["invert", "--image", str(tmp_path / "cutout.png"), *orbit])
    )
    assert images[0].mode == "RGBA" and (cameras[0].width, cameras[0].height) == (64, 40)
    flat = np.asarray(flatten_reference(images[0], TOY_BACKGROUND))
    assert tuple(flat[0, 0]) == TOY_BACKGROUND and tuple(flat[20, 30]) == (200, 30, 30)

    scene = tmp_path / "scene"
    scene.mkdir()
    Image.fromarray(rgba, "RGBA").save(scene / "r_0.png")
    frames = [{"file_path": "r_0.png", "transform_matrix": orbit_pose(0, 20, 4).tolist()}]
    (scene / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    args = build_parser().parse_args(["invert", "--transforms", str(scene / "transforms.json"), "--name", "cut"])
    images, _ = reference_from_args(args)  # the embedded toy model: its sky, not white
    assert tuple(np.asarray(images[0])[0, 0]) == TOY_BACKGROUND


def test_docs_quote_the_inversion_defaults_and_real_command_names():
    """README, server/API.md and the add-on README give the inversion defaults of viewneti_backend.limits,
    and every `viewneti <command>` / `viewneti-server` they show exists."""
    import re
    import tomllib
    from pathlib import Path

    from viewneti_backend import limits
    from viewneti_backend.cli import build_parser

    root = Path(__file__).resolve().parents[2]
    docs = {name: (root / name).read_text() for name in ("README.md", "server/API.md", "blender_addon/README.md")}
    for name, text in docs.items():
        assert re.search(rf"{limits.GPU_INVERT_STEPS}( steps)? on a GPU", text), name
        assert f"{limits.CPU_INVERT_STEPS} on a CPU" in text, name
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"viewneti", "viewneti-server"} <= set(scripts)
    parser = build_parser()
    addon_text = "\n".join(p.read_text() for p in (root / "blender_addon").glob("*.py"))
    shown = set()
    for text in [*docs.values(), addon_text]:
        shown |= set(re.findall(r"`viewneti ([a-z][a-z-]*)", text))
        shown |= set(re.findall(r"^\s*viewneti ([a-z][a-z-]*)", text, re.M))
    assert shown
    for command in sorted(shown):  # a command that exists answers --help; an unknown one is a usage error
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([command, "--help"])
        assert exit_.value.code == 0, f"`viewneti {command}` is shown in the docs but is no command"
    assert "viewneti-server --port" in addon_text  # the add-on's "no backend" message names the real command


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--fov", "0", "--fov (the vertical field of view) must be in [0.01, 180) degrees, got 0.0"),
        ("--fov", "-5", "must be in [0.01, 180) degrees, got -5.0"),
        ("--fov", "180", "must be in [0.01, 180) degrees, got 180.0"),
        ("--fov", "nan", "must be in [0.01, 180) degrees, got nan"),
        ("--azimuth", "nan", "--azimuth must be a finite number of degrees, got nan"),
        ("--elevation", "inf", "--elevation must be a finite number of degrees, got inf"),
        ("--radius", "0", "--radius (the distance to the anchor) must be positive, got 0.0"),
        ("--radius", "-1", "--radius (the distance to the anchor) must be positive, got -1.0"),
    ],
)
def test_invert_checks_the_image_camera_before_loading_the_model(tmp_path, capsys, monkeypatch, option, value, message):
    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    Image.new("RGB", (96, 64), "gray").save(tmp_path / "photo.png")
    missing = ["--model", str(tmp_path / "no-model-here")]  # loading it would fail: it must not get that far
    argv = ["invert", *missing, "--image", str(tmp_path / "photo.png"), "--name", "ok", f"{option}={value}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --image camera: " in err and message in err and "Traceback" not in err
    # render's orbit is checked the same way, also before the model loads
    argv = ["render", *missing, "--out", str(tmp_path / "o"), f"{option}={value}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "error: orbit camera: " in err and message in err


def test_invert_of_a_photo_warns_only_about_what_training_meets(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A 1024x768 photo trains at 64x48: no "16x the model's native size" warning (that is for renders)."""
    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    Image.new("RGB", (1024, 768), (90, 140, 200)).save(tmp_path / "photo.jpg")
    argv = ["invert", "--model", str(tiny_model_dir), "--image", str(tmp_path / "photo.jpg"), "--name", "photo"]
    assert cli_main([*argv, "--radius", "4", "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "training at 64x48" in err and "reference 1024x768" in err
    assert "warning" not in err and "native size" not in err


def write_cameras(path, cameras):
    path.write_text(json.dumps({"cameras": cameras}))
    return path


def test_render_cameras_without_a_size_take_the_native_size(tiny_model_dir, tmp_path, capsys):
    pose = orbit_pose(30, 20, 3.6).tolist()
    cams = write_cameras(
        tmp_path / "cams.json",
        [{"camera_to_anchor": pose, "fov_y_deg": 35}, {"camera_to_anchor": pose, "width": 48, "height": 32}],
    )
    out = tmp_path / "out"
    argv = ["render", "--model", str(tiny_model_dir), "--cameras", str(cams), "--steps", "1", "--out", str(out)]
    assert cli_main(argv) == 0
    assert "warning" not in capsys.readouterr().err  # not 512x512 on a 64-px model
    assert Image.open(out / "thing_a_view000_seed0.png").size == (64, 64)  # native, square, fov_y kept
    assert read_png_settings(out / "thing_a_view000_seed0.png")["camera"]["fov_y_deg"] == pytest.approx(35)
    assert Image.open(out / "thing_a_view001_seed0.png").size == (48, 32)  # the file's size stays
    no_model = ["render", "--model", str(tmp_path / "no-model"), "--out", str(out), "--cameras"]
    half = write_cameras(tmp_path / "half.json", [{"camera_to_anchor": pose, "width": 64}])
    assert cli_main([*no_model, str(half)]) == 2
    assert "camera 0 gives width alone: give both width and height, or neither" in capsys.readouterr().err
    pixels = write_cameras(tmp_path / "px.json", [{"camera_to_anchor": pose, "fy": 80.0, "cx": 30.0}])
    assert cli_main([*no_model, str(pixels)]) == 2
    assert "camera 0 gives fy, cx in pixels but no width and height" in capsys.readouterr().err
    (tmp_path / "obj.json").write_text(json.dumps({"camera": []}))
    assert cli_main([*no_model, str(tmp_path / "obj.json")]) == 2
    assert "expected a non-empty list of cameras" in capsys.readouterr().err


def test_invert_examples_show_the_device_default_steps_not_a_20_hour_cpu_run():
    """README and `viewneti --help` show `invert` without --steps 3000 (20 h on the CPU toy model)
    and give the defaults of viewneti_backend.limits."""
    import re
    from pathlib import Path

    from viewneti_backend import limits
    from viewneti_backend.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    epilog = build_parser().epilog or ""
    for text in (readme, epilog):
        examples = re.findall(r"viewneti invert [^\n]*", text)
        assert examples and not [e for e in examples if "--steps" in e and "--steps N" not in e], examples
    assert f"{limits.GPU_INVERT_STEPS} on a GPU, {limits.CPU_INVERT_STEPS} on a CPU" in epilog
    assert "GPU_INVERT_STEPS" in readme and "CPU_INVERT_STEPS" in readme


def write_split_scene(folder):
    """A NeRF-synthetic-style folder (transforms_train.json only) whose cameras have lens distortion."""
    folder.mkdir(parents=True)
    frames = []
    for i in range(2):
        Image.new("RGB", (32, 32), (90 * i, 120, 200)).save(folder / f"r_{i}.png")
        frames.append({"file_path": f"r_{i}.png", "transform_matrix": orbit_pose(90 * i, 20, 4).tolist()})
    data = {"camera_angle_x": 0.7, "k1": 0.02, "frames": frames}
    (folder / "transforms_train.json").write_text(json.dumps(data))


def test_train_and_pretrain_say_which_split_and_that_the_photos_were_undistorted(tiny_model_dir, tmp_path, capsys):
    write_split_scene(tmp_path / "data" / "obj_a")
    argv = ["train", "--mode", "2", "--model", str(tiny_model_dir), "--data", str(tmp_path / "data" / "obj_a")]
    argv += ["--steps", "1", "--batch-size", "1", "--grad-accum", "1", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "has no transforms.json: using transforms_train.json" in err
    assert "note: lens distortion (OPENCV k1=0.02): 2 image(s) undistorted" in err
    # pretrain prints the same before anything else (one object: it then stops, nothing to hold out)
    argv = ["pretrain", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--steps", "1"]
    assert cli_main([*argv, "--device", "cpu", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert (
        "using transforms_train.json" in err and "note: lens distortion (OPENCV k1=0.02): 2 image(s) undistorted" in err
    )
