"""camera_to_anchor, field of view and request size against hand-worked cases and Blender itself."""

import math

import bpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mathutils import Euler, Matrix

from blender_addon import camera_pose
from blender_addon.camera_pose import PoseError, camera_to_anchor, fov_y_deg, render_size

pytestmark = pytest.mark.blender


def close(a, b, tol=1e-9):
    return all(abs(a[r][c] - b[r][c]) < tol for r in range(4) for c in range(4))


def is_rotation(m, tol=1e-9):
    """Orthonormal with det +1, checked in double precision (mathutils is float32)."""
    r = [row[:3] for row in m[:3]]
    gram_ok = all(abs(sum(r[k][i] * r[k][j] for k in range(3)) - (i == j)) < tol for i in range(3) for j in range(3))
    det = (
        r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0])
    )
    return gram_ok and abs(det - 1) < tol


def test_identity_anchor_returns_camera():
    cam = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 1], [0, 0, 0, 1]]  # at (0,-4,1) looking along +Y
    assert close(camera_to_anchor(cam), cam)
    assert close(camera_to_anchor(cam, camera_pose.IDENTITY), cam)


def test_translated_anchor_subtracts_position():
    cam = [[1, 0, 0, 2], [0, 1, 0, 3], [0, 0, 1, 9], [0, 0, 0, 1]]
    anchor = [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 4], [0, 0, 0, 1]]
    assert close(camera_to_anchor(cam, anchor), [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 5], [0, 0, 0, 1]])


def test_rotated_anchor():
    # anchor turned +90 deg about Z: world +X is the anchor's -Y, world +Y is the anchor's +X
    anchor = [[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    cam = [[1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # at world (3,0,0), unrotated
    expected = [[0, 1, 0, 0], [-1, 0, 0, -3], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert close(camera_to_anchor(cam, anchor), expected)


def test_anchor_scale_normalises_distance_and_is_removed_from_rotation():
    cam = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 8], [0, 0, 0, 1]]
    anchor = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]  # subject twice as big
    assert close(camera_to_anchor(cam, anchor), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]])


def test_camera_scale_is_dropped():
    rot = Euler((0.3, -0.2, 1.1)).to_matrix().to_4x4()
    plain = Matrix.Translation((1, 2, 3)) @ rot
    scaled = plain @ Matrix.Diagonal((3.0, 0.5, 2.0, 1.0))
    assert close(camera_to_anchor(scaled), camera_to_anchor(plain), 1e-9)


def test_mirrored_camera_still_gives_a_proper_rotation():
    cam = Matrix.Diagonal((-1.0, 1.0, 1.0, 1.0))
    m = camera_to_anchor(cam)
    assert is_rotation(m)
    # the view axis (-Z) and up (+Y) are kept; only the mirrored X is rebuilt
    assert [m[r][2] for r in range(3)] == [0.0, 0.0, 1.0] and [m[r][1] for r in range(3)] == [0.0, 1.0, 0.0]


def test_degenerate_inputs_are_refused_with_a_fix():
    with pytest.raises(PoseError, match="zero scale"):
        camera_to_anchor(camera_pose.IDENTITY, [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(PoseError, match="non-finite"):
        camera_to_anchor([[math.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@settings(max_examples=60, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-math.pi, math.pi)] * 6),
    position=st.tuples(*[st.floats(-50, 50)] * 6),
    scale=st.floats(0.1, 10),
)
def test_matches_mathutils_for_rigid_anchor_with_uniform_scale(angles, position, scale):
    cam = Matrix.Translation(position[:3]) @ Euler(angles[:3]).to_matrix().to_4x4()
    anchor = Matrix.Translation(position[3:]) @ Euler(angles[3:]).to_matrix().to_4x4() @ Matrix.Scale(scale, 4)
    got = camera_to_anchor(cam, anchor)
    rel = anchor.inverted() @ cam  # mathutils computes in float32
    assert is_rotation(got, 1e-9)
    for r in range(3):
        assert got[r][3] == pytest.approx(rel[r][3], rel=1e-5, abs=1e-4)
        for c in range(3):
            assert got[r][c] == pytest.approx(rel[r][c] * scale, abs=1e-5)  # the inverse scale is removed


def test_fov_hand_worked():
    # 50 mm lens on a 36 mm sensor: horizontal fov 2*atan(18/50) = 39.598 deg
    assert fov_y_deg(50, 36, 24, "AUTO", 1000, 1000) == pytest.approx(39.5978, abs=1e-3)
    assert fov_y_deg(50, 36, 24, "AUTO", 1920, 1080) == pytest.approx(
        math.degrees(2 * math.atan(18 / 50 * 1080 / 1920)), abs=1e-9
    )
    assert fov_y_deg(50, 36, 24, "AUTO", 1080, 1920) == pytest.approx(39.5978, abs=1e-3)  # portrait: width fits height
    assert fov_y_deg(50, 36, 24, "VERTICAL", 1920, 1080) == pytest.approx(
        math.degrees(2 * math.atan(12 / 50)), abs=1e-9
    )
    assert fov_y_deg(50, 36, 24, "HORIZONTAL", 1080, 1920) == pytest.approx(
        math.degrees(2 * math.atan(18 / 50 * 1920 / 1080)), abs=1e-9
    )


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
@pytest.mark.parametrize("res", [(1920, 1080), (600, 900), (512, 512)])
@pytest.mark.parametrize("pixel_aspect", [(1.0, 1.0), (2.0, 1.0)])
def test_fov_agrees_with_blender_projection(scene, fit, res, pixel_aspect):
    cam_obj = scene.camera
    cam = cam_obj.data
    cam.sensor_fit, cam.lens, cam.sensor_width, cam.sensor_height = fit, 35.0, 36.0, 20.0
    scene.render.resolution_x, scene.render.resolution_y = res
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = pixel_aspect
    proj = cam_obj.calc_matrix_camera(
        bpy.context.evaluated_depsgraph_get(), x=res[0], y=res[1], scale_x=pixel_aspect[0], scale_y=pixel_aspect[1]
    )
    blender_fov_y = math.degrees(2 * math.atan(1 / proj[1][1]))
    ours = camera_pose.camera_fov_y_deg(cam, *camera_pose.scene_frame_size(scene.render))
    assert ours == pytest.approx(blender_fov_y, abs=1e-4)


def test_orthographic_camera_is_refused(scene):
    scene.camera.data.type = "ORTHO"
    with pytest.raises(PoseError, match="perspective"):
        camera_pose.camera_fov_y_deg(scene.camera.data, 100, 100)


def test_render_size_follows_aspect():
    assert render_size(1920, 1080, 64) == (64, 40)  # 36 rounds half-up to a multiple of 8
    assert render_size(1920, 1080, 512) == (512, 288)
    assert render_size(1080, 1920, 512) == (288, 512)
    assert render_size(100, 100, 70) == (72, 72)
    assert render_size(10000, 10, 512) == (512, 16)  # clamped to the server's minimum
    assert render_size(1, 1, 5000) == (2048, 2048)


def test_pose_key_ignores_float_noise():
    payload = {
        "camera_to_anchor": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]],
        "fov_y_deg": 39.6,
        "width": 64,
        "height": 64,
    }
    noisy = dict(payload, camera_to_anchor=[[1 + 1e-9, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]])
    assert camera_pose.pose_key(payload) == camera_pose.pose_key(noisy)
    moved = dict(payload, camera_to_anchor=[[1, 0, 0, 0.01], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]])
    assert camera_pose.pose_key(payload) != camera_pose.pose_key(moved)
