"""Sequence and inversion jobs against the real server: events, frames, cancel, the new token."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from denoise_probe_server import DenoiseProbeServer
from srvutil import LONG_INVERT, STEPS, png_array, png_b64, read_events, render_body, wait_job, wire_camera

INVERT_STEPS = 12


def test_sequence_job_writes_frames_and_streams_events(client):
    cams = [wire_camera(azimuth=a) for a in (0.0, 45.0, 90.0)]
    r = client.post("/v1/jobs/sequence", json={"cameras": cams, "frames": [10, 11, 12], "seed": 4, "steps": STEPS})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "sequence" and job["total"] == 3
    events = read_events(client, job["job_id"])
    names = [e[0] for e in events]
    assert names[-1] == "done", events
    frames = [d for n, d in events if n == "frame"]
    assert [f["frame"] for f in frames] == [10, 11, 12]
    steps = [d["step"] for n, d in events if n == "progress"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == 3
    assert events[-1][1]["result"]["frames"] == [10, 11, 12]
    # frames are downloadable and equal to the live render of the same camera and seed
    for f, cam in zip(frames, cams):
        fr = client.get(f["url"])
        assert fr.status_code == 200 and fr.headers["content-type"] == "image/png"
        live = client.post("/v1/render", json=render_body(camera=cam, seed=4))
        assert np.array_equal(png_array(fr.content), png_array(live.content))
    st = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert st["state"] == "done" and st["frames_done"] == [10, 11, 12] and st["step"] == 3
    # where the job's time went, summed over its renders (one frame a call on the CPU)
    assert set(st["phase_ms"]) == {"encode", "denoise", "decode"} and all(v > 0 for v in st["phase_ms"].values())
    assert client.get(f"/v1/jobs/{job['job_id']}/frames/13").status_code == 404
    # a late subscriber gets the replay of the finished job
    replay = read_events(client, job["job_id"])
    assert [n for n, _ in replay].count("frame") == 3 and replay[-1][0] == "done"
    # listed newest first
    assert client.get("/v1/jobs").json()["jobs"][0]["job_id"] == job["job_id"]


@pytest.fixture(scope="module")
def inverted(client):
    """One finished inversion, shared by the tests below."""
    name = f"inv_{int(time.time() * 1000) % 10**8}"
    body = {
        "name": name,
        "images": [png_b64((64, 64))],
        "cameras": [wire_camera(azimuth=20.0)],
        "steps": INVERT_STEPS,
        "seed": 0,
        "preview_every": 4,
    }
    r = client.post("/v1/jobs/invert", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "invert" and job["total"] == INVERT_STEPS
    events = read_events(client, job["job_id"])
    return name, job, events


def test_inversion_progress_events_arrive_in_order(inverted):
    name, job, events = inverted
    assert events[-1][0] == "done", events[-5:]
    progress = [d for n, d in events if n == "progress"]
    steps = [d["step"] for d in progress]
    trained = [s for s in steps if s > 0]
    assert steps == sorted(steps) and len(set(trained)) == len(trained), steps
    # step 0 may come twice on a compiled server: queued/running, then "compiling" (never on the CPU)
    assert [d["phase"] for d in progress if d["step"] == 0] in ([], [None], ["compiling"], [None, "compiling"]), (
        progress
    )
    assert all(d["phase"] == "training" for d in progress if d["step"] > 0), progress
    assert steps[-1] == INVERT_STEPS
    assert all(d["total"] == INVERT_STEPS for d in progress)
    assert any(d.get("loss") is not None for d in progress)
    previews = [d for n, d in events if n == "preview"]
    assert previews and all(d["png_base64"] for d in previews)
    assert events[-1][1]["result"]["name"] == name


def test_finished_inversion_token_is_listed_and_renders(client, inverted):
    name, job, _ = inverted
    names = [o["name"] for o in client.get("/v1/objects").json()["objects"]]
    assert name in names
    r = client.post("/v1/render", json=render_body(object=name, seed=2))
    assert r.status_code == 200, r.text
    st = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert st["state"] == "done" and st["result"]["name"] == name
    # the same name again: conflict
    again = client.post(
        "/v1/jobs/invert", json={"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": 2}
    )
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    # cancelling a finished job is a conflict
    assert client.post(f"/v1/jobs/{job['job_id']}/cancel").status_code == 409


def test_cancel_stops_inversion_within_a_step(client):
    name = f"cancelme_{int(time.time() * 1000) % 10**8}"
    r = client.post(
        "/v1/jobs/invert",
        json={
            "name": name,
            "images": [png_b64()],
            "cameras": [wire_camera()],
            "steps": LONG_INVERT,
            "preview_every": 0,
        },
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert read_events(client, job_id, stop_after="progress")[0][0] == "progress"
    while client.get(f"/v1/jobs/{job_id}").json()["step"] < 3:
        time.sleep(0.02)

    # measure the step time over two whole optimizer steps (one fused step of 9 images can take
    # seconds on a 2-core CPU), then cancel
    def wait_step_change(s):
        while (now := client.get(f"/v1/jobs/{job_id}").json()["step"]) == s:
            time.sleep(0.01)
        return now

    s_a = wait_step_change(client.get(f"/v1/jobs/{job_id}").json()["step"])
    t_a = time.monotonic()
    s_b = wait_step_change(wait_step_change(s_a))
    step_s = (time.monotonic() - t_a) / (s_b - s_a)
    t0 = time.monotonic()
    c = client.post(f"/v1/jobs/{job_id}/cancel")
    assert c.status_code == 202 and c.json()["state"] in ("cancelling", "cancelled")
    final = wait_job(client, job_id, timeout=60)
    elapsed = time.monotonic() - t0
    assert final["state"] == "cancelled", final
    assert elapsed < max(2.0, 3 * step_s + 1.0), (elapsed, step_s)
    assert final["step"] < LONG_INVERT
    assert name not in [o["name"] for o in client.get("/v1/objects").json()["objects"]]
    # the stream of a cancelled job ends with 'cancelled'
    assert read_events(client, job_id)[-1][0] == "cancelled"


def test_cancel_a_queued_job_and_unknown_jobs(client):
    # a long sequence keeps the worker busy; a second job stays queued and is cancelled at once
    cams = [wire_camera(azimuth=float(a)) for a in range(0, 360, 10)]
    first = client.post("/v1/jobs/sequence", json={"cameras": cams, "steps": STEPS}).json()["job_id"]
    second = client.post("/v1/jobs/sequence", json={"cameras": cams[:2], "steps": STEPS}).json()["job_id"]
    c = client.post(f"/v1/jobs/{second}/cancel")
    assert c.status_code == 202
    assert wait_job(client, second, timeout=60)["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{second}").json()["frames_done"] == []
    client.post(f"/v1/jobs/{first}/cancel")
    assert wait_job(client, first, timeout=120)["state"] == "cancelled"
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/..%2f..%2fetc", "/v1/jobs/nope/events"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert client.post("/v1/jobs/0123456789abcdef0123456789abcdef/cancel").status_code == 404


def test_live_render_is_served_while_a_sequence_runs(client):
    cams = [wire_camera(azimuth=float(a)) for a in range(0, 360, 15)]
    job_id = client.post("/v1/jobs/sequence", json={"cameras": cams, "steps": STEPS}).json()["job_id"]
    read_events(client, job_id, stop_after="frame")
    r = client.post("/v1/render", json=render_body(seed=9))
    assert r.status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running", "render should jump the job queue"
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert wait_job(client, job_id, timeout=120)["state"] == "cancelled"


def test_live_render_is_served_during_an_inversion(client):
    ref = client.post("/v1/render", json=render_body(seed=21, azimuth=33.0))
    assert ref.status_code == 200
    name = f"busy_{int(time.time() * 1000) % 10**8}"
    job_id = client.post(
        "/v1/jobs/invert", json={"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": LONG_INVERT}
    ).json()["job_id"]
    read_events(client, job_id, stop_after="progress")
    while client.get(f"/v1/jobs/{job_id}").json()["step"] < 1:
        time.sleep(0.02)
    r = client.post("/v1/render", json=render_body(seed=21, azimuth=33.0))
    assert r.status_code == 200
    assert r.content == ref.content, "a render between inversion steps must equal the same render when idle"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert wait_job(client, job_id, timeout=120)["state"] == "cancelled"
    assert name not in [o["name"] for o in client.get("/v1/objects").json()["objects"]]


def test_event_client_disconnect_does_not_affect_the_job(client, server):
    cams = [wire_camera(azimuth=float(a)) for a in range(0, 90, 15)]
    job_id = client.post("/v1/jobs/sequence", json={"cameras": cams, "steps": STEPS}).json()["job_id"]
    with server.client() as other:
        first = read_events(other, job_id, stop_after="frame")  # then hang up mid-stream
    assert first[-1][0] == "frame"
    final = wait_job(client, job_id, timeout=300)
    assert final["state"] == "done" and len(final["frames_done"]) == len(cams)


PREVIEW_STEPS = 60  # denoising steps of each preview of the slow-preview model: seconds on a CPU


@pytest.fixture
def slow_preview_model(test_model, tmp_path):
    """The test model with its recommended sampling steps (which an inversion's previews use) raised to
    PREVIEW_STEPS: the same weights (linked), so that a preview takes many times a denoising step."""
    from viewneti_backend.engine import embedded_model_dir
    from viewneti_backend.sampling_defaults import BUNDLE_DIR

    src = Path(test_model) if test_model else embedded_model_dir()
    dst = tmp_path / "slow_preview_model"
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name != BUNDLE_DIR:
            (dst / entry.name).symlink_to(entry)
    (dst / BUNDLE_DIR).mkdir()
    for entry in (src / BUNDLE_DIR).iterdir():
        if entry.name != "sampling.json":
            (dst / BUNDLE_DIR / entry.name).symlink_to(entry)
    (dst / BUNDLE_DIR / "sampling.json").write_text(json.dumps({"guidance": 2.0, "steps": PREVIEW_STEPS}))
    return dst


def test_cancel_during_a_preview_stops_it_at_its_next_denoising_step(tmp_path, slow_preview_model):
    """preview_every=1: after each training step the worker renders a preview of PREVIEW_STEPS denoising
    steps. A cancel that arrives while one denoises stops it at its next step, not at its end."""
    srv = DenoiseProbeServer(tmp_path / "data", model=slow_preview_model)
    try:
        srv.start()
        with srv.client() as c:
            body = {"name": "slowpreview", "images": [png_b64()], "cameras": [wire_camera()], "steps": LONG_INVERT}
            r = c.post("/v1/jobs/invert", json={**body, "preview_every": 1})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 300
            while not any(i >= 3 for _, i, _ in srv.steps()):  # the first preview is on its way
                assert time.monotonic() < deadline, f"no preview is denoising:\n{srv.log_tail()}"
                time.sleep(0.01)
            t0 = time.monotonic()
            assert c.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelling"
            final = wait_job(c, job_id, timeout=120)
            latency = time.monotonic() - t0
            assert final["state"] == "cancelled", final
            assert "slowpreview" not in [o["name"] for o in c.get("/v1/objects").json()["objects"]]
    finally:
        srv.kill()
    steps = srv.steps()
    assert {n for _, _, n in steps} == {PREVIEW_STEPS}, "only previews render during this inversion"
    before = [i for t, i, _ in steps if t < t0]
    after = [i for t, i, _ in steps if t >= t0]
    step_s = (steps[-1][0] - steps[0][0]) / max(1, len(steps) - 1)
    assert before[-1] < PREVIEW_STEPS - 10, f"the cancel came too late in the preview to tell: {before}"
    assert len(after) <= 2, f"the preview ran {len(after)} more denoising steps after the cancel"
    assert final["step"] == 0, "the preview of step 1 was rendered to its end and step 1 reported"
    # the bound is far below what waiting for the rest of the preview takes
    bound = max(1.0, 5 * step_s)
    rest_s = (PREVIEW_STEPS - before[-1]) * step_s
    assert rest_s > 2 * bound, f"the preview is too quick to tell ({rest_s:.2f}s left of it)"
    print(f"cancelled in {latency:.2f}s; {len(after)} step(s) after the cancel; {rest_s:.2f}s of preview were left")
    assert latency < bound, f"cancelling took {latency:.2f}s ({step_s:.2f}s per denoising step)"
