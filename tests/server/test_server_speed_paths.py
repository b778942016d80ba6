"""The server's speed paths (issue 19), on the CPU: the client picks the image format (Accept), sequence
jobs render several frames per engine call and store them off the worker thread, and a compiled engine
compiles render shapes in a background thread that yields to renders. GPU timings: benchmarks/server_gpu.py."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image
from srvutil import ServerProcess, png_array, read_events, render_body, wire_camera

from server.compiler import BackgroundCompiler
from server.images import JPEG, PNG, encode_png_stored, negotiate_image_type
from viewneti_backend.render_shape import RenderShape


# -- image formats ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, PNG),
        ("", PNG),
        ("*/*", PNG),
        ("image/*", PNG),
        ("image/png", PNG),
        ("image/jpeg", JPEG),
        ("image/jpeg, */*;q=0.1", JPEG),
        ("image/png;q=0.5, image/jpeg", JPEG),
        ("image/jpeg;q=0, */*", PNG),
        ("image/webp, image/jpeg;q=0.8", JPEG),
        ("text/html, application/json", PNG),  # neither offered: the default, not 406
        ("image/jpeg;q=bogus, image/png", PNG),
    ],
)
def test_accept_negotiation(accept, expected):
    assert negotiate_image_type(accept) == expected


def test_stored_png_is_lossless_and_deterministic():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    data = encode_png_stored(Image.fromarray(arr))
    assert data == encode_png_stored(Image.fromarray(arr.copy()))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (80, 48) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), arr)
    assert len(data) > arr.size  # stored, not compressed: the point is ~1 ms to encode


def test_render_in_the_format_the_client_asks_for(client):
    body = render_body(seed=5)
    png = client.post("/v1/render", json=body, headers={"Accept": "image/png"})
    jpg = client.post("/v1/render", json=body, headers={"Accept": "image/jpeg"})
    assert png.status_code == 200 and jpg.status_code == 200, (png.text, jpg.text)
    assert png.headers["content-type"] == "image/png" and jpg.headers["content-type"] == "image/jpeg"
    assert "accept" in png.headers["vary"].lower()
    with Image.open(io.BytesIO(jpg.content)) as im:
        assert im.format == "JPEG" and im.size == (body["camera"]["width"], body["camera"]["height"])
        approx = np.asarray(im.convert("RGB"), dtype=np.int16)
    exact = png_array(png.content).astype(np.int16)
    assert np.abs(approx - exact).mean() < 12  # the same view, lossy
    again = client.post("/v1/render", json=body, headers={"Accept": "image/jpeg"})
    assert again.content == jpg.content  # bytes stay deterministic per format
    timings = json.loads(jpg.headers["x-timings-ms"])
    assert timings["image"] >= 0 and "png" not in timings


def test_compile_route_on_an_uncompiled_engine(client):
    r = client.post("/v1/compile", json={"width": 64, "height": 48, "views": 2})
    assert r.status_code == 202, r.text
    assert r.json() == {"shape": "64x48x2", "status": "eager"}
    bad = client.post("/v1/compile", json={"width": 63, "height": 48})
    assert 400 <= bad.status_code < 500 and "multiple of 8" in bad.text
    assert client.get("/v1/health").json()["compiled_shapes"] is None


# -- sequences: several frames per engine call ------------------------------------------------------------
def test_sequence_frames_batched_per_engine_call(tmp_path):
    env = {
        "VIEWNETI_FAKE_SEQUENCE_BATCH": "3",
        "VIEWNETI_FAKE_STEP_S": "0.005",
    }
    srv = ServerProcess(tmp_path / "data", env=env, fake=True).start()
    try:
        with srv.client() as c:
            assert c.get("/v1/health").json()["sequence_batch"] == 3
            cams = [wire_camera(azimuth=15.0 * k) for k in range(7)]
            frames = [100 + k for k in range(7)]
            r = c.post("/v1/jobs/sequence", json={"cameras": cams, "frames": frames, "seed": 2, "steps": 2})
            assert r.status_code == 202, r.text
            events = read_events(c, r.json()["job_id"])
            assert events[-1][0] == "done", events
            assert [d["frame"] for n, d in events if n == "frame"] == frames  # in order, each once
            progress = [d["step"] for n, d in events if n == "progress"]
            assert progress == sorted(progress) and progress[-1] == 7
            for f, cam in zip(frames, cams):  # frame k is camera k's view, as one-by-one renders give it
                got = c.get(f"/v1/jobs/{r.json()['job_id']}/frames/{f}")
                one = c.post("/v1/render", json=render_body(camera=cam, seed=2, steps=2))
                assert np.array_equal(png_array(got.content), png_array(one.content))
    finally:
        srv.stop()


# -- background compilation ---------------------------------------------------------------------------------
class _CompilingEngine:
    """Stands in for a compiled Engine: compile_shape is a stretch of pure-Python work, one 'step' a call."""

    def __init__(self, fail: set[RenderShape] | None = None) -> None:
        self.ready_shapes: set[RenderShape] = set()
        self.idle = threading.Event()
        self.idle.set()
        self.progress = 0
        self.fail = fail or set()

    def _step(self) -> None:
        self.progress += 1
        time.sleep(0.001)

    def compile_shape(self, shape: RenderShape) -> float:
        for _ in range(200):
            self._step()
        if shape in self.fail:
            raise RuntimeError("inductor said no")
        self.ready_shapes.add(shape)
        return 0.0


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_background_compiler_queues_each_shape_once_and_reports():
    bad = RenderShape(1, 32, 32)
    engine = _CompilingEngine(fail={bad})
    compiler = BackgroundCompiler(engine)
    shapes = [RenderShape(1, 64, 64), RenderShape(4, 64, 48)]
    compiler.start(shapes)
    assert compiler.request(shapes[0]) is False  # already queued
    assert compiler.request(bad) is True
    _wait(lambda: len(engine.ready_shapes) == 2 and "32x32" in compiler.status()["failed"])
    status = compiler.status()
    assert status["ready"] == ["64x48x4", "64x64"] and status["queued"] == [] and status["compiling"] is None
    assert "inductor said no" in status["failed"]["32x32"]
    assert compiler.request(shapes[1]) is False and compiler.request(bad) is False  # never retried
    compiler.stop()


def test_background_compiler_can_be_limited_to_the_warmup_list():
    engine = _CompilingEngine()
    compiler = BackgroundCompiler(engine, compile_new_shapes=False)
    compiler.start([])
    assert compiler.request(RenderShape(1, 64, 64)) is False  # a new request shape: stays eager
    assert compiler.request(RenderShape(1, 64, 64), warmup=True) is True  # asked for explicitly
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    compiler.stop()


def test_background_compile_pauses_while_the_engine_renders():
    engine = _CompilingEngine()
    compiler = BackgroundCompiler(engine)
    engine.idle.clear()  # a render is running
    compiler.start([RenderShape(1, 64, 64)])
    _wait(lambda: compiler.status()["compiling"] == "64x64")
    time.sleep(0.3)
    paused_at = engine.progress
    time.sleep(0.3)
    assert engine.progress == paused_at <= 2  # no progress at all while the render runs
    engine.idle.set()
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    assert engine.progress == 200
    compiler.stop()


class _FakeHelper:
    """Stands in for a compile helper process: warm() blocks until released, like a minute of compiling."""

    def __init__(self, log: list, fail: bool = False) -> None:
        self.log, self.fail, self.closed = log, fail, False
        self.release = threading.Event()

    def warm(self, label: str) -> dict:
        self.log.append(("warm-start", label))
        assert self.release.wait(10)
        self.log.append(("warm-done", label))
        if self.fail:
            raise RuntimeError("helper died")
        return {"label": label, "seconds": 1.5, "load_s": 0.5}

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


class _WarmableEngine(_CompilingEngine):
    def __init__(self, fail_helpers: bool = False) -> None:
        super().__init__()
        self.helpers: list[_FakeHelper] = []
        self.log: list = []
        self.fail_helpers = fail_helpers

    def compile_warmer(self) -> _FakeHelper:
        helper = _FakeHelper(self.log, self.fail_helpers)
        self.helpers.append(helper)
        return helper

    def compile_shape(self, shape: RenderShape, cache_stats: dict | None = None) -> float:
        self.log.append(("server", shape.label(), cache_stats is not None))
        return super().compile_shape(shape)


def test_helper_processes_compile_shapes_ahead_several_at_once():
    """Two helpers take the first two queued shapes at once; the server compiles a shape only after its
    helper finished it (from the cache then); a helper that fails leaves the shape to the server."""
    engine = _WarmableEngine()
    compiler = BackgroundCompiler(engine, processes=2)
    assert len(engine.helpers) == 2
    a, b, c = RenderShape(1, 64, 64), RenderShape(1, 64, 48), RenderShape(4, 64, 48)
    compiler.start([a, b, c])
    _wait(lambda: sum(1 for e in engine.log if e[0] == "warm-start") == 2)  # both helpers busy at once
    assert {e[1] for e in engine.log if e[0] == "warm-start"} == {"64x64", "64x48"}
    time.sleep(0.2)
    assert not any(e[0] == "server" for e in engine.log)  # waits for its helper
    assert compiler.status()["compiling"] == "64x64" and compiler.status()["helper_processes"] == 2
    for h in engine.helpers:
        h.release.set()
    _wait(lambda: len(engine.ready_shapes) == 3)
    for shape in (a, b, c):
        label = shape.label()
        done = engine.log.index(("warm-done", label))
        assert engine.log.index(("server", label, True)) > done
    compiler.stop()
    assert all(h.closed for h in engine.helpers)


def test_a_failing_helper_leaves_the_shape_to_the_server():
    engine = _WarmableEngine(fail_helpers=True)
    compiler = BackgroundCompiler(engine, processes=1)
    engine.helpers[0].release.set()
    compiler.start([RenderShape(1, 64, 64)])
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    assert compiler.status()["failed"] == {}
    compiler.stop()


def test_no_helpers_for_engines_that_cannot_make_them():
    engine = _CompilingEngine()  # no compile_warmer: e.g. a test engine
    compiler = BackgroundCompiler(engine, processes=2)
    compiler.start([RenderShape(1, 64, 64)])
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    assert compiler.status()["helper_processes"] == 0
    compiler.stop()


def test_an_idle_helper_exits_and_comes_back_for_the_next_shape():
    """A helper holds a copy of the model: with nothing to compile for helper_idle_s it is closed, and
    the next new shape still goes through it (WarmProcess starts again on use)."""
    engine = _WarmableEngine()
    compiler = BackgroundCompiler(engine, processes=1, helper_idle_s=0.2)
    helper = engine.helpers[0]
    helper.release.set()
    compiler.start([RenderShape(1, 64, 64)])
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    _wait(lambda: helper.closed)
    helper.closed = False
    assert compiler.request(RenderShape(1, 48, 48))
    _wait(lambda: RenderShape(1, 48, 48) in engine.ready_shapes)
    assert ("warm-done", "48x48") in engine.log and ("server", "48x48", True) in engine.log
    compiler.stop()


def test_helpers_compile_training_sizes_after_the_warmup_shapes():
    """Training sizes go to the helpers only, after the warm-up shapes, and never to compile_shape (the
    first inversion compiles from the cache); health's training_ahead follows them."""
    from viewneti_backend.compile_warmer import TrainingSize

    engine = _WarmableEngine()
    compiler = BackgroundCompiler(engine, processes=1)
    helper = engine.helpers[0]
    compiler.start([RenderShape(1, 64, 64)], training=[TrainingSize(64, 48)])
    assert compiler.status()["training_ahead"] == {"64x48": "queued"}
    helper.release.set()
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "done"})
    warmed = [label for what, label, *_ in engine.log if what == "warm-start"]
    assert warmed == ["64x64", "train:64x48"]
    assert [e[1] for e in engine.log if e[0] == "server"] == ["64x64"]
    compiler.stop()


def test_a_training_size_a_helper_cannot_compile_is_reported():
    from viewneti_backend.compile_warmer import TrainingSize

    engine = _WarmableEngine(fail_helpers=True)
    compiler = BackgroundCompiler(engine, processes=1)
    engine.helpers[0].release.set()
    compiler.start([], training=[TrainingSize(64, 48)])
    _wait(lambda: compiler.status()["training_ahead"]["64x48"].startswith("failed: helper died"))
    compiler.stop()


def test_without_helpers_no_training_size_is_compiled_ahead():
    from viewneti_backend.compile_warmer import TrainingSize

    engine = _CompilingEngine()
    compiler = BackgroundCompiler(engine, processes=0)
    compiler.start([RenderShape(1, 64, 64)], training=[TrainingSize(64, 48)])
    _wait(lambda: RenderShape(1, 64, 64) in engine.ready_shapes)
    assert compiler.status()["training_ahead"] == {}
    compiler.stop()


def test_the_worker_has_the_engines_training_sizes_compiled_ahead(tmp_path):
    """A compiled engine's training_warmup_sizes reach the helpers once the model is ready; health's
    compiled_shapes says how far they are."""
    from fake_engine import FakeEngine

    from server.events import EventHub
    from server.jobs import JobStore
    from server.worker import Worker

    class CompiledFakeEngine(FakeEngine):
        compiled = True

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.ready_shapes: set = set()
            self.idle = threading.Event()
            self.idle.set()
            self.log: list = []

        def default_warmup_shapes(self) -> list:
            return [RenderShape(1, 32, 32)]

        def compile_shape(self, shape, cache_stats=None) -> float:
            self.ready_shapes.add(shape)
            return 0.0

        def training_warmup_sizes(self) -> list:
            return [(32, 24)]

        def compile_warmer(self) -> _FakeHelper:
            helper = _FakeHelper(self.log)
            helper.release.set()
            return helper

    engine = CompiledFakeEngine(tmp_path / "lib", step_s=0.0)
    w = Worker(lambda: engine, JobStore(tmp_path / "jobs", EventHub()), compile_processes=1)
    w.start()
    try:
        _wait(lambda: (w.compile_status() or {}).get("training_ahead") == {"32x24": "done"})
        assert [label for what, label in engine.log if what == "warm-start"] == ["32x32", "train:32x24"]
    finally:
        w.stop()


class _PausableHelper(_FakeHelper):
    """A fake helper that records pause/resume as a WarmProcess would do them (SIGSTOP/SIGCONT)."""

    def __init__(self, log: list) -> None:
        super().__init__(log)
        self.stopped = False

    def pause(self) -> bool:
        if self.stopped:
            return False
        self.stopped = True
        self.log.append(("pause",))
        return True

    def resume(self) -> None:
        if self.stopped:
            self.stopped = False
            self.log.append(("resume",))


class _RenderingEngine(_WarmableEngine):
    def __init__(self) -> None:
        super().__init__()
        self.rendering = threading.Event()
        self.pausable: list[_PausableHelper] = []

    def compile_warmer(self) -> _PausableHelper:
        helper = _PausableHelper(self.log)
        self.helpers.append(helper)
        self.pausable.append(helper)
        return helper

    def render_begins(self) -> None:
        self.idle.clear()
        self.rendering.set()

    def render_ends(self) -> None:
        self.rendering.clear()
        self.idle.set()


def test_training_ahead_helpers_stop_while_the_engine_renders():
    """A helper compiling training graphs is stopped while a render runs (health: paused) and goes on once
    no render has run for resume_after_idle_s; a helper compiling a render shape is never stopped."""
    from viewneti_backend.compile_warmer import TrainingSize

    engine = _RenderingEngine()
    compiler = BackgroundCompiler(engine, processes=2, pause_training_ahead=True, resume_after_idle_s=0.3)
    compiler.start([RenderShape(1, 64, 64)], training=[TrainingSize(64, 48)])
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "compiling"})
    _wait(lambda: sum(1 for e in engine.log if e[0] == "warm-start") == 2)  # one on 64x64, one training
    engine.render_begins()
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "paused"})
    assert sum(h.stopped for h in engine.pausable) == 1  # the training one only
    engine.render_ends()
    time.sleep(0.1)
    engine.render_begins()  # the next render within resume_after_idle_s: still paused
    time.sleep(0.4)
    assert compiler.status()["training_ahead"] == {"64x48": "paused"}
    engine.render_ends()
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "compiling"})
    assert not any(h.stopped for h in engine.pausable)
    assert engine.log.count(("pause",)) == 1 and engine.log.count(("resume",)) == 1
    for h in engine.helpers:
        h.release.set()
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "done"})
    engine.render_begins()  # nothing compiles training graphs now: nothing to stop
    time.sleep(0.4)
    engine.render_ends()
    assert engine.log.count(("pause",)) == 1
    compiler.stop()


def test_training_ahead_helpers_can_be_left_running_beside_renders(monkeypatch):
    from server.compiler import PAUSE_TRAINING_AHEAD_ENV, pause_training_ahead_requested
    from viewneti_backend.compile_warmer import TrainingSize

    monkeypatch.setenv(PAUSE_TRAINING_AHEAD_ENV, "0")
    assert not pause_training_ahead_requested()
    engine = _RenderingEngine()
    compiler = BackgroundCompiler(engine, processes=1, resume_after_idle_s=0.1)  # the switch: off
    compiler.start([], training=[TrainingSize(64, 48)])
    _wait(lambda: compiler.status()["training_ahead"] == {"64x48": "compiling"})
    engine.render_begins()
    time.sleep(0.5)
    assert compiler.status()["training_ahead"] == {"64x48": "compiling"} and ("pause",) not in engine.log
    engine.render_ends()
    engine.helpers[0].release.set()
    compiler.stop()
    for value, on in (("", True), ("1", True), (" 0 ", False)):
        monkeypatch.setenv(PAUSE_TRAINING_AHEAD_ENV, value)
        assert pause_training_ahead_requested() is on
    monkeypatch.setenv(PAUSE_TRAINING_AHEAD_ENV, "no")
    with pytest.raises(ValueError, match="VIEWNETI_PAUSE_TRAINING_AHEAD='no': set it to 1"):
        pause_training_ahead_requested()
