"""Acceptance 6: a backend that is down, speaks another API or fails yields a clear status
message and a cancelled operator; no exception escapes an operator or the timer."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bpy
import pytest
from addon_testutil import addon_module, addon_prefs, free_port

pytestmark = pytest.mark.blender


@pytest.fixture
def down_scene(scene):
    addon_prefs().backend_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    addon_prefs().timeout = 5.0
    return scene


def test_server_down_gives_a_clear_message(down_scene, tmp_path):
    scene = down_scene
    settings = scene.viewneti
    url = addon_prefs().backend_url
    for op in (bpy.ops.viewneti.refresh_status, bpy.ops.viewneti.render_view):
        settings.status_message = ""
        assert op() == {"CANCELLED"}
        assert settings.backend_state == "DOWN"
        assert f"No ViewNeTI backend is running at {url}" in settings.status_message
        assert "Start" in settings.status_message

    scene.frame_start, scene.frame_end = 1, 3
    settings.output_dir = str(tmp_path / "frames")
    settings.status_message = ""
    assert bpy.ops.viewneti.render_path() == {"CANCELLED"}  # the first health check already fails
    assert f"No ViewNeTI backend is running at {url}" in settings.status_message
    assert settings.backend_state == "DOWN" and settings.job_state == ""  # no job was started
    assert not (tmp_path / "frames").exists()

    # a job whose backend goes away: the job's own message, in the status line too
    addon_module("connection").apply_backend(scene, {"native_size": 64}, [], announce=False)
    assert bpy.ops.viewneti.render_path() == {"CANCELLED"}
    assert "No ViewNeTI backend is running" in settings.job_message
    assert settings.job_state == "error" and settings.backend_state == "DOWN"
    assert settings.status_message == settings.job_message

    settings.invert_source = "FILE"
    settings.invert_filepath = str(tmp_path / "missing.png")
    settings.invert_camera = scene.camera
    assert bpy.ops.viewneti.invert_reference() == {"CANCELLED"}
    assert "Reference image not found" in settings.status_message


def test_timer_tick_never_raises(down_scene, monkeypatch):
    session = addon_module("session")

    class BrokenPart:
        """A part of the session whose step has a bug (any part: live mode, a job, a started backend)."""

        def step(self):
            raise RuntimeError("bug in a step")

        def interval(self):
            return None

        def shutdown(self):
            pass

    monkeypatch.setattr(session.SESSION, "job", BrokenPart())
    assert session.tick() is None  # idle afterwards: the timer unregisters itself
    assert "RuntimeError" in down_scene.viewneti.status_message


def test_disabled_buttons_explain_why(down_scene):
    bpy.data.objects.remove(down_scene.camera)
    assert not bpy.ops.viewneti.render_view.poll()
    assert not bpy.ops.viewneti.invert_reference.poll()
    assert not bpy.ops.viewneti.cancel_job.poll()
    assert not bpy.ops.viewneti.start_backend.poll()  # no start command configured


class _WrongVersion(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"status": "ok", "api": "v0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_wrong_api_version_says_to_update(scene):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongVersion)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        addon_prefs().backend_url = f"http://127.0.0.1:{server.server_address[1]}"
        assert bpy.ops.viewneti.refresh_status() == {"CANCELLED"}
        assert "speaks API 'v0'" in scene.viewneti.status_message
        assert "Update" in scene.viewneti.status_message
    finally:
        server.shutdown()
        server.server_close()


def test_bad_input_from_the_server_is_shown(live_scene):
    """A 4xx from the real server (here: an unknown object) lands in the status line."""
    live_scene.viewneti.object_name = "no_such_object"
    assert bpy.ops.viewneti.render_view() == {"CANCELLED"}
    message = live_scene.viewneti.status_message
    assert "no_such_object" in message and live_scene.viewneti.backend_state == "OK"
