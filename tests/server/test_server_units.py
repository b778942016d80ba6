"""Fast in-process tests of the server's parts (no subprocess, fake engine)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from PIL import Image

from server.config import ServerConfig, is_loopback_host
from server.errors import ApiError, Superseded
from server.events import EventHub, job_event_stream
from server.images import decode_base64_image
from server.jobs import InvertSpec, JobStore
from server.worker import RenderTask, Worker
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.progress import Progress


def _encode(fmt: str, size=(40, 30), mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


LIMITS = dict(max_bytes=1024 * 1024, max_pixels=4096 * 4096)


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"), ("WEBP", "RGB")])
def test_decode_accepts_png_jpeg_webp(fmt, mode):
    im = decode_base64_image(_encode(fmt, mode=mode), what="img", **LIMITS)
    assert im.mode == ("RGBA" if mode == "RGBA" else "RGB") and im.size == (40, 30)  # alpha = the object's mask


def test_decode_accepts_data_url():
    im = decode_base64_image("data:image/png;base64," + _encode("PNG"), what="img", **LIMITS)
    assert im.size == (40, 30)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_decode_rejects_other_formats(fmt):
    with pytest.raises(ApiError) as e:
        decode_base64_image(_encode(fmt), what="img", **LIMITS)
    assert e.value.status == 400 and "PNG, JPEG or WebP" in e.value.message


def test_decode_limits():
    with pytest.raises(ApiError) as e:
        decode_base64_image(
            _encode("PNG", size=(300, 10)), what="img", max_bytes=LIMITS["max_bytes"], max_pixels=256 * 256
        )
    assert e.value.status == 413
    big = base64.b64encode(b"\0" * 2000).decode()
    with pytest.raises(ApiError) as e:
        decode_base64_image(big, what="img", max_bytes=1000, max_pixels=100)
    assert e.value.status == 413
    with pytest.raises(ApiError) as e:
        decode_base64_image("%%%", what="img", **LIMITS)
    assert e.value.status == 400 and "base64" in e.value.message


def test_loopback_detection():
    for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback_host(h), h
    for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", ""):
        assert not is_loopback_host(h), h
    with pytest.raises(SystemExit, match="token"):
        ServerConfig(host="0.0.0.0").check_bind()
    ServerConfig(host="0.0.0.0", token="t").check_bind()


def test_store_marks_active_jobs_interrupted_and_skips_corrupt(tmp_path):
    store = JobStore(tmp_path, EventHub())
    a = store.create("sequence", 3, {"x": 1})
    b = store.create("invert", 5, {"x": 2}, name="n")
    c = store.create("sequence", 1, {"x": 3})
    store.set_state(b, "running")
    store.set_state(c, "done", result={"frames": [0]})
    (tmp_path / ("0" * 32)).mkdir()
    (tmp_path / ("0" * 32) / "job.json").write_text("{not json")
    (tmp_path / a.job_id / ".job.json.123.tmp").write_text("half")
    store2 = JobStore(tmp_path, EventHub())
    assert sorted(store2.load()) == sorted([a.job_id, b.job_id])
    assert store2.get(a.job_id).state == "interrupted" and store2.get(b.job_id).name == "n"
    assert store2.get(c.job_id).state == "done"
    assert not list(tmp_path.rglob("*.tmp"))
    on_disk = json.loads((tmp_path / b.job_id / "job.json").read_text())
    assert on_disk["state"] == "interrupted" and on_disk["error"]
    with pytest.raises(ApiError) as e:
        store2.get("../etc")
    assert e.value.status == 404


def test_event_stream_replays_then_follows(tmp_path):
    async def run():
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        store = JobStore(tmp_path, hub)
        job = store.create("sequence", 2, {})
        out = []

        async def consume():
            async for chunk in job_event_stream(job.job_id, hub, lambda: store.snapshot_events(job), keepalive_s=0.05):
                out.append(chunk)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)

        def work():
            store.set_state(job, "running")
            store.frame_done(job, 0, 7, b"png", eta_s=1.0)
            store.frame_done(job, 1, 8, b"png", eta_s=0.0)
            store.set_state(job, "done", result={"frames": [7, 8]})

        await asyncio.to_thread(work)
        await asyncio.wait_for(task, 5)
        events = [c.split("\n")[0][7:] for c in out if c.startswith("event:")]
        assert events == ["progress", "frame", "progress", "frame", "progress", "done"], events
        assert hub.subscriber_count(job.job_id) == 0

    asyncio.run(run())


def _cam():
    return Camera(orbit_pose(10, 10, 4), 40.0, 32, 32)


class CompilingEngine(FakeEngine):
    """Like a compiled Engine's first inversion at a size: a step-0 "compiling" event before training."""

    def invert(self, images, cameras, name, steps, *, on_progress=None, **kw):
        if on_progress:
            on_progress(Progress(step=0, total=steps, phase="compiling"))
        return super().invert(images, cameras, name, steps, on_progress=on_progress, **kw)


def test_inversion_phase_reaches_the_event_stream_and_the_job_record(tmp_path):
    """The step-0 "compiling" event is not dropped as a repeat of the queued step 0 by a client that
    follows the job live; the job record keeps the last phase, on disk too."""

    async def run():
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        store = JobStore(tmp_path / "jobs", hub)
        w = Worker(lambda: CompilingEngine(tmp_path / "lib", step_s=0.0), store)
        w.start()
        while w.state != "ready":
            await asyncio.sleep(0.01)
        job = store.create(
            "invert",
            3,
            {},
            name="phased",
            spec=InvertSpec(cameras=(_cam(),), seed=0, preview_every=0, max_pixels=64 * 64),
        )
        job.run.images = [Image.new("RGB", (32, 32))]  # decoded already (no spooled file to read)
        assert job.public()["phase"] is None
        out = []

        async def consume():
            async for chunk in job_event_stream(job.job_id, hub, lambda: store.snapshot_events(job), keepalive_s=0.05):
                if chunk.startswith("event: progress"):
                    out.append(json.loads(chunk.split("data: ", 1)[1]))

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)  # subscribed while the job is queued (its step 0 already seen)
        w.submit_job(job)
        await asyncio.wait_for(task, 5)
        w.stop()
        assert [(d["step"], d["phase"]) for d in out] == [
            (0, None),
            (0, "compiling"),
            (1, "training"),
            (2, "training"),
            (3, "training"),
        ], out
        assert out[1]["eta_s"] is None
        assert job.state == "done" and job.public()["phase"] == "training"
        assert json.loads((tmp_path / "jobs" / job.job_id / "job.json").read_text())["phase"] == "training"

    asyncio.run(run())


def test_job_records_without_phase_still_load(tmp_path):
    """Records written before jobs had a phase load with phase None (and are reported with it)."""
    from server.schemas import JobOut

    store = JobStore(tmp_path, EventHub())
    job = store.create("invert", 5, {}, name="old")
    store.set_state(job, "done", result={"name": "old"})
    rec = json.loads((tmp_path / job.job_id / "job.json").read_text())
    del rec["phase"]
    (tmp_path / job.job_id / "job.json").write_text(json.dumps(rec))
    store2 = JobStore(tmp_path, EventHub())
    store2.load()
    loaded = store2.get(job.job_id)
    assert loaded.state == "done" and loaded.phase is None
    assert JobOut.model_validate(loaded.public()).phase is None
    store2.progress(loaded, Progress(step=1, total=5, phase="training"))
    store2.progress(loaded, Progress(step=2, total=5))  # no phase given: the last one stays
    assert loaded.public()["phase"] == "training" and store2.snapshot_events(loaded)[0][1]["phase"] == "training"


def test_worker_supersedes_queued_and_in_flight(tmp_path):
    store = JobStore(tmp_path, EventHub())
    w = Worker(lambda: FakeEngine(tmp_path / "lib", step_s=0.01), store)
    w.start()
    while w.state != "ready":
        time.sleep(0.01)
    blocker = RenderTask([_cam()], None, 0, 50, 7.5, session="other")
    w.submit_render(blocker)
    time.sleep(0.05)
    tasks = [RenderTask([_cam()], None, i, 5, 7.5, session="s") for i in range(4)]
    for t in tasks:
        w.submit_render(t)
    for t in tasks[:3]:
        with pytest.raises(Superseded):
            t.future.result(5)
    assert tasks[3].future.result(10)[0].size == (32, 32)
    assert blocker.future.result(10)
    # in flight: cut at the next step
    long = RenderTask([_cam()], None, 0, 1000, 7.5, session="s")
    w.submit_render(long)
    time.sleep(0.1)
    t0 = time.monotonic()
    newer = RenderTask([_cam()], None, 0, 2, 7.5, session="s")
    w.submit_render(newer)
    with pytest.raises(Superseded):
        long.future.result(5)
    assert time.monotonic() - t0 < 1.0
    assert newer.future.result(5)
    w.stop()
    assert not w.is_alive()


def _app_client(tmp_path, factory):
    from fastapi.testclient import TestClient

    from server.app import create_app

    app = create_app(ServerConfig(data_dir=tmp_path), factory)
    return TestClient(app, base_url="http://127.0.0.1:7860")  # a Host the server accepts


def test_health_is_503_while_loading_and_after_a_failed_load(tmp_path):
    gate = threading.Event()

    def slow_factory():
        gate.wait(10)
        return FakeEngine(tmp_path / "objects", step_s=0.0)

    body = {"camera": {"camera_to_anchor": orbit_pose(0, 0, 4).tolist(), "width": 32, "height": 32}, "steps": 2}
    with _app_client(tmp_path / "a", slow_factory) as c:
        r = c.get("/v1/health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and "loading" in r.json()["error"]
        assert c.post("/v1/render", json=body).status_code == 503
        gate.set()
        deadline = time.monotonic() + 10
        while c.get("/v1/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/v1/health").json()["status"] == "ok"
        assert c.post("/v1/render", json=body).status_code == 200

    def broken_factory():
        raise FileNotFoundError("no model at /nowhere")

    with _app_client(tmp_path / "b", broken_factory) as c:
        deadline = time.monotonic() + 10
        while c.get("/v1/health").json().get("status") == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/v1/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "/nowhere" in r.json()["error"]
        r = c.post("/v1/render", json=body)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]


def test_unexpected_engine_error_is_a_500_without_traceback(tmp_path):
    class Broken(FakeEngine):
        def render(self, *a, **kw):
            raise RuntimeError("secret internal detail")

    body = {"camera": {"camera_to_anchor": orbit_pose(0, 0, 4).tolist(), "width": 32, "height": 32}, "steps": 2}
    from fastapi.testclient import TestClient

    from server.app import create_app

    app = create_app(ServerConfig(data_dir=tmp_path), lambda: Broken(tmp_path / "objects", step_s=0.0))
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:7860") as c:
        while c.get("/v1/health").status_code != 200:
            time.sleep(0.02)
        r = c.post("/v1/render", json=body, headers={"X-Request-Id": "boom-1"})
        assert r.status_code == 500
        assert "boom-1" in r.json()["error"] and "secret" not in r.text and "Traceback" not in r.text
        assert c.get("/v1/health").status_code == 200  # the worker survived


def test_compile_flag_reaches_the_engine_loader(tmp_path, monkeypatch):
    """--compile is parsed with the shared vocabulary and handed to the engine loader (injected here),
    and no environment variable can swap the loader of a real server."""
    from server.__main__ import build_parser, config_from_args, engine_factory_for

    seen = {}

    def recording_loader(**kwargs):
        seen.update(kwargs)
        return "engine"

    config = config_from_args(build_parser().parse_args(["--data-dir", str(tmp_path), "--compile", "off"]))
    assert config.compile == "off"
    assert engine_factory_for(config, load_engine=recording_loader)() == "engine" and seen["compile"] == "off"
    server_main = (Path(__file__).resolve().parents[2] / "server" / "__main__.py").read_text()
    assert "os.environ" not in server_main.split("def engine_factory_for", 1)[1].split("\ndef ", 1)[0]
    assert config_from_args(build_parser().parse_args(["--data-dir", str(tmp_path)])).compile == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compile", "fast"])


def test_rename_and_an_inversion_of_the_new_name_cannot_both_be_accepted(tmp_path):
    """The race: a rename's request is checked and queued behind other work; meanwhile an inversion
    of its new name is reserved (its handler ran before the rename happened). The rename, checked
    where it runs, under the store's reservations, refuses; before, both were accepted and the
    inversion failed at its end."""
    lib = tmp_path / "objects"
    lib.mkdir()
    (lib / "a.json").write_text(json.dumps({"name": "a", "builtin": False, "base_model": "fake-prior", "steps": 1}))
    busy, release = threading.Event(), threading.Event()

    def hold_the_worker(engine):
        busy.set()
        assert release.wait(10)

    with _app_client(tmp_path / "data", lambda: FakeEngine(lib, step_s=0.0)) as c:
        while c.get("/v1/health").status_code != 200:
            time.sleep(0.02)
        worker, store = c.app.state.worker, c.app.state.store  # pyright: ignore[reportAttributeAccessIssue]
        worker.submit_call(hold_the_worker)
        assert busy.wait(10)
        answers: list = []
        renaming = threading.Thread(
            target=lambda: answers.append(c.post("/v1/objects/a/rename", json={"new_name": "b"}))
        )
        renaming.start()
        deadline = time.monotonic() + 10
        while worker.queue_depth() < 2 and time.monotonic() < deadline:  # the rename is checked and queued
            time.sleep(0.01)
        assert worker.queue_depth() == 2
        job = store.create("invert", 5, {"kind": "invert", "name": "b"}, name="b")  # what the handler reserves
        release.set()
        renaming.join(10)
        (r,) = answers
        assert r.status_code == 409, r.text
        assert "an inversion for 'b' is queued or running" in r.json()["error"]
        assert [o["name"] for o in c.get("/v1/objects").json()["objects"] if not o["builtin"]] == ["a"]
        store.set_state(job, "cancelled")  # never submitted to the worker


def test_a_frame_of_a_job_deleted_while_it_is_asked_for_is_a_404(tmp_path):
    """The frame route found the file, then the job was deleted (or pruned) before its bytes were
    read: the client gets a 404 that says so, not a 500."""
    with _app_client(tmp_path / "data", lambda: FakeEngine(tmp_path / "objects", step_s=0.0)) as c:
        while c.get("/v1/health").status_code != 200:
            time.sleep(0.02)
        cam = {"camera_to_anchor": orbit_pose(0, 0, 4).tolist(), "width": 32, "height": 32}
        created = c.post("/v1/jobs/sequence", json={"cameras": [cam], "steps": 1, "seed": 0})
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        deadline = time.monotonic() + 10
        while c.get(f"/v1/jobs/{job_id}").json()["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get(f"/v1/jobs/{job_id}/frames/0").status_code == 200
        store = c.app.state.store  # pyright: ignore[reportAttributeAccessIssue]
        found = store.frame_path

        def found_then_deleted(job, frame):
            path = found(job, frame)
            store.delete(job.job_id)
            return path

        store.frame_path = found_then_deleted
        r = c.get(f"/v1/jobs/{job_id}/frames/0")
        assert r.status_code == 404, r.text
        assert f"job {job_id} was deleted" in r.json()["error"]


class PrimingEngine(FakeEngine):
    """Like an Engine on CUDA: has first-use work to do before serving (Engine.prime_first_use)."""

    primes_first_use = True

    def __init__(self, *args, fail: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail, self.primed = fail, []
        self.release = threading.Event()
        self.order: list[tuple] = []  # renders and prime_shapes calls, in the order the worker made them
        self.fail_shapes = threading.Event()

    def render(self, *args, **kwargs):
        self.order.append(("render",))
        return super().render(*args, **kwargs)

    def prime_shapes(self, shapes) -> float:
        self.order.append(("prime", [s.label() for s in shapes]))
        if self.fail_shapes.is_set():
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return 0.25

    def default_warmup_shapes(self):
        from viewneti_backend.render_shape import RenderShape

        return [RenderShape(1, 32, 32), RenderShape(4, 64, 48)]

    def prime_first_use(self, shapes, steps) -> float:
        self.primed.append(([s.label() for s in shapes], tuple(steps)))
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.5


@pytest.mark.parametrize("fail", [False, True])
def test_worker_does_the_first_renders_first_use_work_before_ready(tmp_path, caplog, monkeypatch, fail):
    """On CUDA the worker runs the engine's first-use work (text encoder at the live and normal step
    counts, uncompiled renders at the warm-up shapes) before it reports ready; --warmup names the
    shapes; a failure there is logged and the server serves anyway."""
    import server.worker

    encoded: list[tuple] = []
    real_encode = server.worker.encode_response_image
    monkeypatch.setattr(
        server.worker,
        "encode_response_image",
        lambda img, media_type: encoded.append((img.size, media_type)) or real_encode(img, media_type),
    )
    engine = PrimingEngine(tmp_path / "lib", step_s=0.0, fail=fail)
    w = Worker(lambda: engine, JobStore(tmp_path / "jobs", EventHub()), warmup=None, max_steps=4)
    with caplog.at_level("INFO", logger="viewneti.server"):
        w.start()
        deadline = time.monotonic() + 10
        while not engine.primed and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert w.state == "loading"  # not ready while it runs
        engine.release.set()
        while w.state != "ready" and time.monotonic() < deadline:
            time.sleep(0.01)
    assert w.state == "ready"
    # the model's live_steps 2 and steps 5, capped by the server's max steps (4)
    assert engine.primed == [(["32x32", "64x48x4"], (2, 4))]
    assert ("could not run the first renders' first-use work ahead" in caplog.text) == fail
    assert ("first-use work done ahead" in caplog.text) != fail
    # then the response encoders at those sizes, in every format a client may ask for
    sizes = [(32, 32), (32, 32), (64, 48), (64, 48)]
    assert encoded == ([] if fail else list(zip(sizes, ["image/png", "image/jpeg"] * 2)))
    assert w.submit_render(RenderTask([_cam()], None, 0, 2, 2.0)).result(10)[0].size == (32, 32)
    w.stop()
    engine2 = PrimingEngine(tmp_path / "lib2", step_s=0.0)
    engine2.release.set()
    w2 = Worker(lambda: engine2, JobStore(tmp_path / "jobs2", EventHub()), warmup=["48x48"], max_steps=4)
    w2.start()
    while w2.state != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine2.primed == [(["48x48"], (2, 4))]  # --warmup's shapes
    w2.stop()


def test_a_shape_asked_to_compile_gets_its_first_use_work_when_the_worker_has_nothing_else(tmp_path, caplog):
    """POST /v1/compile on CUDA (a priming engine): the worker runs Engine.prime_shapes for that shape
    once, at the lowest priority (a render queued meanwhile goes first), so that the first render there,
    uncompiled until the compile is done, does not pay the shape's first use. Warm-up shapes (primed
    before ready) and a shape asked for again are not primed again; a failure is logged and serving
    goes on. An engine with nothing to prime (the CPU) queues nothing."""
    from viewneti_backend.render_shape import RenderShape

    engine = PrimingEngine(tmp_path / "lib", step_s=0.0)
    engine.release.set()
    order = engine.order
    w = Worker(lambda: engine, JobStore(tmp_path / "jobs", EventHub()), warmup=None, max_steps=4)
    w.start()
    deadline = time.monotonic() + 10
    while w.state != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    gate = threading.Event()
    busy = w.submit_call(lambda e: gate.wait(10))
    with caplog.at_level("INFO", logger="viewneti.server"):
        assert w.request_compile(RenderShape(1, 48, 40)) is False  # no compiler here: nothing to compile
        w.request_compile(RenderShape(1, 48, 40))  # asked again
        w.request_compile(RenderShape(4, 64, 48))  # a warm-up shape: primed before ready
        rendered = w.submit_render(RenderTask([_cam()], None, 0, 2, 2.0))
        gate.set()
        assert busy.result(10) is True and rendered.result(10)[0].size == (32, 32)
        while len(order) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert order == [("render",), ("prime", ["48x40"])]
        while "first-use work of 48x40 done ahead" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "first-use work of 48x40 done ahead in 0.25s" in caplog.text
        engine.fail_shapes.set()
        w.request_compile(RenderShape(1, 56, 40))
        while "could not run the first-use work of 56x40" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "CUDA out of memory" in caplog.text
    assert w.submit_render(RenderTask([_cam()], None, 0, 2, 2.0)).result(10)[0].size == (32, 32)
    assert order[-2:] == [("prime", ["56x40"]), ("render",)]
    w.stop()

    plain = FakeEngine(tmp_path / "lib2", step_s=0.0)
    w2 = Worker(lambda: plain, JobStore(tmp_path / "jobs2", EventHub()), max_steps=4)
    w2.start()
    while w2.state != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w2.request_compile(RenderShape(1, 48, 40)) is False
    assert not w2._to_prime and not w2._primed  # nothing queued on an engine without first-use work
    w2.stop()
