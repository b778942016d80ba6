"""DTU layout, augmentations, evaluation metrics and the `viewneti` CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_backend.augment import AUGMENTATIONS, augment_batch
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.cli import main as cli_main
from viewneti_backend.data import DTU_TEST_VIEWS, DTU_TRAIN_VIEWS, dtu_calibration_cameras, load_dtu_scene
from viewneti_backend.errors import InputError
from viewneti_backend.evaluation import EvalTable, masked_psnr, masked_ssim


def write_dtu(root, scan, cams):
    (root / "Rectified" / f"scan{scan}").mkdir(parents=True)
    (root / "Calibration" / "cal18").mkdir(parents=True)
    for i, cam in enumerate(cams):
        p = cam.projection_matrix()
        (root / "Calibration" / "cal18" / f"pos_{i + 1:03d}.txt").write_text(
            "\n".join(" ".join(f"{v:.6f}" for v in row) for row in p)
        )
        Image.new("RGB", (1600, 1200), (i * 20 % 255, 50, 90)).save(
            root / "Rectified" / f"scan{scan}" / f"rect_{i + 1:03d}_3_r5000.png"
        )


def test_dtu_layout_loads_with_cameras_from_projection_matrices(tmp_path):
    cams = [Camera(orbit_pose(a, 30, 5), 50, 1600, 1200) for a in (0, 40, 80)]
    write_dtu(tmp_path, 8, cams)
    scene = load_dtu_scene(tmp_path, 8, views=[0, 2])
    assert scene.name == "scan8" and scene.images[0].size == (512, 384)
    np.testing.assert_allclose(scene.posed_cameras()[1].camera_to_anchor, cams[2].camera_to_anchor, atol=1e-4)
    assert scene.posed_cameras()[1].fov_y_deg == pytest.approx(50, abs=1e-3)
    assert len(dtu_calibration_cameras(tmp_path)) == 3
    with pytest.raises(InputError, match="DTU files missing"):
        load_dtu_scene(tmp_path, 8, views=[5])
    assert len(DTU_TRAIN_VIEWS) == 9 and len(DTU_TEST_VIEWS) == 25


@pytest.mark.parametrize("key", [5, 7])
def test_augmentations_keep_size_and_range_and_are_seeded(key):
    x = torch.rand(3, 3, 48, 64) * 2 - 1
    a = augment_batch(x, AUGMENTATIONS[key], torch.Generator().manual_seed(1))
    b = augment_batch(x, AUGMENTATIONS[key], torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    assert not torch.equal(a, x)


def test_masked_psnr_is_a_foreground_mean_hand_worked():
    gt = np.zeros((4, 4, 3), np.uint8)
    pred = gt.copy()
    pred[0, 0] = 255  # error inside the mask
    pred[3, 3] = 255  # error outside the mask: ignored
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    # MSE over 4 foreground pixels x 3 channels: 3 / 12 = 0.25 -> 6.02 dB
    assert masked_psnr(pred, gt, mask) == pytest.approx(-10 * math.log10(0.25))
    assert masked_psnr(gt, gt, mask) == math.inf
    big = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    assert masked_ssim(big, big, np.ones((16, 16), bool)) == pytest.approx(1.0)


def test_eval_table_averages_per_scene_then_over_scenes():
    t = EvalTable()
    t.add("a", 0, 0, 10.0, 0.5)
    t.add("a", 1, 0, 20.0, 0.5)  # scene a mean 15
    t.add("b", 0, 0, 30.0, 0.7)  # scene b mean 30
    assert t.mean_over_scenes()["psnr"] == pytest.approx(22.5)  # repo-style
    assert t.mean_pooled()["psnr"] == pytest.approx(20.0)  # pooled over views
    assert "mean" in t.format()


def test_cli_info_render_and_errors(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    assert cli_main(["info", "--model", str(tiny_model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_object"] == "thing_a" and len(info["objects"]) == 2
    assert info["compile"] == "off", "auto compiles on CUDA only"
    out = tmp_path / "views"
    assert (
        cli_main(
            ["render", "--model", str(tiny_model_dir), "--orbit", "2", "--steps", "3", "--out", str(out), "--sheet"]
        )
        == 0
    )
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "thing_a_seed0_manifest.json",
        "thing_a_seed0_sheet.png",
        "thing_a_view000_seed0.png",
        "thing_a_view001_seed0.png",
    ]
    assert Image.open(out / "thing_a_view000_seed0.png").size == (64, 64)
    assert cli_main(["render", "--model", str(tiny_model_dir), "--object", "nope", "--out", str(out)]) == 2
    assert "unknown object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])


def test_cli_trains_on_dtu_with_dtu12d_statistics_from_all_cal18_cameras(tiny_model_dir, tmp_path):
    cams = [Camera(orbit_pose(a, 30, 5), 50, 1600, 1200) for a in (0, 40, 80, 120)]
    write_dtu(tmp_path / "dtu", 8, cams)
    out = tmp_path / "run"
    assert (
        cli_main(
            [
                "train",
                "--mode",
                "2",
                "--model",
                str(tiny_model_dir),
                "--dtu-root",
                str(tmp_path / "dtu"),
                "--scans",
                "8",
                "--views",
                "0,1",
                "--steps",
                "2",
                "--batch-size",
                "1",
                "--grad-accum",
                "1",
                "--camera-parameterization",
                "dtu-12d",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = json.loads((out / "view_mapper" / "mapper_config.json").read_text())
    stats = cfg["camera_parameterization"]["stats"]
    (state,) = out.glob("checkpoint-*/trainer_state.json")
    train_cfg = json.loads(state.read_text())["config"]
    assert (train_cfg["width"], train_cfg["height"]) == (512, 384)  # the paper's DTU size, not the native square
    from viewneti_backend.camera_features import Dtu12d

    all_cal18 = Dtu12d().fit(dtu_calibration_cameras(tmp_path / "dtu"))  # all four, not only the two trained on
    trained_only = Dtu12d().fit(dtu_calibration_cameras(tmp_path / "dtu")[:2])
    np.testing.assert_allclose(stats["min"], all_cal18.stats["min"])
    np.testing.assert_allclose(stats["max"], all_cal18.stats["max"])
    assert not np.allclose(stats["max"], trained_only.stats["max"])


def test_compile_modes_resolve_per_device():
    from viewneti_backend.compile_modes import resolve_compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile_mode(None, cpu) is None and resolve_compile_mode("auto", cpu) is None
    assert (
        resolve_compile_mode("auto", cuda) == "reduce-overhead" and resolve_compile_mode(True, cpu) == "reduce-overhead"
    )
    assert resolve_compile_mode("off", cuda) is None and resolve_compile_mode(False, cuda) is None
    assert resolve_compile_mode("max-autotune", cpu) == "max-autotune"
    with pytest.raises(InputError, match="unknown compile mode 'fast'"):
        resolve_compile_mode("fast", cuda)


def test_cli_rejects_an_unknown_compile_mode(tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        cli_main(["info", "--model", str(tiny_model_dir), "--compile", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
