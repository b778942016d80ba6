"""CameraIn.to_camera builds the library's Camera directly, with the rules of the wire format that
Camera.from_json applies to the persisted request record (CameraIn.to_wire)."""

from __future__ import annotations

import math

import pytest

from server.schemas import CameraIn
from viewneti_backend.cameras import Camera, CameraError, orbit_pose

POSE = orbit_pose(30.0, 20.0, 3.6).tolist()

CAMERAS = {
    "defaults": {"camera_to_anchor": POSE},
    "fov and size": {"camera_to_anchor": POSE, "fov_y_deg": 50.0, "width": 96, "height": 64},
    "fy alone": {"camera_to_anchor": POSE, "width": 96, "height": 64, "fy": 70.0},
    "fy and the fov it means": {
        "camera_to_anchor": POSE,
        "width": 64,
        "height": 64,
        "fy": 80.0,
        "fov_y_deg": math.degrees(2.0 * math.atan(32.0 / 80.0)),
    },
    "full intrinsics": {
        "camera_to_anchor": POSE,
        "width": 128,
        "height": 96,
        "fx": 110.0,
        "fy": 100.0,
        "cx": 60.5,
        "cy": 50.25,
    },
    "principal point only": {"camera_to_anchor": POSE, "fov_y_deg": 30.0, "cx": 20.0, "cy": 40.0},
    "fx only": {"camera_to_anchor": POSE, "fov_y_deg": 40.0, "width": 64, "height": 64, "fx": 90.0},
}


@pytest.mark.parametrize("wire", CAMERAS.values(), ids=list(CAMERAS))
def test_to_camera_equals_the_wire_round_trip(wire):
    cam_in = CameraIn.model_validate(wire)
    direct = cam_in.to_camera()
    via_wire = Camera.from_json(cam_in.to_wire())
    assert direct.to_json() == via_wire.to_json()
    assert (direct.fx, direct.fy, direct.cx, direct.cy) == (via_wire.fx, via_wire.fy, via_wire.cx, via_wire.cy)


def test_fy_sent_alone_defines_the_field_of_view():
    cam = CameraIn.model_validate(CAMERAS["fy alone"]).to_camera()
    assert cam.fov_y_deg == pytest.approx(math.degrees(2.0 * math.atan(32.0 / 70.0)))
    assert cam.fov_y_deg != CameraIn.model_fields["fov_y_deg"].default


@pytest.mark.parametrize(
    "wire,message",
    [
        ({"camera_to_anchor": [[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "orthonormal"),
        ({"camera_to_anchor": POSE, "width": 64, "height": 64, "fy": 80.0, "fov_y_deg": 60.0}, "disagrees with fy"),
    ],
)
def test_to_camera_refuses_what_the_wire_format_refuses(wire, message):
    cam_in = CameraIn.model_validate(wire)
    with pytest.raises(CameraError, match=message) as direct:
        cam_in.to_camera()
    with pytest.raises(CameraError) as via_wire:
        Camera.from_json(cam_in.to_wire())
    assert str(direct.value) == str(via_wire.value)
