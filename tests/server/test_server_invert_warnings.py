"""Against the real server (issue 24): an inversion carries its cameras' warnings like a sequence does
(the 202 answer and its X-Warnings header, the job record, every progress event), worked out at the
size the trainer uses the cameras, so a photo-sized reference is no size warning."""

from __future__ import annotations

import json
import time

import pytest
from srvutil import USE_FAKE, png_b64, read_events, render_body, wait_job, wire_camera


def _name(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000) % 10**8}"


@pytest.mark.skipif(USE_FAKE, reason="the fake engine has no view-mapper distance range")
def test_an_inversion_from_a_far_camera_says_the_distance_is_clamped(client):
    native = client.get("/v1/health").json()["native_size"]
    far = wire_camera(radius=12.0, size=native)
    render = client.post("/v1/render", json=render_body(camera=far, steps=1))
    assert render.status_code == 200, render.text
    (render_warning,) = json.loads(render.headers["x-warnings"])

    name = _name("far")
    body = {"name": name, "images": [png_b64((native, native))], "cameras": [far], "steps": 1, "seed": 0}
    created = client.post("/v1/jobs/invert", json=body)
    assert created.status_code == 202, created.text
    warnings = created.json()["warnings"]
    assert warnings == [render_warning], warnings  # the very string a render from that camera sends
    assert "the camera is 12.00 units from the anchor" in warnings[0]
    assert "outside the view-mapper's trained distances" in warnings[0] and "clamped" in warnings[0]
    assert json.loads(created.headers["x-warnings"]) == warnings

    job_id = created.json()["job_id"]
    progress = [data for event, data in read_events(client, job_id) if event == "progress"]
    assert progress and all(p["warnings"] == warnings for p in progress)
    job = wait_job(client, job_id)
    assert job["state"] == "done" and job["warnings"] == warnings
    assert any(j["job_id"] == job_id and j["warnings"] == warnings for j in client.get("/v1/jobs").json()["jobs"])
    assert client.delete(f"/v1/objects/{name}").status_code == 204


def test_a_photo_sized_reference_at_a_trained_distance_has_no_warnings(client):
    native = client.get("/v1/health").json()["native_size"]
    side = 8 * native  # far above the 2x that gets a render a size warning: the trainer resizes it
    big = wire_camera(radius=3.6, size=side)
    render = client.post("/v1/render", json=render_body(camera=wire_camera(radius=3.6, size=4 * native), steps=1))
    assert render.status_code == 200 and "native size" in render.headers.get("x-warnings", "")

    name = _name("photo")
    body = {"name": name, "images": [png_b64((side, side))], "cameras": [big], "steps": 1, "seed": 0}
    created = client.post("/v1/jobs/invert", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["warnings"] == [] and "x-warnings" not in created.headers
    job = wait_job(client, created.json()["job_id"])
    assert job["state"] == "done" and job["warnings"] == []
    assert client.delete(f"/v1/objects/{name}").status_code == 204
