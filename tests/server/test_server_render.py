"""POST /v1/render against the real server: size, determinism, pose dependence, headers."""

from __future__ import annotations

import json

import numpy as np
from srvutil import SIZE, png_array, png_size, render_body, wire_camera


def test_health_reports_model_and_queue(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["api"] == "v1"
    for key in (
        "version",
        "base_model",
        "device",
        "dtype",
        "view_mapper",
        "default_object",
        "queue_depth",
        "native_size",
        "max_size",
    ):
        assert key in h, key
    assert isinstance(h["queue_depth"], int)
    assert r.headers["x-request-id"]


def test_objects_lists_default_object(client):
    h = client.get("/v1/health").json()
    objs = client.get("/v1/objects").json()["objects"]
    names = [o["name"] for o in objs]
    if h["default_object"]:
        assert h["default_object"] in names
    for o in objs:
        assert {"name", "builtin"} <= set(o)


def test_render_returns_png_of_requested_size(client):
    for w, h in ((SIZE, SIZE), (48, 80)):
        r = client.post("/v1/render", json=render_body(camera=wire_camera(size=w, height=h)))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert png_size(r.content) == (w, h)


def test_render_headers(client):
    r = client.post("/v1/render", json=render_body(seed=1234), headers={"X-Request-Id": "my-req-42"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "my-req-42"
    assert r.headers["x-seed"] == "1234"
    timings = json.loads(r.headers["x-timings-ms"])
    for key in ("queue", "encode", "denoise", "decode", "total"):
        assert key in timings and timings[key] >= 0, (key, timings)


def test_same_request_and_seed_give_identical_bytes(client):
    body = render_body(seed=7, session=None)
    a = client.post("/v1/render", json=body)
    b = client.post("/v1/render", json=body)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


def test_explicit_intrinsics_are_accepted_and_default_ones_change_nothing(client):
    """Optional fx, fy, cx, cy on the wire: the values a plain camera implies render the same bytes
    (the toy view-mapper sees the field of view only)."""
    import math

    cam = wire_camera()
    fy = 0.5 * cam["height"] / math.tan(math.radians(cam["fov_y_deg"]) / 2.0)
    explicit = {**cam, "fx": fy, "fy": fy, "cx": cam["width"] / 2, "cy": cam["height"] / 2}
    a = client.post("/v1/render", json=render_body(camera=cam, seed=5))
    b = client.post("/v1/render", json=render_body(camera=explicit, seed=5))
    assert a.status_code == b.status_code == 200, b.text
    assert a.content == b.content


def test_different_poses_give_different_images(client):
    a = client.post("/v1/render", json=render_body(azimuth=0.0, seed=3))
    b = client.post("/v1/render", json=render_body(azimuth=120.0, seed=3))
    assert a.status_code == b.status_code == 200
    diff = np.abs(png_array(a.content).astype(int) - png_array(b.content).astype(int)).mean()
    assert diff > 1.0, f"mean abs difference {diff} between views 120 degrees apart"


def test_different_seeds_give_different_images(client):
    a = client.post("/v1/render", json=render_body(seed=1))
    b = client.post("/v1/render", json=render_body(seed=2))
    assert a.status_code == b.status_code == 200
    assert a.content != b.content


def test_explicit_default_object_matches_implicit(client):
    default = client.get("/v1/health").json()["default_object"]
    if not default:
        return
    a = client.post("/v1/render", json=render_body(seed=5))
    b = client.post("/v1/render", json=render_body(seed=5, object=default))
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


def test_openapi_schema_is_served(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in (
        "/v1/health",
        "/v1/objects",
        "/v1/render",
        "/v1/jobs/sequence",
        "/v1/jobs/invert",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
    ):
        assert p in paths, p
