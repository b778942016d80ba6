"""dtu-12d exactly as the reference code computes it, checked against numbers worked out by hand.

The reference (training/dataset.py, models/neti_mapper.py, utils/utils.py):
  params = torch.tensor(file's 12 numbers)             -> float32
  token  = f"{p:.4f}" per entry, parsed back by float  -> "rounded to 4 decimals" (of the float32 value)
  mins/maxs over all cal18 files' float32 params        -> unrounded
  x' = (x - min) / (max - min) * 2 - 1                  -> in float32
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.camera_features import Dtu12d, parameterization_from_config, reference_token_round
from viewneti_backend.data import dtu_calibration_cameras, dtu_calibration_projections, load_dtu_scene

# Three cameras with R = I (P[:, :3] = K), so each file is a valid calibration; numbers picked so the
# float32 step matters: 2607.429996 is 2607.429931640625 in float32 -> "2607.4299" (float64: 2607.4300);
# -533936.661373 -> -533936.6875 (float32 spacing 0.0625 there); 1000.00004 -> 1000.0000610... -> "1000.0001".
FILES = [
    [[2607.429996, 0.0, 800.5, -533936.661373], [0.0, 2600.0, 600.0, 1000.00004], [0.0, 0.0, 1.0, 10.00004]],
    [[2700.0, 0.0, 810.25, -500000.0], [0.0, 2650.5, 590.0, 2000.0], [0.0, 0.0, 1.0, 20.0]],
    [[2650.0, 0.0, 805.0, -520000.0], [0.0, 2625.0, 595.0, 1500.0], [0.0, 0.0, 1.0, 15.00006]],
]

RAW_BY_HAND = [
    [2607.4299, 0, 800.5, -533936.6875, 0, 2600, 600, 1000.0001, 0, 0, 1, 10.0],
    [2700, 0, 810.25, -500000, 0, 2650.5, 590, 2000, 0, 0, 1, 20],
    [2650, 0, 805, -520000, 0, 2625, 595, 1500, 0, 0, 1, 15.0001],
]
# min / max over the UNROUNDED float32 values of the 3 files
MIN_BY_HAND = [2607.429931640625, 0, 800.5, -533936.6875, 0, 2600, 590, 1000.0000610351562, 0, 0, 1, 10.000040054321289]
MAX_BY_HAND = [2700, 0, 810.25, -500000, 0, 2650.5, 600, 2000, 0, 0, 1, 20]
# entry 0, cam 1: float32("2607.4299") = 2607.429931640625 = the min -> exactly -1
#          cam 3: (2650 - 2607.429931640625) / 92.570068359375 * 2 - 1 = 0.45986861 * 2 - 1 = -0.08026279
# entry 2, cam 3: (805 - 800.5) / 9.75 * 2 - 1 = -0.07692308;  entry 5, cam 3: 25 / 50.5 * 2 - 1 = -0.00990099
# entry 3, cam 3: (-520000 + 533936.6875) / 33936.6875 * 2 - 1 = 0.41066729 * 2 - 1 = -0.17866542
# entry 7, cam 1: float32(1000.0001) = 1000.0001220703125: (6.1035e-5 / 999.99994) * 2 - 1 = -0.99999988
#          cam 3: (1500 - 1000.000061) / 999.999939 * 2 - 1 = -6e-8
# entry 11, cam 1: (10.0 - 10.00004005) / 9.99995995 * 2 - 1 = -1.000008 (rounded below the unrounded min)
#           cam 3: (15.0001001358 - 10.0000400543) / 9.9999599457 * 2 - 1 = +0.0000160
# entry 6: 600 is the max, 590 the min: cam 1 -> 1, cam 2 -> -1, cam 3 -> 0
# constant entries (zeros, the 1): 0 (the reference divides 0 by 0 there; DTU has none)
FEATURES_BY_HAND = [
    [-1.0, 0, -1.0, -1.0, 0, -1.0, 1.0, -0.99999988, 0, 0, 0, -1.000008],
    [1.0, 0, 1.0, 1.0, 0, 1.0, -1.0, 1.0, 0, 0, 0, 1.0],
    [-0.08026279, 0, -0.07692308, -0.17866542, 0, -0.00990099, 0.0, -6e-8, 0, 0, 0, 0.0000160],
]


@pytest.fixture
def dtu_root(tmp_path):
    cal = tmp_path / "Calibration" / "cal18"
    cal.mkdir(parents=True)
    for i, p in enumerate(FILES):
        (cal / f"pos_{i + 1:03d}.txt").write_text("\n".join(" ".join(repr(v) for v in row) for row in p) + "\n")
        scan = tmp_path / "Rectified" / "scan8"
        scan.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1600, 1200), (40 * i, 80, 120)).save(scan / f"rect_{i + 1:03d}_3_r5000.png")
    return tmp_path


def test_token_rounding_is_the_float32_value_printed_with_4_decimals():
    np.testing.assert_array_equal(reference_token_round(np.asarray(FILES).reshape(3, 12)), np.asarray(RAW_BY_HAND))


def test_statistics_and_features_match_the_hand_worked_numbers(dtu_root):
    projections = dtu_calibration_projections(dtu_root)
    assert list(projections) == [0, 1, 2]
    np.testing.assert_array_equal(projections[0], FILES[0])  # read verbatim
    p = Dtu12d.from_projections(list(projections.values()))
    assert p.stats["min"] == MIN_BY_HAND and p.stats["max"] == MAX_BY_HAND  # exact: float32 values, unrounded
    cams = dtu_calibration_cameras(dtu_root)  # decomposed cameras that carry the file's P
    np.testing.assert_array_equal(p.raw(cams), RAW_BY_HAND)
    f = p.features(cams).numpy()
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, FEATURES_BY_HAND, rtol=0, atol=2e-7)
    assert f[0, 11] < -1  # the reference's rounding against unrounded bounds leaves [-1, 1] slightly
    # saved and restored with a mapper: the same numbers
    again = parameterization_from_config(p.to_config())
    np.testing.assert_array_equal(again.features(cams).numpy(), f)


def test_dtu_scene_cameras_at_training_size_feed_the_files_P_unchanged(dtu_root):
    p = Dtu12d.from_projections(list(dtu_calibration_projections(dtu_root).values()))
    cams = load_dtu_scene(dtu_root, 8, views=[0, 1, 2]).cameras
    assert cams is not None and (cams[0].width, cams[0].height) == (512, 384)
    np.testing.assert_array_equal(p.projections(cams), np.asarray(FILES).reshape(3, 12))
    np.testing.assert_allclose(p.features(cams).numpy(), FEATURES_BY_HAND, rtol=0, atol=2e-7)
