"""The camera convention and its conversions: hand-worked cases and property-based round trips."""

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from viewneti_backend.camera_features import (
    DEFAULT_PARAMETERIZATION,
    AnchorDistance14d,
    AnchorPose13d,
    Dtu12d,
    parameterization_from_config,
    reference_token_round,
)
from viewneti_backend.cameras import (
    Camera,
    CameraError,
    TransformsFrame,
    blender_c2w_to_opencv_w2c,
    camera_to_anchor,
    compose_projection,
    decompose_projection,
    dtu_projection_to_camera,
    intrinsics_from_fov,
    look_at,
    opencv_w2c_to_blender_c2w,
    orbit_pose,
    pose_to_orbit,
    read_transforms_json,
    write_transforms_json,
)

angles = st.floats(-179.0, 179.0)
elevations = st.floats(-80.0, 80.0)
radii = st.floats(0.5, 20.0)


def test_front_view_hand_worked():
    # Azimuth 0 = Blender's front view: camera on -Y looking at +Y, right = +X, up = +Z, looking down local -Z.
    m = orbit_pose(0.0, 0.0, 4.0)
    np.testing.assert_allclose(m[:3, 3], [0, -4, 0], atol=1e-12)
    np.testing.assert_allclose(m[:3, 0], [1, 0, 0], atol=1e-12)  # camera +X = world +X
    np.testing.assert_allclose(m[:3, 1], [0, 0, 1], atol=1e-12)  # camera +Y (up) = world +Z
    np.testing.assert_allclose(-m[:3, 2], [0, 1, 0], atol=1e-12)  # looks down its -Z, towards +Y


def test_side_and_top_views_hand_worked():
    m = orbit_pose(90.0, 0.0, 2.0)  # counter-clockwise seen from above: camera on +X
    np.testing.assert_allclose(m[:3, 3], [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(-m[:3, 2], [-1, 0, 0], atol=1e-12)
    top = orbit_pose(0.0, 90.0, 3.0)
    np.testing.assert_allclose(top[:3, 3], [0, 0, 3], atol=1e-9)
    np.testing.assert_allclose(-top[:3, 2], [0, 0, -1], atol=1e-9)


def test_opencv_hand_worked():
    # Blender camera at the origin looking down -Z; in OpenCV that camera looks down +Z with y down:
    # the world point (0, 0, -5) is 5 units in front, (0, 1, -5) is above the centre -> smaller pixel row.
    w2c = blender_c2w_to_opencv_w2c(np.eye(4))
    p = w2c @ np.array([0, 1, -5, 1.0])
    assert p[2] == pytest.approx(5.0) and p[1] == pytest.approx(-1.0)
    k = intrinsics_from_fov(90.0, 100, 100)
    uv = k @ p[:3]
    assert uv[0] / uv[2] == pytest.approx(50.0) and uv[1] / uv[2] == pytest.approx(40.0)


@settings(max_examples=200, deadline=None)
@given(angles, elevations, radii)
def test_orbit_roundtrip(az, el, r):
    m = orbit_pose(az, el, r)
    a2, e2, r2 = pose_to_orbit(m)
    assert r2 == pytest.approx(r, rel=1e-9)
    assert e2 == pytest.approx(el, abs=1e-6)
    if abs(el) < 89:
        assert math.cos(math.radians(a2 - az)) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(angles, elevations, radii, st.floats(10, 120), st.integers(2, 64), st.integers(2, 64))
def test_opencv_and_projection_roundtrip(az, el, r, fov, w8, h8):
    cam = Camera(orbit_pose(az, el, r, target=(0.1, -0.2, 0.3)), fov, w8 * 8, h8 * 8).validated()
    w2c = cam.world_to_camera_cv()
    np.testing.assert_allclose(opencv_w2c_to_blender_c2w(w2c), cam.camera_to_anchor, atol=1e-9)
    p = cam.projection_matrix() * -2.5  # projective scale (and sign) is free
    k, w2c_back = decompose_projection(p)
    np.testing.assert_allclose(k, cam.intrinsics(), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(w2c_back, w2c, atol=1e-7)
    back = dtu_projection_to_camera(cam.projection_matrix(), cam.width, cam.height)
    np.testing.assert_allclose(back.camera_to_anchor, cam.camera_to_anchor, atol=1e-7)
    assert back.fov_y_deg == pytest.approx(fov, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(angles, elevations, radii, st.floats(0.5, 3.0))
def test_anchor_relative_pose(az, el, r, scale):
    anchor = np.eye(4)
    anchor[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]) * scale  # rotated 90 deg about Z, scaled
    anchor[:3, 3] = [5, -2, 1]
    rel = orbit_pose(az, el, r)
    world = anchor @ rel
    back = camera_to_anchor(world, anchor)
    np.testing.assert_allclose(back[:3, 3], rel[:3, 3], atol=1e-8)  # distances normalised by the anchor scale
    np.testing.assert_allclose(back[:3, :3] / np.linalg.norm(back[:3, :3], axis=0), rel[:3, :3], atol=1e-8)


def test_transforms_json_roundtrip(tmp_path):
    cams = [Camera(orbit_pose(a, 20, 4), 40, 64, 48) for a in (0, 120, 240)]
    write_transforms_json(
        tmp_path / "transforms.json", [TransformsFrame(f"images/{i}.png", c) for i, c in enumerate(cams)]
    )
    frames = read_transforms_json(tmp_path / "transforms.json")
    for f, c in zip(frames, cams):
        np.testing.assert_allclose(f.camera.camera_to_anchor, c.camera_to_anchor, atol=1e-12)
        assert f.camera.fov_y_deg == pytest.approx(40.0)
        assert (f.camera.width, f.camera.height) == (64, 48)


def test_blender_nerf_camera_angle_x(tmp_path):
    data = {
        "camera_angle_x": math.radians(60),
        "frames": [{"file_path": "a", "transform_matrix": orbit_pose(0, 0, 3).tolist()}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    Image.new("RGB", (48, 32)).save(tmp_path / "a.png")  # the size comes from the image (no w/h given)
    fr = read_transforms_json(tmp_path / "transforms.json")[0]
    assert fr.camera.fov_x_deg == pytest.approx(60.0) and (fr.camera.width, fr.camera.height) == (48, 32)


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[float("nan")] * 4] * 4, "NaN"),
        (np.diag([2.0, 2.0, 2.0, 1.0]).tolist(), "not orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]).tolist(), "reflection"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], "bottom row"),
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "4x4"),
        ("not a matrix", "4x4"),
    ],
)
def test_bad_poses_are_rejected_with_a_reason(matrix, message):
    with pytest.raises(CameraError, match=message):
        Camera.from_json({"camera_to_anchor": matrix, "fov_y_deg": 40, "width": 64, "height": 64})


@pytest.mark.parametrize(
    "fov, w, h, message",
    [
        (0, 64, 64, "fov_y_deg"),
        (180, 64, 64, "fov_y_deg"),
        (40, 8, 64, "width"),
        (40, 64, 4096, "height"),
        (40, 60, 64, "multiple of 8"),
    ],
)
def test_bad_intrinsics_are_rejected(fov, w, h, message):
    with pytest.raises(CameraError, match=message):
        Camera(np.eye(4), fov, w, h).validated()


def test_look_at_straight_down_is_valid():
    m = look_at((0, 0, 5), (0, 0, 0))
    Camera(m, 40, 64, 64).validated()
    np.testing.assert_allclose(-m[:3, 2], [0, 0, -1], atol=1e-12)


def test_parameterisations_store_their_statistics():
    cams = [Camera(orbit_pose(a, e, r), 40, 64, 64) for a in range(0, 360, 45) for e in (10, 40) for r in (3.5, 4)]
    for p in (Dtu12d().fit(cams), AnchorPose13d().fit(cams), AnchorDistance14d().fit(cams)):
        f = p.features(cams).numpy()
        assert f.shape == (len(cams), p.dim)
        # dtu-12d: rounded entries against unrounded min/max (as the reference) may overshoot by the rounding
        tol = 1e-3 if p.name == "dtu-12d" else 1e-6
        assert f.min() >= -1 - tol and f.max() <= 1 + tol
        restored = parameterization_from_config(json.loads(json.dumps(p.to_config())))
        np.testing.assert_array_equal(restored.features(cams).numpy(), f)
    # dtu-12d: entries are rounded to 1e-4 like the reference's token strings (rounding again changes nothing)
    raw = Dtu12d().fit(cams).raw(cams[:1])
    np.testing.assert_array_equal(raw, reference_token_round(raw))
    np.testing.assert_allclose(raw, np.round(raw, 4), rtol=0, atol=1e-9 * np.abs(raw).max())


def test_anchor_distance_14d_gives_the_distance_a_feature_of_its_own():
    """13d leaves the camera distance as the length of 3 position entries (3.2 vs 4.0: 0.8 vs 1.0);
    14d spans the training distances over [-1, 1] in one entry, keeps the direction a unit vector,
    and stays finite for a camera at the anchor itself."""
    cams = [Camera(orbit_pose(a, 25, r), 40, 64, 64) for a in (0, 90, 200) for r in (3.2, 3.6, 4.0)]
    p = AnchorDistance14d().fit(cams)
    f = p.features(cams).numpy()
    by_radius = f[:, 12].reshape(3, 3)  # [azimuth, radius]
    np.testing.assert_allclose(by_radius[:, 0], -1, atol=1e-6)
    np.testing.assert_allclose(by_radius[:, 2], 1, atol=1e-6)
    assert (np.diff(by_radius, axis=1) > 0).all()  # monotonic in distance, the same at every azimuth
    np.testing.assert_allclose(np.linalg.norm(f[:, 9:12], axis=1), 1, atol=1e-6)
    # same direction, other distance: only the distance entry moves
    np.testing.assert_allclose(f[0, :12], f[2, :12], atol=1e-6)
    assert f[0, 12] != f[2, 12]
    at_anchor = Camera(np.eye(4), 40, 64, 64)
    assert np.isfinite(p.features([at_anchor]).numpy()).all()


def test_anchor_distance_14d_clamps_distances_outside_the_training_range():
    """A camera closer or further than any training camera reads as the nearest trained distance
    (extrapolated, the mapper's Fourier features turned it into a wrong view); in range, unchanged."""
    p = AnchorDistance14d().fit([Camera(orbit_pose(a, 25, r), 40, 64, 64) for a in (0, 120, 240) for r in (3.2, 4.0)])
    for az in (30, 150):
        near, inside, far = (
            p.features([Camera(orbit_pose(az, 25, r), 40, 64, 64)]).numpy()[0] for r in (1.5, 3.6, 9.0)
        )
        at_min, at_max = (p.features([Camera(orbit_pose(az, 25, r), 40, 64, 64)]).numpy()[0] for r in (3.2, 4.0))
        np.testing.assert_allclose(near, at_min, atol=1e-6)
        np.testing.assert_allclose(far, at_max, atol=1e-6)
        assert -1 < inside[12] < 1


def test_the_training_commands_offer_every_registered_parameterisation(capsys):
    """`viewneti train` and `viewneti toyworld pretrain` offer exactly the registry's parameterisations
    (their --help lists them; each is accepted, anything else refused) and default to the shipped one."""
    import re

    from viewneti_backend.camera_features import PARAMETERIZATIONS
    from viewneti_backend.cli import build_parser

    parser = build_parser()
    commands = {"train": ["train", "--mode", "3", "--out", "run"], "pretrain": ["toyworld", "pretrain"]}
    defaults = {}
    for name, argv in commands.items():
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        listed = re.search(r"--camera-parameterization \{([^}]*)\}", capsys.readouterr().out)
        assert listed is not None and sorted(listed.group(1).split(",")) == sorted(PARAMETERIZATIONS)
        for choice in PARAMETERIZATIONS:
            assert parser.parse_args([*argv, "--camera-parameterization", choice]).camera_parameterization == choice
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--camera-parameterization", "not-registered"])
        assert "invalid choice" in capsys.readouterr().err
        defaults[name] = parser.parse_args(argv).camera_parameterization
    # real scenes: the library default; the toy world (cameras at several distances): as shipped
    assert defaults == {"train": DEFAULT_PARAMETERIZATION, "pretrain": "anchor-distance-14d"}
    from viewneti_backend.engine import embedded_model_dir
    from viewneti_backend.mapper import NeTIMapper

    shipped = NeTIMapper.from_pretrained(embedded_model_dir() / "viewneti" / "view_mapper")
    assert shipped.config.camera_parameterization is not None
    assert shipped.config.camera_parameterization["name"] == defaults["pretrain"]


# ------------------------------------------------------------------------------------------------
# Full pinhole intrinsics (fx, fy, cx, cy)
# ------------------------------------------------------------------------------------------------
def test_default_intrinsics_are_unchanged_and_the_wire_format_too():
    cam = Camera(orbit_pose(10, 20, 4), 40.0, 64, 48)
    fy = 24.0 / math.tan(math.radians(20.0))
    np.testing.assert_allclose(cam.intrinsics(), [[fy, 0, 32], [0, fy, 24], [0, 0, 1]], rtol=1e-12)
    assert not cam.has_intrinsics
    assert set(cam.to_json()) == {"camera_to_anchor", "fov_y_deg", "width", "height"}


def test_explicit_intrinsics_are_used_hand_worked():
    # fx 100, fy 120 at 64x48, principal point (30, 20): the world point (1, 0.5, -5) in front of a
    # Blender camera at the origin is (1, -0.5, 5) in OpenCV -> u = 100*1/5 + 30 = 50, v = 120*-0.5/5 + 20 = 8.
    fov = math.degrees(2 * math.atan(24 / 120))
    cam = Camera(np.eye(4), fov, 64, 48, fx=100.0, fy=120.0, cx=30.0, cy=20.0).validated()
    np.testing.assert_allclose(cam.intrinsics(), [[100, 0, 30], [0, 120, 20], [0, 0, 1]])
    uvw = cam.projection_matrix() @ np.array([1.0, 0.5, -5.0, 1.0])
    assert uvw[0] / uvw[2] == pytest.approx(50.0) and uvw[1] / uvw[2] == pytest.approx(8.0)
    assert cam.fov_x_deg == pytest.approx(math.degrees(2 * math.atan(32 / 100)))
    # a missing entry is derived: fx = fy, principal point at the centre
    only_fy = Camera(np.eye(4), fov, 64, 48, fy=120.0).validated()
    np.testing.assert_allclose(only_fy.intrinsics(), [[120, 0, 32], [0, 120, 24], [0, 0, 1]])


def test_with_size_scales_explicit_intrinsics_with_the_image():
    fov = math.degrees(2 * math.atan(600 / 1500))
    cam = Camera(np.eye(4), fov, 1600, 1200, fx=1400.0, fy=1500.0, cx=810.0, cy=590.0).validated()
    small = cam.with_size(400, 300).validated(size_multiple=4)  # DTU's scoring size
    np.testing.assert_allclose(small.intrinsics(), [[350, 0, 202.5], [0, 375, 147.5], [0, 0, 1]])
    assert small.fov_y_deg == pytest.approx(fov)
    stretched = cam.with_size(512, 384).validated()  # DTU's training size: 0.32 in both axes
    np.testing.assert_allclose(stretched.intrinsics(), [[448, 0, 259.2], [0, 480, 188.8], [0, 0, 1]])
    plain = Camera(np.eye(4), 40, 64, 64).with_size(128, 96)
    assert not plain.has_intrinsics and plain.fov_y_deg == 40
    # a projected point keeps its relative image position through a resize
    x = np.array([0.3, -0.2, -4.0, 1.0])
    a, b = cam.projection_matrix() @ x, small.projection_matrix() @ x
    np.testing.assert_allclose(b[:2] / b[2], a[:2] / a[2] / 4.0)


def test_camera_from_a_dtu_projection_keeps_the_full_intrinsics():
    k = np.array([[2892.3, 0.0, 823.2], [0.0, 2883.2, 619.1], [0.0, 0.0, 1.0]])  # DTU-like: fx != fy, off-centre
    w2c = blender_c2w_to_opencv_w2c(orbit_pose(30, 20, 650))
    p = k @ w2c[:3, :4]
    cam = dtu_projection_to_camera(p * 3.0, 1600, 1200).validated()
    np.testing.assert_allclose(cam.intrinsics(), k, rtol=1e-9, atol=1e-6)
    rebuilt = compose_projection(cam.intrinsics(), cam.world_to_camera_cv())
    np.testing.assert_allclose(rebuilt, p, rtol=1e-9, atol=1e-6)
    assert cam.fov_y_deg == pytest.approx(math.degrees(2 * math.atan(600 / 2883.2)))
    # the file's P itself is carried verbatim (scale included), and follows a resize
    np.testing.assert_array_equal(cam.projection_matrix(), p * 3.0)
    np.testing.assert_array_equal(cam.with_size(400, 300).with_size(1600, 1200).projection_matrix(), p * 3.0)
    np.testing.assert_allclose(cam.with_size(400, 300).projection_matrix(), np.diag([0.25, 0.25, 1]) @ p * 3.0)
    # a moved camera drops it; a contradictory one is refused
    moved = cam.with_pose(orbit_pose(60, 20, 650))
    assert moved.calibration is None
    with pytest.raises(CameraError, match="calibration P does not match"):
        dataclasses.replace(cam, camera_to_anchor=orbit_pose(60, 20, 650))


def test_intrinsics_json_roundtrip_and_fy_alone_defines_the_fov():
    cam = Camera.from_json({"camera_to_anchor": np.eye(4).tolist(), "width": 64, "height": 48, "fy": 60, "cx": 31.5})
    assert cam.fov_y_deg == pytest.approx(math.degrees(2 * math.atan(24 / 60)))
    assert cam.fx is None and cam.cx == 31.5
    back = Camera.from_json(json.loads(json.dumps(cam.to_json())))
    np.testing.assert_array_equal(back.intrinsics(), cam.intrinsics())
    assert (back.fx, back.fy, back.cx, back.cy, back.fov_y_deg) == (cam.fx, cam.fy, cam.cx, cam.cy, cam.fov_y_deg)
    assert set(back.to_json()) == {"camera_to_anchor", "fov_y_deg", "width", "height", "fy", "cx"}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"fx": 0.0}, "fx must be a finite positive"),
        ({"fy": -5.0}, "fy must be a finite positive"),
        ({"cx": float("nan")}, "cx must be a finite positive"),
        ({"cy": float("inf")}, "cy must be a finite positive"),
        ({"fx": "wide"}, "fx must be a number"),
        ({"fy": 60.0, "fov_y_deg": 40.0}, "disagrees with fy"),
    ],
)
def test_bad_explicit_intrinsics_are_rejected(fields, message):
    with pytest.raises(CameraError, match=message):
        Camera.from_json({"camera_to_anchor": np.eye(4).tolist(), "width": 64, "height": 48, **fields})


def test_render_cache_key_sees_the_intrinsics():
    base = Camera(np.eye(4), 40, 64, 64)
    shifted = dataclasses.replace(base, cx=20.0)
    assert base.intrinsics_key() != shifted.intrinsics_key()
    assert base.intrinsics_key() == base.with_size(128, 128).intrinsics_key()


def test_residual_skew_of_a_printed_projection_is_dropped_and_real_skew_refused():
    k = np.array([[2892.3, 0.05, 823.2], [0.0, 2883.2, 619.1], [0.0, 0.0, 1.0]])
    cam = Camera.from_intrinsics(np.eye(4), k, 1600, 1200)
    assert cam.intrinsics()[0, 1] == 0.0 and cam.fx == 2892.3
    k[0, 1] = 5.0
    with pytest.raises(CameraError, match="skew"):
        Camera.from_intrinsics(np.eye(4), k, 1600, 1200)
