"""Finished jobs do not pile up: ``DELETE /v1/jobs/{id}`` and ``--keep-jobs N`` retention (server/API.md).

The store's rules (which jobs are pruned, a delete racing the worker, the startup clean-up) are tested on
``JobStore`` itself; the HTTP contract on real server processes: the session server (the real engine) for
deleting, servers with the fake engine (``fake_server.py``, the real CLI) for retention, which needs several
finished jobs and restarts.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from srvutil import LONG_INVERT, STEPS, png_b64, wait_job, wire_camera

from server.config import MIN_KEEP_JOBS, ServerConfig
from server.errors import ApiError
from server.events import EventHub
from server.jobs import DELETING_PREFIX, Job, JobStore, frame_filename
from viewneti_backend.progress import Progress

REPO = Path(__file__).resolve().parents[2]


def _finished(store: JobStore, state: str = "done") -> Job:
    """A sequence job with one frame file, ended in ``state``; 2 ms apart, so that ``updated`` orders them."""
    time.sleep(0.002)
    job = store.create("sequence", 1, {"frames": [0]})
    store.set_state(job, "running")
    store.frame_done(job, 0, 0, b"png", eta_s=0.0)
    store.set_state(job, state)
    return job


def _write_record(jobs_dir: Path, job_id: str, state: str, created: str, updated: str) -> Path:
    d = jobs_dir / job_id
    d.mkdir(parents=True)
    job = Job(job_id=job_id, kind="sequence", total=1, state=state, created=created, updated=updated)
    (d / "job.json").write_text(json.dumps(job.public()))
    (d / frame_filename(0)).write_bytes(b"png")
    return d


# -- the store -------------------------------------------------------------------------------------------------
def test_delete_removes_a_finished_job_and_refuses_an_active_one(tmp_path):
    store = JobStore(tmp_path, EventHub())
    done = _finished(store)
    running = store.create("invert", 5, {}, name="busy")
    store.set_state(running, "running")
    with pytest.raises(ApiError) as e:
        store.delete(running.job_id)
    assert e.value.status == 409 and f"POST /v1/jobs/{running.job_id}/cancel" in e.value.message
    assert store.get(running.job_id) is running and (tmp_path / running.job_id / "job.json").is_file()
    store.delete(done.job_id)
    assert not (tmp_path / done.job_id).exists() and not list(tmp_path.glob(DELETING_PREFIX + "*"))
    with pytest.raises(ApiError) as e:
        store.get(done.job_id)
    assert e.value.status == 404
    with pytest.raises(ApiError) as again:
        store.delete(done.job_id)
    assert again.value.status == 404 and again.value.message == e.value.message  # JobStore.get's text
    assert [j.job_id for j in store.list()] == [running.job_id]


def test_a_deleted_job_is_not_saved_again(tmp_path, caplog):
    """A progress report or state change that arrives after the delete (the worker was a step behind) saves
    nothing: no folder comes back, no 'could not save' warning."""
    store = JobStore(tmp_path, EventHub())
    job = _finished(store, "cancelled")
    store.delete(job.job_id)
    with caplog.at_level(logging.WARNING, logger="viewneti.server"):
        store.progress(job, Progress(step=1, total=1))
        store.set_state(job, "cancelled")
    assert not (tmp_path / job.job_id).exists()
    assert "could not save" not in caplog.text, caplog.text


def test_delete_is_safe_against_a_job_ending_at_the_same_moment(tmp_path):
    """The worker ends a job while a client deletes it as soon as it may: the delete either sees it
    active (409) or ended, never half of each; nothing is left on disk or listed after a restart."""
    store = JobStore(tmp_path, EventHub())
    for _ in range(30):
        job = store.create("sequence", 1, {"frames": [0]})
        store.set_state(job, "running")
        ender = threading.Thread(target=lambda j=job: store.set_state(j, "done", result={"frames": []}))
        ender.start()
        while True:
            try:
                store.delete(job.job_id)
                break
            except ApiError as exc:
                assert exc.status == 409, exc.message
        ender.join(10)
        assert not (tmp_path / job.job_id).exists()
    assert store.list() == []
    fresh = JobStore(tmp_path, EventHub())
    assert fresh.load() == [] and fresh.list() == []
    assert list(tmp_path.iterdir()) == []


def test_prune_keeps_the_newest_finished_and_never_an_active_job(tmp_path, caplog):
    store = JobStore(tmp_path, EventHub(), keep_jobs=1)
    queued = store.create("sequence", 1, {})
    running = store.create("invert", 5, {}, name="busy")
    store.set_state(running, "running")
    first = _finished(store)
    assert {j.job_id for j in store.list()} == {queued.job_id, running.job_id, first.job_id}  # 3 > N: 2 are active
    with caplog.at_level(logging.INFO, logger="viewneti.server"):
        second = _finished(store, "error")
    assert not (tmp_path / first.job_id).exists()
    assert {j.job_id for j in store.list()} == {queued.job_id, running.job_id, second.job_id}
    assert f"pruned 1 finished job(s) beyond the newest 1 (--keep-jobs): {first.job_id}" in caplog.text
    time.sleep(0.002)
    store.set_state(running, "cancelled")  # an active job that ends is the newest finished one
    assert {j.job_id for j in store.list()} == {queued.job_id, running.job_id}
    assert (tmp_path / queued.job_id / "job.json").is_file() and not (tmp_path / second.job_id).exists()


def test_a_job_that_ends_does_not_wait_for_the_pruned_files_to_be_removed(tmp_path, monkeypatch):
    """The worker prunes when a job ends; removing an old sequence's frames happens on another thread."""
    store = JobStore(tmp_path, EventHub(), keep_jobs=1)
    first = _finished(store)
    release, removing = threading.Event(), threading.Event()
    remove = JobStore._remove_folder

    def slow_remove(folder: Path) -> None:  # a sequence of thousands of frames
        removing.set()
        assert release.wait(30)
        remove(folder)

    monkeypatch.setattr(JobStore, "_remove_folder", staticmethod(slow_remove))
    ended = threading.Thread(target=_finished, args=(store,))
    ended.start()
    ended.join(10)
    assert not ended.is_alive(), "set_state waited for the removal of a pruned job's files"
    assert removing.wait(10) and not (tmp_path / first.job_id).exists()  # gone from the store already
    assert [p.name for p in tmp_path.glob(DELETING_PREFIX + "*")] == [DELETING_PREFIX + first.job_id]
    assert not store.wait_for_removals(timeout=0.05)
    release.set()
    assert store.wait_for_removals(timeout=10)
    assert not list(tmp_path.glob(DELETING_PREFIX + "*"))


def test_startup_prunes_by_updated_then_created_and_removes_leftover_deletes(tmp_path, caplog):
    jobs = tmp_path / "jobs"
    ids = {k: (c * 32) for k, c in zip("abcde", "abcde")}
    _write_record(jobs, ids["a"], "done", "2024-01-01T00:00:00.000+00:00", "2024-01-01T00:00:01.000+00:00")
    _write_record(jobs, ids["b"], "error", "2024-01-01T00:00:00.000+00:00", "2024-01-03T00:00:00.000+00:00")
    _write_record(jobs, ids["c"], "done", "2024-01-01T00:00:04.000+00:00", "2024-01-02T00:00:00.000+00:00")
    _write_record(jobs, ids["d"], "cancelled", "2024-01-01T00:00:05.000+00:00", "2024-01-02T00:00:00.000+00:00")
    # queued when the server died: marked interrupted now, so the newest finished job
    _write_record(jobs, ids["e"], "queued", "2023-12-31T00:00:00.000+00:00", "2023-12-31T00:00:00.000+00:00")
    leftover = jobs / f"{DELETING_PREFIX}{'f' * 32}"  # a crash between the rename and the rmtree
    leftover.mkdir()
    (leftover / "job.json").write_text("{}")
    (leftover / frame_filename(3)).write_bytes(b"png")
    (jobs / f"{DELETING_PREFIX}x").mkdir()
    store = JobStore(jobs, EventHub(), keep_jobs=3)
    with caplog.at_level(logging.INFO, logger="viewneti.server"):
        assert store.load() == [ids["e"]]
    kept = {j.job_id for j in store.list()}
    assert kept == {ids["e"], ids["b"], ids["d"]}, kept  # c and d: same updated, d created later
    assert sorted(p.name for p in jobs.iterdir()) == sorted(kept)  # leftovers and pruned folders gone
    assert f"pruned 2 finished job(s) beyond the newest 3 (--keep-jobs): {ids['c']}, {ids['a']}" in caplog.text


def test_startup_removes_the_folder_of_a_job_whose_creation_a_crash_cut_short(tmp_path, caplog):
    jobs = tmp_path / "jobs"
    kept_id, cut_id = "1" * 32, "2" * 32
    _write_record(jobs, kept_id, "done", "2024-01-01T00:00:00.000+00:00", "2024-01-01T00:00:01.000+00:00")
    cut = jobs / cut_id  # mkdir, request and a reference written, killed before the record was saved
    cut.mkdir()
    (cut / "request.json").write_text("{}")
    (cut / "reference_0.bin").write_bytes(b"x" * 1000)
    (jobs / "notes").mkdir()  # not a job id: not the server's to remove
    store = JobStore(jobs, EventHub())
    with caplog.at_level(logging.INFO, logger="viewneti.server"):
        assert store.load() == []
    assert [j.job_id for j in store.list()] == [kept_id]
    assert sorted(p.name for p in jobs.iterdir()) == sorted([kept_id, "notes"])
    assert f"removing {cut}: a job whose creation a crash cut short" in caplog.text


def test_keep_jobs_option_defaults_to_the_config_and_refuses_zero(tmp_path):
    from server.__main__ import build_parser, config_from_args

    parser = build_parser()
    assert parser.parse_args([]).keep_jobs == ServerConfig.keep_jobs
    config = config_from_args(parser.parse_args(["--keep-jobs", "3", "--data-dir", str(tmp_path)]))
    assert config.keep_jobs == 3
    with pytest.raises(SystemExit, match=f"--keep-jobs must be at least {MIN_KEEP_JOBS}, got 0"):
        config_from_args(parser.parse_args(["--keep-jobs", "0", "--data-dir", str(tmp_path)]))
    with pytest.raises(ValueError, match="keep_jobs"):
        JobStore(tmp_path, EventHub(), keep_jobs=MIN_KEEP_JOBS - 1)
    # the docs quote the default: they must say the config's value
    for doc in ("server/API.md", "README.md"):
        quoted = re.findall(r"--keep-jobs[^()]{0,40}\(default (\d+)", (REPO / doc).read_text())
        assert quoted and set(quoted) == {str(ServerConfig.keep_jobs)}, (doc, quoted)


# -- the HTTP contract (the session server: the real engine) ------------------------------------------------
def test_delete_a_finished_sequence_removes_its_record_and_frames(server, client):
    r = client.post("/v1/jobs/sequence", json={"cameras": [wire_camera(), wire_camera(azimuth=60)], "steps": STEPS})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert wait_job(client, job_id)["state"] == "done"
    folder = server.data_dir / "jobs" / job_id
    assert sorted(p.name for p in folder.glob("frame_*.png")) == [frame_filename(0), frame_filename(1)]
    # a web page cannot delete it: the same refusal as every route (test_server_security.py)
    refused = httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "Origin" in refused.json()["error"], refused.text
    assert folder.is_dir()
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 204 and r.content == b"", r.text
    assert not folder.exists() and not list(folder.parent.glob(DELETING_PREFIX + "*"))
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/frames/0"):
        gone = client.get(path)
        assert gone.status_code == 404 and f"no job with id {job_id!r}" in gone.json()["error"], (path, gone.text)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert job_id not in [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]]


def test_deleting_an_active_job_is_refused_until_it_ends(client):
    body = {"name": f"busy{time.monotonic_ns()}", "images": [png_b64()], "cameras": [wire_camera()]}
    r = client.post("/v1/jobs/invert", json={**body, "steps": LONG_INVERT})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    try:
        wait_job(client, job_id, states=("running",), timeout=120)
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 409, r.text
        assert f"POST /v1/jobs/{job_id}/cancel" in r.json()["error"] and "running" in r.json()["error"]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
    finally:
        client.post(f"/v1/jobs/{job_id}/cancel")
    assert wait_job(client, job_id)["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_deleting_an_unknown_job_is_404(client):
    for job_id in ("0" * 32, "not-a-job"):
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 404, r.text
        assert r.json()["error"] == client.get(f"/v1/jobs/{job_id}").json()["error"]
        assert "GET /v1/jobs lists the jobs" in r.json()["error"]


def test_a_method_the_job_path_does_not_take_names_both_of_its_methods(client):
    """GET and DELETE /v1/jobs/{id} are two routes; a 405 lists both (RFC 9110, Schemathesis' ST205)."""
    for method in ("OPTIONS", "PUT", "POST"):
        r = client.request(method, f"/v1/jobs/{'0' * 32}")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET", (method, r.headers, r.text)
        assert r.json()["error"]
    r = client.request("PUT", "/v1/jobs")  # a path with one route: its own method, as before
    assert r.status_code == 405 and r.headers["allow"] == "GET", r.headers


# -- retention on real servers (the fake engine: fast jobs) -------------------------------------------------
def _sequence(c: httpx.Client) -> str:
    r = c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": 2})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert wait_job(c, job_id, timeout=60)["state"] == "done"
    return job_id


def _listed_soon(c: httpx.Client, expected: set[str], timeout: float = 10.0) -> None:
    """GET /v1/jobs lists exactly ``expected`` (the prune runs right after the job's end is reported)."""
    deadline = time.monotonic() + timeout
    while (listed := {j["job_id"] for j in c.get("/v1/jobs").json()["jobs"]}) != expected:
        assert time.monotonic() < deadline, (listed, expected)
        time.sleep(0.05)


def test_keep_jobs_deletes_the_oldest_finished_job(make_server):
    srv = make_server(args=["--keep-jobs", "2"], fake=True).start()
    jobs = srv.data_dir / "jobs"
    with srv.client() as c:
        first, second, third = _sequence(c), _sequence(c), _sequence(c)
        _listed_soon(c, {second, third})
        assert not (jobs / first).exists() and c.get(f"/v1/jobs/{first}/frames/0").status_code == 404
        for job_id in (second, third):
            assert (jobs / job_id / frame_filename(0)).is_file()
            assert c.get(f"/v1/jobs/{job_id}/frames/0").status_code == 200
    assert f"pruned 1 finished job(s) beyond the newest 2 (--keep-jobs): {first}" in srv.log_tail(400)


def test_keep_jobs_never_prunes_active_jobs(make_server):
    srv = make_server(args=["--keep-jobs", "1"], fake=True).start()
    with srv.client() as c:
        done = _sequence(c)
        r = c.post(
            "/v1/jobs/invert",
            json={"name": "slow", "images": [png_b64()], "cameras": [wire_camera()], "steps": LONG_INVERT},
        )
        assert r.status_code == 202, r.text
        running = r.json()["job_id"]
        wait_job(c, running, states=("running",), timeout=60)
        queued = [c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": 2}).json()["job_id"]]
        queued.append(c.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": 2}).json()["job_id"])
        _listed_soon(c, {done, running, *queued})  # 4 jobs, N = 1: the three active ones count for nothing
        assert c.post(f"/v1/jobs/{queued[0]}/cancel").json()["state"] == "cancelled"
        _listed_soon(c, {queued[0], running, queued[1]})  # the cancelled one is the newest finished: done goes
        assert c.get(f"/v1/jobs/{running}").json()["state"] == "running"
        assert c.get(f"/v1/jobs/{queued[1]}").json()["state"] == "queued"
        c.post(f"/v1/jobs/{running}/cancel")
        assert wait_job(c, queued[1], timeout=60)["state"] == "done"
        _listed_soon(c, {queued[1]})
    assert sorted(p.name for p in (srv.data_dir / "jobs").iterdir()) == [queued[1]]


def test_startup_prunes_beyond_keep_jobs_and_removes_leftover_deletes(make_server, tmp_path):
    data = tmp_path / "data"
    srv = make_server(data, fake=True).start()
    with srv.client() as c:
        ids = [_sequence(c) for _ in range(3)]
    srv.stop()
    leftover = data / "jobs" / f"{DELETING_PREFIX}x"
    leftover.mkdir()
    (leftover / frame_filename(0)).write_bytes(b"png")
    srv2 = make_server(data, args=["--keep-jobs", "1"], fake=True).start()
    with srv2.client() as c:
        assert [j["job_id"] for j in c.get("/v1/jobs").json()["jobs"]] == [ids[2]]
        assert c.get(f"/v1/jobs/{ids[2]}/frames/0").status_code == 200
        assert c.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert sorted(p.name for p in (data / "jobs").iterdir()) == [ids[2]]
    assert f"pruned 2 finished job(s) beyond the newest 1 (--keep-jobs): {ids[1]}, {ids[0]}" in srv2.log_tail(400)
