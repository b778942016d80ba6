"""Per-model sampling defaults through the API: health reports them, and a render or sequence that
leaves steps/guidance out gets exactly what sending the model's defaults explicitly gives."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from srvutil import STEPS, USE_FAKE, png_array, read_events, render_body, wire_camera

SD = {"guidance": 7.5, "steps": 30, "live_steps": 8}


def expected_defaults(test_model) -> dict:
    if USE_FAKE:
        from fake_engine import SAMPLING

        return dict(SAMPLING)
    from viewneti_backend.engine import embedded_model_dir
    from viewneti_backend.sampling_defaults import SamplingDefaults

    return SamplingDefaults.for_model(test_model or embedded_model_dir()).to_dict()


def defaults(client) -> dict:
    r = client.get("/v1/health")
    assert r.status_code == 200, r.text
    return r.json()["sampling_defaults"]


def test_health_reports_the_models_sampling_defaults(client, test_model):
    d = defaults(client)
    assert set(d) == {"guidance", "steps", "live_steps"}
    assert d == expected_defaults(test_model)  # the session server runs with the default --max-steps 150
    if not USE_FAKE and test_model is None:  # the embedded toy model ships its own (lower) guidance
        assert d["guidance"] < SD["guidance"]


def test_omitted_guidance_gives_the_same_png_as_the_explicit_default(client):
    d = defaults(client)
    body = render_body(seed=21)
    assert "guidance" not in body
    implicit = client.post("/v1/render", json=body)
    explicit = client.post("/v1/render", json={**body, "guidance": d["guidance"]})
    nulled = client.post("/v1/render", json={**body, "guidance": None})
    assert implicit.status_code == explicit.status_code == nulled.status_code == 200, implicit.text
    assert implicit.content == explicit.content == nulled.content
    if d["guidance"] != SD["guidance"]:  # an explicit value still wins
        sd = client.post("/v1/render", json={**body, "guidance": SD["guidance"]})
        assert sd.status_code == 200 and sd.content != implicit.content


def test_omitted_steps_and_guidance_give_the_same_png_as_the_explicit_defaults(client):
    d = defaults(client)
    body = render_body(seed=22)
    del body["steps"]
    implicit = client.post("/v1/render", json=body)
    explicit = client.post("/v1/render", json={**body, "steps": d["steps"], "guidance": d["guidance"]})
    assert implicit.status_code == explicit.status_code == 200, implicit.text
    assert implicit.content == explicit.content


def test_sequence_without_guidance_uses_and_records_the_model_default(client, server):
    d = defaults(client)
    cam = wire_camera(azimuth=60.0)
    r = client.post("/v1/jobs/sequence", json={"cameras": [cam], "seed": 23, "steps": STEPS})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    events = read_events(client, job_id)
    assert events[-1][0] == "done", events
    frame = client.get(f"/v1/jobs/{job_id}/frames/0")
    assert frame.status_code == 200
    live = client.post("/v1/render", json=render_body(camera=cam, seed=23, guidance=d["guidance"]))
    assert live.status_code == 200
    assert np.array_equal(png_array(frame.content), png_array(live.content))
    record = json.loads((server.data_dir / "jobs" / job_id / "request.json").read_text())
    assert record["steps"] == STEPS and record["guidance"] == d["guidance"]  # the values actually used


# -- in-process, with the fake engine ------------------------------------------------------------
def _wait_ready(c, timeout=10.0):
    deadline = time.monotonic() + timeout
    while c.get("/v1/health").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


def _recording_app(tmp_path, engine_cls, **config):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import ServerConfig

    calls = []

    class Recording(engine_cls):
        def render(self, cameras, object_name=None, seed=0, steps=None, guidance=None, **kw):
            calls.append((steps, guidance))
            return super().render(cameras, object_name, seed, steps, guidance, **kw)

    app = create_app(ServerConfig(data_dir=tmp_path, **config), lambda: Recording(tmp_path / "objects", step_s=0.0))
    return TestClient(app, base_url="http://127.0.0.1:7860"), calls  # a Host the server accepts


def test_defaults_are_capped_at_max_steps_and_explicit_values_pass_through(tmp_path):
    from fake_engine import SAMPLING, FakeEngine

    body = {"camera": wire_camera(size=32)}
    client, calls = _recording_app(tmp_path, FakeEngine, max_steps=3)
    with client as c:
        _wait_ready(c)
        h = c.get("/v1/health").json()
        assert h["max_steps"] == 3
        assert h["sampling_defaults"] == {
            "guidance": SAMPLING["guidance"],
            "steps": 3,
            "live_steps": min(3, SAMPLING["live_steps"]),
        }
        assert c.post("/v1/render", json=body).status_code == 200
        assert c.post("/v1/render", json={**body, "steps": 2, "guidance": 0.0}).status_code == 200
        assert c.post("/v1/render", json={**body, "steps": 4}).status_code == 422  # explicit: still checked
    assert calls == [(3, SAMPLING["guidance"]), (2, 0.0)]


def test_an_engine_without_sampling_defaults_gets_sd_values(tmp_path):
    from fake_engine import FakeEngine

    class OldEngine(FakeEngine):
        def info(self):
            info = super().info()
            info.pop("sampling_defaults")
            return info

    client, calls = _recording_app(tmp_path, OldEngine)
    with client as c:
        _wait_ready(c)
        assert c.get("/v1/health").json()["sampling_defaults"] == SD
        assert c.post("/v1/render", json={"camera": wire_camera(size=32)}).status_code == 200
    assert calls == [(SD["steps"], SD["guidance"])]


def test_openapi_documents_steps_and_guidance_as_optional_model_defaults(tmp_path):
    from fake_engine import FakeEngine

    client, _ = _recording_app(tmp_path, FakeEngine)
    with client as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    for name in ("RenderRequest", "SequenceRequest"):
        props, required = schemas[name]["properties"], schemas[name].get("required", [])
        for field in ("steps", "guidance"):
            assert field not in required
            assert "model's default" in props[field]["description"], (name, field)


def test_session_renders_do_not_silently_use_live_steps(client):
    """live_steps is advice for clients: a live (session) render without steps uses the model's steps."""
    d = defaults(client)
    body = render_body(seed=24, session=f"sampling-{threading.get_ident()}")
    del body["steps"]
    implicit = client.post("/v1/render", json=body)
    explicit = client.post("/v1/render", json={**body, "steps": d["steps"]})
    assert implicit.status_code == explicit.status_code == 200
    assert implicit.content == explicit.content
