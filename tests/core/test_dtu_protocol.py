"""The DTU evaluation protocol as the reference scores it: masks, 400x300, both averagings, per scan/seed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.cli import main as cli_main
from viewneti_backend.data import DTU_TEST_VIEWS, DTU_TRAIN_VIEWS
from viewneti_backend.evaluation import (
    DTU_SCORE_SIZE,
    dtu_mask_path,
    dtu_scores,
    dtu_summary,
    dtu_tensor_resize,
    load_dtu_mask,
)
from viewneti_backend.sheets import read_png_settings
from viewneti_backend.testing import write_synthetic_dtu_calibration


def test_masked_psnr_and_ssim_at_the_scoring_size_hand_worked():
    h, w = 300, 400
    gt = np.zeros((h, w, 3), np.uint8)
    pred = gt.copy()
    mask = np.zeros((h, w, 3), np.float32)
    mask[:10, :10] = 1  # 100 foreground pixels
    pred[:2, :10] = 51  # 20 of them off by 51/255 = 0.2 in all 3 channels
    pred[200:, 200:] = 255  # background errors are zeroed away
    s = dtu_scores(pred, gt, mask)
    # MSE = 20 px * 3 ch * 0.04 / (100 px * 3 ch) = 0.008 -> -10 log10(0.008) = 20.969
    assert s["psnr"] == pytest.approx(-10 * math.log10(0.008), abs=1e-4)
    assert s["lpips"] is None
    assert dtu_scores(gt, gt, mask)["ssim"] == pytest.approx(1.0)
    ssim = s["ssim"]
    assert ssim is not None and 0 < ssim < 1


def test_masks_are_thresholded_at_0_01_after_the_resizes(tmp_path):
    # 3/255 = 0.0118 is foreground, 2/255 = 0.0078 background; a 400x300 mask is not resampled
    arr = np.zeros((300, 400), np.uint8)
    arr[:, :200] = 3
    arr[:, 200:] = 2
    folder = tmp_path / "scan8" / "mask"
    folder.mkdir(parents=True)
    Image.fromarray(arr).save(folder / "025.png")
    m, found = load_dtu_mask(tmp_path, 8, 25)
    assert found and m.shape == (300, 400, 3)
    assert m[:, :200].min() == 1 and m[:, 200:].max() == 0
    # the other layout (no mask/ folder) and a missing file (all foreground, as the reference)
    flat = tmp_path / "flat"
    (flat / "scan9").mkdir(parents=True)
    assert dtu_mask_path(flat, 9, 1) == flat / "scan9" / "001.png"
    missing, found = load_dtu_mask(flat, 9, 1)
    assert not found and missing.min() == 1


def test_scoring_resize_is_torchvision_014_bicubic_without_antialias():
    const = np.full((576, 768, 3), 100, np.uint8)
    np.testing.assert_array_equal(dtu_tensor_resize(const), np.full((300, 400, 3), 100, np.uint8))
    # a 2-pixel-period stripe pattern: without antialiasing bicubic keeps sampling the stripes
    # (values far from the mean 127.5); an antialiased resize would average them out
    stripes = np.zeros((576, 768, 3), np.uint8)
    stripes[:, ::2] = 255
    out = dtu_tensor_resize(stripes).astype(int)
    assert out.shape == (300, 400, 3) and np.abs(out - 127.5).max() > 60
    assert dtu_tensor_resize(np.zeros((300, 400, 3), np.uint8)).shape == (300, 400, 3)


def test_summary_averages_views_then_scans_per_seed_for_both_view_sets():
    rows = []
    # scan 8: test view 1 psnr 10, test view 2 psnr 20, input view 25 psnr 40; scan 21: test view 1 psnr 30
    for seed, bump in ((0, 0.0), (1, 2.0)):
        for scan, view, psnr in ((8, 1, 10.0), (8, 2, 20.0), (8, 25, 40.0), (21, 1, 30.0)):
            rows.append({"scan": scan, "view": view, "seed": seed, "psnr": psnr + bump, "ssim": 0.5, "lpips": None})
    s = dtu_summary(rows, test_views=[1, 2], all_views=[1, 2, 25], lpips_missing="no lpips")
    t = s["test25"]
    assert t["per_scan_seed"]["8"]["0"] == {"psnr": 15.0, "ssim": 0.5, "n": 2}
    assert t["per_seed"]["0"]["psnr"] == pytest.approx((15 + 30) / 2)  # views in a scan, then scans
    assert t["mean"]["psnr"] == pytest.approx(((15 + 30) / 2 + (17 + 32) / 2) / 2)
    assert t["mean"]["psnr_seed_std"] == pytest.approx(1.0)
    a = s["all34"]
    assert a["per_scan_seed"]["8"]["0"]["psnr"] == pytest.approx(70 / 3)  # the input view counts here
    assert "lpips" not in t["mean"] and s["lpips_missing"] == "no lpips"


def _write_dtu_layout(root, scan, masked_views):
    write_synthetic_dtu_calibration(root / "Calibration" / "cal18", n=64)
    folder = root / "Rectified" / f"scan{scan}"
    folder.mkdir(parents=True)
    for cam in DTU_TRAIN_VIEWS + DTU_TEST_VIEWS:
        Image.new("RGB", (1600, 1200), (cam * 5 % 255, 90, 140)).save(folder / f"rect_{cam + 1:03d}_3_r5000.png")
    masks = root / "idrmasks" / f"scan{scan}" / "mask"
    masks.mkdir(parents=True)
    for cam in masked_views:
        m = np.zeros((1200, 1600), np.uint8)
        m[300:900, 400:1200] = 255
        Image.fromarray(m).save(masks / f"{cam:03d}.png")


def test_viewneti_eval_runs_the_dtu_protocol_end_to_end(tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "dtu"
    _write_dtu_layout(root, 8, masked_views=DTU_TEST_VIEWS)  # RegNeRF masks cover the test views
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_model_dir), "--dtu-root", str(root), "--scans", "8"]
    args += ["--masks", str(root / "idrmasks"), "--object", "thing_a", "--seeds", "0,1", "--steps", "1"]
    args += ["--render-size", "64x48", "--json", str(out)]  # a smoke size; the protocol renders at 768x576
    assert cli_main(args + ["--render-size", "64x64"]) == 2  # another aspect would be squashed to 768x576
    assert "give a size of that 4:3 aspect" in capsys.readouterr().err
    assert cli_main(args + ["--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr()
    assert "25 test views" in printed.out and "all 34 views" in printed.out
    assert "eval DTU" in printed.err and "68/68" in printed.err  # the progress bar: 34 views x 2 seeds
    # the same files as `eval --transforms`: renders, ground truth, a sheet and a manifest, per scan
    folder = tmp_path / "eval" / "scan8"
    views = DTU_TRAIN_VIEWS + DTU_TEST_VIEWS
    expected = {f"gt_view{v:03d}.png" for v in views} | {
        f"thing_a_view{v:03d}_seed{s}.png" for v in views for s in (0, 1)
    }
    assert {p.name for p in folder.iterdir()} == expected | {"sheet.png", "manifest.json"}
    assert Image.open(folder / "thing_a_view025_seed1.png").size == (64, 48)
    assert Image.open(folder / "gt_view025.png").size == (768, 576)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["protocol"] == "dtu" and manifest["seeds"] == [0, 1] and manifest["object"] == "thing_a"
    assert len(manifest["rows"]) == 68 and len(manifest["cameras"]) == 34 and manifest["sheet"] == "sheet.png"
    assert set(manifest["files"]) == expected
    assert read_png_settings(folder / "thing_a_view001_seed1.png")["seed"] == 1
    assert "LPIPS: missing" in printed.err or "LPIPS: missing" in printed.out
    s = json.loads(out.read_text())
    assert s["test25"]["views"] == 25 and s["all34"]["views"] == 34
    assert s["test25"]["per_scan_seed"]["8"]["0"]["n"] == 25 and s["all34"]["per_scan_seed"]["8"]["1"]["n"] == 34
    assert set(s["test25"]["per_seed"]) == {"0", "1"}
    assert s["lpips_missing"] and all(r["lpips"] is None for r in s["rows"])  # missing, not faked
    assert sorted(s["missing_masks"]) == sorted(f"scan8/{v:03d}" for v in DTU_TRAIN_VIEWS)  # inputs: unmasked
    assert s["input_views"] == [25] and s["render_size"] == [64, 48]
    assert DTU_SCORE_SIZE == (400, 300)
    assert all(math.isfinite(r["psnr"]) and 0 <= r["ssim"] <= 1 for r in s["rows"])
