"""The camera rig: Blender cameras (anchor frame) drive a DTU-trained view-mapper, with range warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from viewneti_backend.camera_features import Dtu12d
from viewneti_backend.camera_rig import RANGE_TOLERANCE, CameraRig, range_warnings, rig_from_mapper_config
from viewneti_backend.cameras import Camera, dtu_projection_to_camera, orbit_pose
from viewneti_backend.engine import Engine
from viewneti_backend.errors import InputError
from viewneti_backend.mapper import NeTIMapper
from viewneti_backend.testing import (
    DTU_LIKE_K,
    build_dtu_view_mapper,
    synthetic_dtu_projections,
    write_synthetic_dtu_calibration,
)

NO_SKEW_K = ((DTU_LIKE_K[0][0], 0.0, DTU_LIKE_K[0][2]), DTU_LIKE_K[1], DTU_LIKE_K[2])


def test_fit_finds_the_object_up_front_scale_and_lens():
    ps = synthetic_dtu_projections(64, centre=(30.0, -20.0, 620.0), radius=650.0)
    rig = CameraRig.fit(ps, anchor_radius=4.0)
    np.testing.assert_allclose(rig.centre, (30.0, -20.0, 620.0), atol=0.01)  # mm (6-decimal files)
    axes = np.asarray(rig.axes)
    np.testing.assert_allclose(axes[:, 2], (0, -1, 0), atol=1e-4)  # anchor +Z (up) = DTU -y
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(axes) == pytest.approx(1.0)
    assert rig.scale == pytest.approx(650.0 / 4.0, rel=1e-5)
    np.testing.assert_allclose(rig.intrinsics, (2892.33, 2883.18, 823.21, 619.07), atol=0.01)
    # the cap is centred on Blender's front view (azimuth 0, elevation 0), at the anchor radius
    cap = rig.cap
    assert cap is not None
    assert cap["azimuth_deg"][0] < -30 < 30 < cap["azimuth_deg"][1]
    assert cap["elevation_deg"][0] < -30 < 30 < cap["elevation_deg"][1]
    np.testing.assert_allclose(cap["radius"], [4.0, 4.0], atol=1e-4)
    assert CameraRig.from_dict(json.loads(json.dumps(rig.to_dict()))) == rig


@pytest.mark.parametrize("k, decimals, exact", [(NO_SKEW_K, None, True), (DTU_LIKE_K, 6, False)])
def test_cal18_cameras_round_trip_through_blender_convention_and_the_rig(k, decimals, exact):
    """DTU camera -> Blender convention around the anchor -> rig -> the same dtu-12d features.
    Exactly the same for pinhole cameras; for printed files with DTU's residual skew (which a
    pinhole camera drops) within 1e-3 of the [-1, 1] range."""
    ps = synthetic_dtu_projections(64, k=k, decimals=decimals)
    rig, param = CameraRig.fit(ps), Dtu12d.from_projections(ps)
    dtu_cams = [dtu_projection_to_camera(p) for p in ps]
    blender = [rig.from_dtu(c) for c in dtu_cams]
    assert all(c.calibration is None and c.has_intrinsics for c in blender)  # a Blender camera, the DTU lens
    direct = param.features(dtu_cams).numpy()
    via_rig = param.features([rig.to_dtu(c) for c in blender]).numpy()
    if exact:
        np.testing.assert_array_equal(via_rig, direct)
    else:
        # dropping a 0.0004 px skew moves P's first row by 0.0004 x (R's 2nd row, t_y): measured 1.5e-4
        assert np.abs(via_rig - direct).max() < 1e-3
    assert range_warnings(via_rig) == []


def test_an_orbit_in_blender_stays_inside_the_training_range_with_the_rig():
    ps = synthetic_dtu_projections(64)
    rig, param = CameraRig.fit(ps), Dtu12d.from_projections(ps)
    orbit = [
        Camera(orbit_pose(az, el, rig.anchor_radius), 40.0, 512, 384).validated()
        for el in (-25.0, -10.0, 10.0, 25.0)
        for az in np.linspace(-30.0, 30.0, 13)
    ]
    f = param.features([rig.to_dtu(c) for c in orbit]).numpy()
    assert np.abs(f).max() <= 1 + RANGE_TOLERANCE
    assert range_warnings(f, rig) == []
    # the same Blender cameras fed without the rig: far outside, and said so
    raw = param.features(orbit).numpy()
    assert np.abs(raw).max() > 5
    assert len(range_warnings(raw)) == len(orbit)
    # behind the object (azimuth 180) or much further away: outside the cap, with the cap described
    for cam in (Camera(orbit_pose(180, 10, 3.6), 40, 64, 48), Camera(orbit_pose(0, 10, 12.0), 40, 64, 48)):
        (msg,) = range_warnings(param.features([rig.to_dtu(cam)]).numpy(), rig)
        assert "outside the view-mapper's training range" in msg and "azimuth" in msg and "radius" in msg


def test_a_malformed_rig_is_refused():
    rig = CameraRig.fit(synthetic_dtu_projections(16)).to_dict()
    with pytest.raises(InputError, match="re-fit it"):
        CameraRig.from_dict({**rig, "axes": [[1, 0, 0], [0, 1, 0], [0, 0, -1]]})
    with pytest.raises(InputError, match="malformed"):
        CameraRig.from_dict({k: v for k, v in rig.items() if k != "scale"})
    with pytest.raises(InputError, match="at least 3"):
        CameraRig.fit(synthetic_dtu_projections(2))
    assert rig_from_mapper_config({"name": "dtu-12d", "stats": {}}) is None


@pytest.fixture(scope="module")
def rig_mapper(tiny_model_dir, tmp_path_factory):
    return build_dtu_view_mapper(tiny_model_dir, tmp_path_factory.mktemp("rig") / "view_mapper")


def test_the_engine_applies_the_rig_and_reports_cameras_out_of_range(tiny_model_dir, rig_mapper, tmp_path):
    engine = Engine.load(str(tiny_model_dir), view_mapper=str(rig_mapper), library_dir=tmp_path / "lib")
    assert engine.rig is not None and engine.info()["camera_rig"] == "dtu"
    inside = Camera(orbit_pose(15, 10, 3.6), 40, 64, 48)
    behind = Camera(orbit_pose(180, 10, 3.6), 40, 64, 48)
    warnings: list[str] = []
    a = engine.render([inside], seed=1, steps=2, warnings=warnings)[0]
    assert warnings == []
    engine.render([inside, behind], seed=1, steps=2, warnings=warnings)
    assert len(warnings) == 1 and warnings[0].startswith("camera 1:")
    # what the mapper saw: the rig's DTU camera (the render of the plain Blender camera differs)
    b = engine.render([inside], seed=1, steps=2, use_rig=False)[0]
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() > 0
    assert engine.mapper_cameras([inside])[0].has_intrinsics


def test_the_rig_command_fits_and_removes_a_rig(rig_mapper, tmp_path, capsys):
    from viewneti_backend.cli import main

    folder = tmp_path / "vm"
    NeTIMapper.from_pretrained(rig_mapper).save_pretrained(folder)
    assert main(["rig", "--view-mapper", str(folder), "--remove"]) == 0
    cp = NeTIMapper.from_pretrained(folder).config.camera_parameterization
    assert cp is not None and "rig" not in cp
    cal = write_synthetic_dtu_calibration(tmp_path / "cal18", n=64)
    assert main(["rig", "--view-mapper", str(folder), "--dtu-calibration", str(cal), "--anchor-radius", "5"]) == 0
    capsys.readouterr()
    cp = NeTIMapper.from_pretrained(folder).config.camera_parameterization
    assert cp is not None
    rig = rig_from_mapper_config(cp)
    assert rig is not None and rig.anchor_radius == 5.0
    assert main(["rig", "--view-mapper", str(folder)]) == 2
    assert "--dtu-calibration" in capsys.readouterr().err
