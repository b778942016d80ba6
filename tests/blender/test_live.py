"""Acceptance 3: live mode is debounced, latest-wins, and its tick never waits for a render."""

import threading
import time

import bpy
import pytest
from addon_testutil import addon_module, addon_prefs

from blender_addon.client import LIVE_ACCEPT, RenderResult, Superseded
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


# -- refinement: the full render of a pose the camera stays at ------------------------------------


def settle(live):
    """Let the renders started so far finish, then take their results (a tick may start the next)."""
    live.join(2)
    return live.tick()


def refiner(clock, render, refine_delay=1.0):
    return LiveController(render, debounce=0.25, clock=clock, refine_delay=refine_delay)


def show(live, clock, pose):
    """Move to `pose`, wait the debounce, show its live render (its full request is "full <pose>")."""
    live.observe(("pose", pose), f"live {pose}", f"full {pose}")
    clock.now += 0.25
    live.tick()
    return [(r.value, r.refined) for r in settle(live)]


def test_refines_once_only_after_the_camera_stays_still_for_the_refine_delay():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render)
    for pose in range(4):  # moving: each live render is shown, the next move comes 0.5 s later
        assert show(live, clock, pose) == [(f"image for live {pose}", False)]
        clock.now += 0.5
        assert settle(live) == []
    assert render.calls == ["live 0", "live 1", "live 2", "live 3"]  # no refinement while moving
    clock.now += 0.49  # still for 0.99 s since the live render of pose 3 was shown
    assert live.tick() == [] and not live.refining and len(render.calls) == 4
    clock.now += 0.01
    live.tick()
    assert live.refining
    results = settle(live)
    assert render.calls[-1] == "full 3"
    assert [(r.value, r.refined, r.key) for r in results] == [("image for full 3", True, ("pose", 3))]
    assert not live.refining
    live.observe(("pose", 3), "live 3", "full 3")  # still there: once per still pose
    clock.now += 10
    assert settle(live) == [] and live.requests_sent == 5


def test_a_move_during_the_refinement_drops_its_result():
    clock, release = FakeClock(), threading.Event()

    def render(request):
        if request.startswith("full"):
            release.wait(5)
        return f"image for {request}"

    live = refiner(clock, render)
    show(live, clock, "a")
    clock.now += 1.0
    live.tick()
    assert live.refining
    live.observe(("pose", "b"), "live b", "full b")  # moves before the refinement of a arrives
    assert not live.refining
    release.set()
    wait_for(lambda: live.results_waiting == 1)
    assert live.tick() == []  # the refinement of a is never shown over the view of b
    clock.now += 0.25
    live.tick()
    assert [r.value for r in settle(live)] == ["image for live b"]


def test_moving_away_and_back_refines_again():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render)
    show(live, clock, "a")
    clock.now += 1.0
    assert [r.value for r in settle(live)] == [] and render.calls[-1] == "full a"  # started by that tick
    show(live, clock, "b")  # the refinement of a arrives after the move: dropped
    show(live, clock, "a")
    clock.now += 1.0
    live.tick()
    assert [r.value for r in settle(live)] == ["image for full a"]
    assert render.calls == ["live a", "full a", "live b", "live a", "full a"]


def test_busy_until_the_refinement_of_the_shown_pose_is_done():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render)
    show(live, clock, "a")
    assert live.busy and not live.refining  # shown; its refinement is still to come
    clock.now += 1.0
    live.tick()
    assert live.busy and live.refining
    settle(live)
    assert not live.busy and render.calls == ["live a", "full a"]
    quiet = refiner(clock, render, refine_delay=0.0)  # never refines: settled once the live view is shown
    show(quiet, clock, "b")
    assert not quiet.busy


def test_a_failed_live_render_leaves_nothing_scheduled():
    clock = FakeClock()

    def render(request):
        raise RuntimeError("the backend went away")

    live = refiner(clock, render)
    live.observe(("pose", "a"), "live a", "full a")
    clock.now += 0.25
    live.tick()
    assert [type(r.error) for r in settle(live)] == [RuntimeError]
    clock.now += 60
    assert not live.busy and settle(live) == []  # no refinement of a view that was never shown


def test_refine_delay_zero_never_refines():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render, refine_delay=0.0)
    show(live, clock, "a")
    clock.now += 60
    assert settle(live) == [] and render.calls == ["live a"]


def test_a_live_request_that_is_already_the_full_one_is_not_sent_twice():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render)
    live.observe("a", {"steps": 4, "session": "s"}, {"steps": 4, "session": "s"})
    clock.now += 0.25
    live.tick()
    assert len(settle(live)) == 1
    clock.now += 60
    assert settle(live) == [] and render.calls == [{"steps": 4, "session": "s"}]


def test_live_refines_a_still_camera_against_the_real_server(live_scene, monkeypatch):
    """The add-on's wiring: live steps as a JPEG, then the full request as a PNG still (what Render
    View sends), "Live: refining…" meanwhile and "Rendered" after; with the panel's own steps the two
    requests are the same and only one is sent."""
    renders, connection, session = addon_module("renders"), addon_module("connection"), addon_module("session")
    scene, sent, real_client = live_scene, [], connection.make_client

    class RecordingClient:
        def __init__(self, client):
            self.client = client

        def render(self, request, accept=None):
            sent.append((request, accept))
            return self.client.render(request) if accept is None else self.client.render(request, accept=accept)

    monkeypatch.setattr(connection, "make_client", lambda context=None: RecordingClient(real_client(context)))
    addon_prefs().live_debounce, addon_prefs().refine_delay = 0.0, 0.05
    scene.viewneti.use_model_defaults = True  # toy model: live 3 steps, full 4 (README)
    assert renders.start_live(scene) is None
    statuses = []
    try:
        deadline = time.monotonic() + 300
        while len(sent) < 2 or session.SESSION.live.controller.busy or session.SESSION.live.controller.refining:
            renders.live_step()
            statuses.append(scene.viewneti.status_message)
            assert time.monotonic() < deadline, scene.viewneti.status_message
            time.sleep(0.01)
        renders.live_step()
        assert [(r.get("steps"), accept) for r, accept in sent] == [
            (scene.viewneti.model_live_steps, LIVE_ACCEPT),
            (None, None),
        ]
        assert sent[1][0] == addon_module("requests").build_render_request(scene, scene.camera)
        assert "Live: refining…" in statuses and scene.viewneti.status_message.startswith("Rendered Camera")
        assert scene.camera.data.viewneti.image is not None
        scene.viewneti.use_model_defaults = False  # the panel's 1 step: live = full
        count = len(sent)
        deadline = time.monotonic() + 300
        while len(sent) == count or session.SESSION.live.controller.busy:
            renders.live_step()
            assert time.monotonic() < deadline, scene.viewneti.status_message
            time.sleep(0.01)
        time.sleep(0.2)  # well past the refine delay: nothing more is sent
        for _ in range(3):
            renders.live_step()
        assert len(sent) == count + 1
    finally:
        renders.stop_live()


# -- held while the backend compiles an inversion's training graph --------------------------------


def test_a_held_controller_sends_nothing_then_the_latest_pose():
    clock, render = FakeClock(), RecordingRender()
    live = refiner(clock, render)
    assert show(live, clock, 1) == [("image for live 1", False)]
    live.held = True
    clock.now += 5  # the refinement of pose 1 would be due: not while held
    assert live.tick() == [] and render.calls == ["live 1"]
    for pose in (2, 3):  # the camera moves on meanwhile
        live.observe(("pose", pose), f"live {pose}", f"full {pose}")
        clock.now += 1
        assert live.tick() == []
    assert render.calls == ["live 1"] and live.busy  # the latest pose waits
    live.held = False
    live.tick()
    assert [r.value for r in settle(live)] == ["image for live 3"]
    assert render.calls == ["live 1", "live 3"]


def test_live_pauses_while_this_sessions_inversion_compiles(scene, monkeypatch):
    """The shell holds live requests while the job reports phase "compiling" (the backend renders on
    the thread that compiles: a request would wait minutes), says so in the status line, and sends the
    latest pose once the job reports training."""
    from types import SimpleNamespace

    renders, connection, session = addon_module("renders"), addon_module("connection"), addon_module("session")
    from blender_addon.images import encode_png

    sent = []

    class Client:
        def render(self, request, accept=None):
            sent.append(request)
            w, h = request["camera"]["width"], request["camera"]["height"]
            return RenderResult(encode_png(w, h, bytes([20, 30, 200, 255]) * (w * h)), seed=request["seed"])

    monkeypatch.setattr(connection, "make_client", lambda context=None: Client())
    addon_prefs().live_debounce = 0.0
    addon_prefs().refine_delay = 0.0
    connection.apply_backend(scene, {"native_size": 64}, [], announce=False)
    job = SimpleNamespace(finished=False, phase="compiling")
    assert renders.start_live(scene) is None
    session.SESSION.job = SimpleNamespace(job=job, step=lambda: None, interval=lambda: None, shutdown=lambda: None)
    try:
        camera = scene.camera
        for _ in range(3):
            camera.location.x += 0.05
            bpy.context.view_layer.update()
            renders.live_step()
        time.sleep(0.05)
        renders.live_step()
        assert sent == [] and scene.viewneti.status_message == renders.LiveMode.HELD
        job.phase = "training"
        renders.live_step()
        wait_for(lambda: sent)
        assert len(sent) == 1  # one request, for the pose the camera is at now
        assert sent[0]["camera"] == renders.build_render_request(scene, camera, live=True)["camera"]
        assert scene.viewneti.status_message != renders.LiveMode.HELD
    finally:
        session.SESSION.job = None
        renders.stop_live()
