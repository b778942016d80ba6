"""Persistence across restarts and crashes (each test runs its own server processes)."""

from __future__ import annotations

import signal
import time

from srvutil import LONG_INVERT, STEPS, png_b64, read_events, render_body, wait_job, wire_camera


def _invert(c, name, steps, preview_every=0):
    r = c.post(
        "/v1/jobs/invert",
        json={
            "name": name,
            "images": [png_b64()],
            "cameras": [wire_camera()],
            "steps": steps,
            "preview_every": preview_every,
        },
    )
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_token_survives_a_restart(make_server, tmp_path):
    data = tmp_path / "data"
    srv = make_server(data).start()
    with srv.client() as c:
        job_id = _invert(c, "keeper", 6)
        assert read_events(c, job_id)[-1][0] == "done"
        before = c.post("/v1/render", json=render_body(object="keeper", seed=3))
        assert before.status_code == 200
    # graceful: uvicorn finishes the shutdown, then re-raises SIGTERM so the exit status shows it
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log_tail(200)
    srv2 = make_server(data, port=None).start()
    with srv2.client() as c:
        names = [o["name"] for o in c.get("/v1/objects").json()["objects"]]
        assert "keeper" in names
        after = c.post("/v1/render", json=render_body(object="keeper", seed=3))
        assert after.status_code == 200
        assert after.content == before.content
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "done"
        # delete it: gone from the library, also after a restart
        assert c.delete("/v1/objects/keeper").status_code == 204
        assert c.delete("/v1/objects/keeper").status_code == 404
    srv2.stop()
    srv3 = make_server(data).start()
    with srv3.client() as c:
        assert "keeper" not in [o["name"] for o in c.get("/v1/objects").json()["objects"]]


def test_sigkill_during_inversion_leaves_library_intact_and_job_interrupted(make_server, tmp_path):
    data = tmp_path / "data"
    srv = make_server(data).start()
    with srv.client() as c:
        done_id = _invert(c, "survivor", 4)
        assert read_events(c, done_id)[-1][0] == "done"
        objects_before = sorted(o["name"] for o in c.get("/v1/objects").json()["objects"])
        ref = c.post("/v1/render", json=render_body(object="survivor", seed=1)).content
        job_id = _invert(c, "victim", LONG_INVERT)
        read_events(c, job_id, stop_after="progress")
        while c.get(f"/v1/jobs/{job_id}").json()["step"] < 2:
            time.sleep(0.02)
        # a sequence queued behind it is also cut off
        seq_id = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": STEPS}).json()["job_id"]
    srv.kill()
    srv2 = make_server(data).start()
    with srv2.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "interrupted", job
        assert job["error"]
        assert c.get(f"/v1/jobs/{seq_id}").json()["state"] == "interrupted"
        assert read_events(c, job_id)[-1][0] == "interrupted"
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        objects_after = sorted(o["name"] for o in c.get("/v1/objects").json()["objects"])
        assert objects_after == objects_before
        assert "victim" not in objects_after
        again = c.post("/v1/render", json=render_body(object="survivor", seed=1))
        assert again.status_code == 200 and again.content == ref
        # the name is free again: inverting it now works
        new_id = _invert(c, "victim", 3)
        assert wait_job(c, new_id, timeout=300)["state"] == "done"
    # no temp files left anywhere in the data dir
    leftovers = [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_sigterm_during_inversion_ends_streams_and_marks_job_interrupted(make_server, tmp_path):
    import threading

    data = tmp_path / "data"
    srv = make_server(data).start()
    with srv.client() as c:
        job_id = _invert(c, "stopped", LONG_INVERT)
        read_events(c, job_id, stop_after="progress")
        streamed: list = []
        t = threading.Thread(target=lambda: streamed.extend(read_events(srv.client(), job_id, timeout=60)))
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        srv.stop(signal.SIGTERM, timeout=60)
        stop_s = time.monotonic() - t0
        t.join(30)
    assert streamed and streamed[-1][0] == "interrupted", streamed[-3:]
    assert stop_s < 15, f"graceful stop took {stop_s:.1f}s"
    srv2 = make_server(data).start()
    with srv2.client() as c:
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "interrupted"
        assert "stopped" not in [o["name"] for o in c.get("/v1/objects").json()["objects"]]
