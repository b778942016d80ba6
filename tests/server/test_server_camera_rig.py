"""A real server with a DTU-trained view-mapper (camera rig): cameras outside its training range get
an X-Warnings entry (the JSON array of strings), cameras inside none; /v1/health says a rig is loaded."""

from __future__ import annotations

import json

import pytest
from srvutil import USE_FAKE, render_body, wire_camera


@pytest.mark.skipif(USE_FAKE, reason="the fake engine has no view-mapper features (VIEWNETI_TEST_FAKE_ENGINE=1)")
def test_out_of_range_cameras_are_flagged_in_a_header(make_server, test_model, tmp_path):
    from viewneti_backend.engine import embedded_model_dir
    from viewneti_backend.testing import build_dtu_view_mapper

    mapper = build_dtu_view_mapper(test_model or embedded_model_dir(), tmp_path / "dtu_view_mapper")
    srv = make_server(args=["--view-mapper", str(mapper)]).start()
    with srv.client() as c:
        assert c.get("/v1/health").json()["camera_rig"] == "dtu"
        inside = c.post("/v1/render", json=render_body(camera=wire_camera(azimuth=15.0, elevation=10.0, radius=3.6)))
        assert inside.status_code == 200, inside.text
        assert "x-warnings" not in inside.headers
        behind = c.post("/v1/render", json=render_body(camera=wire_camera(azimuth=180.0, elevation=10.0, radius=3.6)))
        assert behind.status_code == 200, behind.text
        warnings = json.loads(behind.headers["x-warnings"])
        assert len(warnings) == 1 and "outside the view-mapper's training range" in warnings[0]
        assert "azimuth" in warnings[0]
