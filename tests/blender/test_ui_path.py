"""The UI's asynchronous path, driven headless: operators return at once, results arrive through
the timer callback, which stays short. (Headless Blender never fires timers: the test turns the
session's `synchronous` setting off and calls the timer function, `session.tick`, as Blender would.)"""

import os
import time

import bpy
import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


@pytest.fixture
def ui_session(live_scene, monkeypatch):
    session = addon_module("session")
    monkeypatch.setattr(session.SESSION, "synchronous", False)
    yield session
    session.shutdown()
    assert not session.timer_running()


def tick_until(session, done, timeout=120.0):
    """Call the timer like Blender does; return the slowest tick in seconds."""
    deadline, worst = time.monotonic() + timeout, 0.0
    settings = bpy.context.scene.viewneti
    while not done():
        assert settings.backend_state == "OK" and settings.job_state != "error", settings.status_message
        start = time.perf_counter()
        interval = session.tick()
        worst = max(worst, time.perf_counter() - start)
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval or 0.05)
    return worst


def test_render_view_returns_at_once_and_the_image_arrives_on_a_tick(ui_session):
    scene = bpy.context.scene
    camera = scene.camera
    start = time.perf_counter()
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}
    assert time.perf_counter() - start < 0.1  # no network on the main thread
    assert camera.data.viewneti.image is None  # bpy is only touched later, on the main thread
    assert ui_session.timer_running()
    worst = tick_until(ui_session, lambda: camera.data.viewneti.image is not None)
    assert worst < 0.1, f"a tick took {worst * 1000:.0f} ms"
    assert tuple(camera.data.viewneti.image.size) == (64, 40)  # pyright: ignore[reportAttributeAccessIssue]  set by the ticks: pyright keeps the "is None" above
    assert ui_session.tick() is None  # idle again: the timer stops itself


def test_camera_path_runs_in_the_background_of_the_ui(ui_session, tmp_path):
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 4
    scene.viewneti.output_dir = str(tmp_path)
    assert bpy.ops.viewneti.render_path() == {"FINISHED"}
    assert scene.viewneti.job_state in {"submitting", "running"}
    assert not bpy.ops.viewneti.render_path.poll()  # one job at a time
    tick_until(ui_session, lambda: scene.viewneti.job_state == "done")
    assert sorted(os.listdir(tmp_path)) == [f"frame_{f:06d}.png" for f in range(1, 5)]
    assert scene.camera.data.viewneti.sequence is not None


def test_toggle_live_starts_and_stops(ui_session):
    renders = addon_module("renders")
    scene = bpy.context.scene
    assert bpy.ops.viewneti.toggle_live() == {"FINISHED"}
    assert scene.viewneti.live and renders.live_running()
    tick_until(ui_session, lambda: scene.camera.data.viewneti.image is not None)
    assert bpy.ops.viewneti.toggle_live() == {"FINISHED"}
    assert not scene.viewneti.live and not renders.live_running()
