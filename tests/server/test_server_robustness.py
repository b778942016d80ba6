"""Reliability under abuse (issue 25), against real server processes: memory of cancelled jobs, the
same-name race, bounded cost (size/step caps, idle sockets), input decoding, a full or read-only disk."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from denoise_probe_server import DenoiseProbeServer
from PIL import Image
from srvutil import LONG_INVERT, STEPS, png_b64, read_events, render_body, wait_job, wire_camera

from viewneti_backend import limits


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def _invert_body(name: str, steps: int = LONG_INVERT, images: list[str] | None = None, **cam) -> dict:
    images = images or [png_b64()]
    return {"name": name, "images": images, "cameras": [wire_camera(**cam) for _ in images], "steps": steps}


def _big_png_b64(side: int, seed: int) -> str:
    """A side x side PNG that compresses well (small upload) but decodes to side*side*3 bytes."""
    im = Image.new("RGB", (side, side), (seed % 256, 80, 160))
    im.paste((10, 200, 10), (side // 4, side // 4, side // 2, side // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# -- memory: a cancelled queued inversion keeps nothing decoded ----------------------------------------
def test_submit_cancel_loops_do_not_grow_the_server(make_server):
    srv = make_server().start()
    images = [_big_png_b64(2048, i) for i in range(6)]  # 6 x 12 MB decoded per job, ~40 KB uploaded
    with srv.client() as c:
        blocker = c.post("/v1/jobs/invert", json=_invert_body("blocker")).json()["job_id"]  # keeps the rest queued
        deadline = time.monotonic() + 300
        while c.get(f"/v1/jobs/{blocker}").json()["step"] < 2:  # the trainer's own memory is allocated by then
            assert time.monotonic() < deadline, "the blocking inversion does not progress"
            time.sleep(0.2)
        base = _rss_mb(srv.proc.pid)
        ids = []
        for i in range(12):  # with decoded images kept by a cancelled job: +72 MB per loop
            r = c.post("/v1/jobs/invert", json=_invert_body(f"leak{i}", images=images))
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
            assert c.post(f"/v1/jobs/{ids[-1]}/cancel").json()["state"] == "cancelled"
        grown = _rss_mb(srv.proc.pid) - base
        assert grown < 300, f"RSS grew by {grown:.0f} MB over 12 submit+cancel loops (unfixed: ~900 MB)"
        for job_id in ids:
            assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
            assert not list((srv.data_dir / "jobs" / job_id).glob("reference_*")), "spooled images not removed"
        c.post(f"/v1/jobs/{blocker}/cancel")


def test_queued_and_cancelled_inversions_hold_no_decoded_images(tmp_path):
    from fake_engine import FakeEngine
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path), lambda: FakeEngine(tmp_path / "objects", step_s=0.01))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:  # a Host the server accepts
        deadline = time.monotonic() + 30
        while c.get("/v1/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        running = c.post("/v1/jobs/invert", json=_invert_body("first")).json()["job_id"]
        queued = c.post("/v1/jobs/invert", json=_invert_body("second", images=[png_b64(), png_b64()])).json()["job_id"]
        store = app.state.store

        def pil_images(job_id: str) -> list:
            return store.get(job_id).run.images or []

        while store.get(running).state != "running":
            time.sleep(0.02)
        assert store.get(queued).state == "queued" and pil_images(queued) == []
        assert len(list((tmp_path / "jobs" / queued).glob("reference_*.bin"))) == 2  # encoded, on disk
        assert c.post(f"/v1/jobs/{queued}/cancel").json()["state"] == "cancelled"
        assert c.post(f"/v1/jobs/{running}/cancel").json()["state"] == "cancelling"
        while not store.get(running).terminal:
            time.sleep(0.02)
        for job_id in (queued, running):
            assert pil_images(job_id) == []
            assert not list((tmp_path / "jobs" / job_id).glob("reference_*"))


# -- same-name race --------------------------------------------------------------------------------
def test_concurrent_inversions_with_one_name_get_one_202(server):
    name = f"race_{int(time.time() * 1000) % 10**8}"
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def submit() -> None:
        with server.client() as c:
            barrier.wait()
            statuses.append(c.post("/v1/jobs/invert", json=_invert_body(name)).status_code)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [202, 409, 409, 409], statuses
    with server.client() as c:
        for job in c.get("/v1/jobs").json()["jobs"]:
            if job["name"] == name and job["state"] in ("queued", "running"):
                c.post(f"/v1/jobs/{job['job_id']}/cancel")
                wait_job(c, job["job_id"])


def test_an_inversion_named_like_one_that_just_finished_gets_409(tmp_path):
    """Request B checks the library for its name just before inversion A of that name finishes, and
    the active jobs just after: neither check sees A. The reservation's own check (under the store's
    lock, after the worker has listed A's object) must still refuse B. The interleaving is forced."""
    from fake_engine import FakeEngine
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path), lambda: FakeEngine(tmp_path / "objects", step_s=0.01))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:  # a Host the server accepts
        deadline = time.monotonic() + 30
        while c.get("/v1/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        store, worker = app.state.store, app.state.worker
        first = c.post("/v1/jobs/invert", json=_invert_body("twin", steps=20))
        assert first.status_code == 202, first.text
        first_id = first.json()["job_id"]
        library_has = worker.has_object
        looked = threading.Event()

        def has_object_then_finish_first(name: str) -> bool:
            taken = library_has(name)
            if not looked.is_set():  # B's first look at the library: A finishes right after it
                looked.set()
                assert not taken and store.get(first_id).state in ("queued", "running")
                end = time.monotonic() + 30
                while store.get(first_id).state != "done":
                    assert time.monotonic() < end, store.get(first_id)
                    time.sleep(0.01)
            return taken

        worker.has_object = has_object_then_finish_first
        second = c.post("/v1/jobs/invert", json=_invert_body("twin", steps=20))
        assert looked.is_set()
        assert second.status_code == 409 and "already exists" in second.json()["error"], second.text
        assert [j["job_id"] for j in c.get("/v1/jobs").json()["jobs"] if j["name"] == "twin"] == [first_id]


# -- bounded cost ----------------------------------------------------------------------------------
def test_cpu_size_cap_and_invert_step_cap_are_reported_and_enforced(server, client):
    h = client.get("/v1/health").json()
    assert h["device"].startswith("cpu")
    cap = limits.device_max_size("cpu", h["native_size"])
    assert h["max_size"] == cap < limits.MAX_SIZE
    r = client.post("/v1/render", json=render_body(size=cap + limits.SIZE_MULTIPLE))
    assert r.status_code == 422 and "max_size" in r.json()["error"], r.text
    assert h["max_invert_steps"] == limits.DEFAULT_MAX_INVERT_STEPS
    r = client.post("/v1/jobs/invert", json=_invert_body("toolong", steps=limits.DEFAULT_MAX_INVERT_STEPS + 1))
    assert r.status_code == 422 and "max_invert_steps" in r.json()["error"], r.text


def test_idle_sockets_cannot_starve_health(make_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    srv = make_server(args=["--max-connections", "64"]).start()
    socks = []
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            socks.append(s)
        half = socks[0]
        half.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a header that never ends
        t0 = time.monotonic()
        r = httpx.get(srv.url + "/v1/health", timeout=10)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 5
        n_fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        assert n_fds < 64 + 60, f"the server holds {n_fds} file descriptors"
    finally:
        for s in socks:
            s.close()


def test_a_request_head_that_never_ends_is_closed(make_server):
    srv = make_server().start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        s.settimeout(30)
        data = s.recv(100)  # b"" when the server closes it
        waited = time.monotonic() - t0
    assert data == b"" and 5 < waited < 25, (data, waited)


# -- input -----------------------------------------------------------------------------------------
def test_extreme_aspect_ratio_is_refused_for_inversion(client):
    im = Image.new("RGB", (640, 64), (100, 100, 100))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    body = _invert_body("thin", images=[base64.b64encode(buf.getvalue()).decode()])
    body["cameras"] = [wire_camera(size=64)]
    r = client.post("/v1/jobs/invert", json=body)
    assert r.status_code == 422 and "aspect ratio" in r.json()["error"] and "crop" in r.json()["error"], r.text
    body = _invert_body("thin2")
    body["cameras"] = [wire_camera(size=320, height=64)]
    r = client.post("/v1/jobs/invert", json=body)
    assert r.status_code == 422 and "cameras[0]" in r.json()["error"], r.text


def test_sixteen_bit_grey_exif_and_alpha_are_decoded_as_seen():
    from server.images import decode_image_bytes
    from viewneti_backend.engine import flatten_reference

    grey = np.full((16, 24), 32768, np.uint16)  # mid-grey in 16 bits
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    im = decode_image_bytes(buf.getvalue(), what="g", max_pixels=4096 * 4096)
    assert im.mode == "RGB" and im.size == (24, 16)
    assert abs(int(np.asarray(im)[0, 0, 0]) - 128) <= 1  # not clipped to white

    # a 40x20 sensor image, EXIF orientation 6 (rotate 90 CW to view): seen as 20x40, red on top
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    im = decode_image_bytes(buf.getvalue(), what="e", max_pixels=4096 * 4096)
    assert im.size == (20, 40)
    top, bottom = np.asarray(im)[5, 10], np.asarray(im)[35, 10]
    assert top[0] > 200 and bottom[0] < 60, (top, bottom)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    im = decode_image_bytes(buf.getvalue(), what="a", max_pixels=4096 * 4096)
    assert im.mode == "RGBA"
    flat = np.asarray(flatten_reference(im, (10, 20, 30)))
    assert tuple(flat[0, 0]) == (255, 0, 0) and tuple(flat[7, 0]) == (10, 20, 30)
    from viewneti_backend.engine import DEFAULT_BACKGROUND, TOY_BACKGROUND, embedded_model_dir, reference_background

    assert reference_background(str(embedded_model_dir())) == TOY_BACKGROUND  # the toy world's sky
    assert reference_background("/nonexistent/sd2") == DEFAULT_BACKGROUND


# -- disk: full, read-only, SIGKILL ------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MB tmpfs (root only: every server test process runs as root here)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs and need root", pytrace=False)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Write a filler file until the disk is full (unbuffered: every byte that fits is written)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 14, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _assert_full(folder: Path) -> None:
    """Not one more page fits: a new one-byte file cannot be written."""
    probe = folder / "probe.bin"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.ENOSPC, exc.value
    finally:
        os.close(fd)
        probe.unlink()


def _wait_for_log(srv, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in srv.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"not in the server log: {text!r}\n{srv.log_tail()}"
        time.sleep(0.1)


def test_full_disk_fails_the_job_save_yet_ends_the_job_and_the_server_restarts(make_server, tmpfs):
    """The disk fills while an inversion runs: its terminal record cannot be saved, yet its stream ends with
    'cancelled' and GET /v1/jobs/{id} says so; a restart on the still-full disk serves renders and refuses jobs."""
    data = tmpfs  # the data dir is the whole (small) disk; the server's log is written outside it
    srv = make_server(data).start()
    with srv.client() as c:
        job_id = c.post("/v1/jobs/invert", json=_invert_body("fulldisk")).json()["job_id"]
        wait_job(c, job_id, states=("running",))
        job_dir = data / "jobs" / job_id
        # The job's spooled reference is deleted when it ends, which would free a page for the terminal save.
        # A second link keeps its pages allocated, so that nothing the server deletes frees any space.
        pinned = tmpfs / "pinned"
        pinned.mkdir()
        references = sorted(job_dir.glob("reference_*.bin"))
        assert references, list(job_dir.iterdir())
        for ref in references:
            os.link(ref, pinned / ref.name)
        events: list = []
        reader = threading.Thread(target=lambda: events.extend(read_events(c, job_id, timeout=60)))
        reader.start()
        _fill(tmpfs)
        time.sleep(1.5)  # a progress save that was writing while the disk filled has replaced the record by now ...
        _fill(tmpfs)  # ... and the page it freed is taken as well
        _assert_full(tmpfs)
        before = json.loads((job_dir / "job.json").read_text())
        assert before["state"] == "running", before
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        reader.join(60)
        assert events and events[-1][0] == "cancelled", events[-3:]
        _wait_for_log(srv, f"could not save job {job_id} (cancelled)")
        assert "No space left on device" in srv.log_tail(200)
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"  # the server's memory tells the truth
        assert json.loads((job_dir / "job.json").read_text())["state"] == "running"  # the save really failed
        r = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": STEPS})
        assert r.status_code == 507 and "free disk space" in r.json()["error"], r.text
        assert c.post("/v1/render", json=render_body()).status_code == 200
    srv.kill()
    _assert_full(tmpfs)
    srv2 = make_server(data).start()  # the disk is still full: it starts, serves renders, refuses jobs
    with srv2.client() as c:
        assert c.get("/v1/health").status_code == 200
        assert c.post("/v1/render", json=render_body()).status_code == 200
        _wait_for_log(srv2, "the jobs folder is not writable")
        # its last saved record said running: after a restart that is 'interrupted' (which it cannot save either)
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "interrupted" and job["error"], job
        _wait_for_log(srv2, f"could not save job {job_id} (interrupted)")
        r = c.post("/v1/jobs/invert", json=_invert_body("nospace", steps=2))
        assert r.status_code == 507, r.text
        msg = r.json()["error"]
        assert "data directory" in msg and "No space left" in msg and "free disk space" in msg, msg
        (tmpfs / "filler.bin").unlink()  # space is back: jobs are accepted again
        shutil.rmtree(pinned)
        r = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": STEPS})
        assert r.status_code == 202, r.text
        assert read_events(c, r.json()["job_id"])[-1][0] == "done"
    srv2.stop()


def test_a_sequence_on_a_full_disk_fails_at_its_first_unstored_frame(tmpfs):
    """The disk fills while a long sequence renders: the job ends 'error' at the first frame it cannot
    store, saying what to free, and renders no more frames (the server's denoising steps are logged)."""
    srv = DenoiseProbeServer(tmpfs)
    frames = list(range(200))
    try:
        srv.start()
        with srv.client() as c:
            r = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera(azimuth=1.5 * f) for f in frames]})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            arrivals = []
            with c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=300) as events:
                for line in events.iter_lines():
                    if line.startswith("event: frame"):
                        arrivals.append(time.monotonic())
                        if len(arrivals) == 3:
                            break
            frame_s = (arrivals[-1] - arrivals[0]) / 2
            _fill(tmpfs)
            full_at = time.monotonic()
            events = read_events(c, job_id, timeout=120)
            elapsed = time.monotonic() - full_at
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert c.post("/v1/render", json=render_body()).status_code == 200  # the server goes on
    finally:
        srv.kill()
    # the frame being rendered when the disk filled, perhaps one more (a freed page); not the other ~190
    started = [t for t, step, _ in srv.steps() if step == 1 and t > full_at]
    assert len(started) <= 2, f"{len(started)} frames were rendered after the disk filled"
    assert elapsed < 5 * frame_s + 5.0, f"the job ended {elapsed:.1f}s after the disk filled ({frame_s:.2f}s a frame)"
    assert events[-1][0] == "error", events[-3:]
    msg = events[-1][1]["error"]
    assert "No space left on device" in msg and "free disk space" in msg and str(tmpfs) in msg, msg
    assert job["state"] == "error" and job["error"] == msg, job
    on_disk = sorted(int(p.stem.split("_")[1]) for p in (tmpfs / "jobs" / job_id).glob("frame_*.png"))
    assert 3 <= len(job["frames_done"]) < len(frames) and job["frames_done"] == on_disk, (job, on_disk)


def test_read_only_data_dir_serves_renders_and_refuses_jobs(make_server, tmpfs):
    data = tmpfs
    srv = make_server(data).start()
    with srv.client() as c:
        assert c.post("/v1/render", json=render_body()).status_code == 200
    srv.stop()
    shutil.rmtree(data / "jobs")  # and the jobs folder cannot even be created
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    srv2 = make_server(data).start()
    with srv2.client() as c:
        assert c.get("/v1/health").status_code == 200
        assert c.post("/v1/render", json=render_body()).status_code == 200
        r = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": STEPS})
        assert r.status_code == 507 and "writable" in r.json()["error"], r.text
        assert c.get("/v1/jobs").json() == {"jobs": []}
    srv2.stop()


def test_sequence_frames_on_disk_are_listed_after_sigkill(make_server, tmp_path):
    data = tmp_path / "data"
    srv = make_server(data).start()
    cams = [wire_camera(azimuth=1.5 * i) for i in range(200)]
    frames = [100 + 3 * i for i in range(200)]
    with srv.client() as c:
        job_id = c.post("/v1/jobs/sequence", json={"cameras": cams, "frames": frames, "steps": 2}).json()["job_id"]
        seen = []
        with c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and '"frame"' in line and "url" in line:
                    seen.append(json.loads(line[5:])["frame"])
                    if len(seen) >= 3:
                        break
        srv.kill()  # within a second of the last frame: the record may not list it
    on_disk = sorted(int(p.stem.split("_")[1]) for p in (data / "jobs" / job_id).glob("frame_*.png"))
    assert set(seen) <= set(on_disk)
    srv2 = make_server(data).start()
    with srv2.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "interrupted"
        assert job["frames_done"] == [f for f in frames if f in on_disk]
        for f in job["frames_done"]:
            assert c.get(f"/v1/jobs/{job_id}/frames/{f}").status_code == 200


def test_an_rgba_reference_inverts_on_the_model_background(client):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 40, 40, 255)  # an opaque red object on a transparent background
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    name = f"rgba_{int(time.time() * 1000) % 10**8}"
    r = client.post(
        "/v1/jobs/invert", json=_invert_body(name, steps=2, images=[base64.b64encode(buf.getvalue()).decode()])
    )
    assert r.status_code == 202, r.text
    events = read_events(client, r.json()["job_id"])
    assert events[-1][0] == "done", events[-1]
    assert client.delete(f"/v1/objects/{name}").status_code == 204
