"""Acceptance 3: live mode is debounced, latest-wins, and its tick never waits for a render."""

import threading
import time

import bpy
import pytest
from addon_testutil import addon_module, addon_prefs

from blender_addon.client import RenderResult, Superseded
from blender_addon.live import LiveController

pytestmark = pytest.mark.blender


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class RecordingRender:
    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay
        self.release = threading.Event()

    def __call__(self, request):
        self.calls.append(request)
        if self.delay:
            self.release.wait(self.delay)
        return f"image for {request}"


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_moves_within_debounce_window_send_one_request_for_the_last_pose():
    clock, render = FakeClock(), RecordingRender()
    live = LiveController(render, debounce=0.3, clock=clock)
    for i in range(5):  # five moves, 0.1 s apart: each restarts the quiet period
        live.observe(("pose", i), f"pose {i}")
        clock.now += 0.1
        assert live.tick() == []
    assert render.calls == []  # never still for 0.3 s yet
    clock.now += 0.25
    live.tick()
    live.join(2)
    assert render.calls == ["pose 4"]
    results = live.tick()
    assert [r.value for r in results] == ["image for pose 4"]
    # the camera stays put: nothing more is sent
    live.observe(("pose", 4), "pose 4")
    clock.now += 1
    assert live.tick() == [] and live.requests_sent == 1


def test_tick_returns_in_milliseconds_while_a_slow_render_runs():
    clock, render = FakeClock(), RecordingRender(delay=5.0)
    live = LiveController(render, debounce=0.0, clock=clock, max_in_flight=1)
    live.observe("a", "pose a")
    live.tick()
    wait_for(lambda: render.calls)
    worst = 0.0
    for i in range(50):  # the camera keeps moving while the render is in flight
        live.observe(("b", i), f"pose b{i}")
        start = time.perf_counter()
        assert live.tick() == []
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.005, f"tick took {worst * 1000:.1f} ms"
    assert render.calls == ["pose a"]  # at most one in flight; the newest pose waits
    render.release.set()
    wait_for(lambda: live.results_waiting == 1)
    assert [r.value for r in live.tick()] == ["image for pose a"]  # and starts the newest pose
    live.join(2)
    assert render.calls == ["pose a", "pose b49"]


def test_stale_and_superseded_results_are_dropped():
    clock = FakeClock()
    gate_a, gate_b = threading.Event(), threading.Event()

    def render(request):
        if request == "a":
            gate_a.wait(5)
            raise Superseded("superseded")
        gate_b.wait(5)
        return "B"

    live = LiveController(render, debounce=0.0, clock=clock, max_in_flight=2)
    live.observe(1, "a")
    live.tick()
    live.observe(2, "b")
    live.tick()  # second request in flight while the first runs: the server cuts the first
    gate_b.set()
    wait_for(lambda: live.results_waiting == 1)
    assert [r.value for r in live.tick()] == ["B"]
    gate_a.set()
    wait_for(lambda: live.results_waiting == 1)
    assert live.tick() == []  # superseded: neither shown nor reported
    assert not live.busy


def test_errors_are_reported_not_raised():
    def render(request):
        raise RuntimeError("boom")

    live = LiveController(render, debounce=0.0)
    live.observe(1, "x")
    live.tick()
    live.join(2)
    (result,) = live.tick()
    assert isinstance(result.error, RuntimeError)


def test_live_step_with_a_slow_backend_keeps_the_ui_tick_short(scene, monkeypatch):
    """The bpy shell: one tick reads the camera, starts the render off-thread, later shows it."""
    renders, connection = addon_module("renders"), addon_module("connection")
    from blender_addon.images import encode_png

    release = threading.Event()
    sent = []

    class SlowClient:
        def render(self, request, accept=None):
            assert accept is not None and accept.startswith("image/jpeg")  # live previews ask for JPEG
            sent.append(request)
            release.wait(10)
            w, h = request["camera"]["width"], request["camera"]["height"]
            return RenderResult(encode_png(w, h, bytes([200, 30, 30, 255]) * (w * h)), seed=request["seed"])

    monkeypatch.setattr(connection, "make_client", lambda context=None: SlowClient())
    addon_prefs().live_debounce = 0.0
    connection.apply_backend(scene, {"native_size": 64}, [], announce=False)  # as a health check would
    assert renders.start_live(scene) is None
    session = addon_module("session")
    assert session.SESSION.live is not None
    try:
        camera = scene.camera
        renders.live_step()  # observes the pose and starts the render
        wait_for(lambda: sent)
        worst = 0.0
        for _ in range(20):
            camera.location.x += 0.05
            bpy.context.view_layer.update()
            start = time.perf_counter()
            renders.live_step()
            worst = max(worst, time.perf_counter() - start)
        assert worst < 0.05, f"live tick took {worst * 1000:.1f} ms"
        release.set()
        wait_for(lambda: session.SESSION.live.controller.results_waiting >= 1)
        renders.live_step()
        image = camera.data.viewneti.image
        assert image is not None and tuple(image.size) == (64, 40)
        assert camera.data.background_images[0].image == image
    finally:
        release.set()
        renders.stop_live()
    assert not scene.viewneti.live
