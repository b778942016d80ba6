"""Start Backend / Stop Backend: the add-on supervises a local server process it started itself."""

import os
import stat
import sys
import time

import bpy
import pytest
from addon_testutil import ROOT, addon_module, addon_prefs, free_port

from blender_addon.client import BackendError, Client

pytestmark = pytest.mark.blender


def test_start_and_stop_a_local_backend(scene, tmp_path):
    backend, connection = addon_module("backend"), addon_module("connection")
    session = addon_module("session")
    prefs = addon_prefs()
    prefs.backend_url = f"http://127.0.0.1:{free_port()}"
    prefs.backend_command = f"{sys.executable} -m server --port {{port}} --data-dir {tmp_path / 'data'}"
    prefs.backend_workdir = str(ROOT)
    try:
        assert bpy.ops.viewneti.start_backend() == {"FINISHED"}, scene.viewneti.status_message
        assert backend.backend_running()
        assert not bpy.ops.viewneti.start_backend.poll()  # one at a time
        deadline = time.monotonic() + 120
        while scene.viewneti.backend_state not in {"OK", "ERROR"}:  # what the timer does in the UI
            session.tick()  # what the timer does in the UI: the started backend's part checks /v1/health
            assert backend.backend_running(), scene.viewneti.status_message
            assert time.monotonic() < deadline, scene.viewneti.status_message
            time.sleep(0.25)
        assert scene.viewneti.backend_state == "OK", scene.viewneti.status_message
        assert scene.viewneti.backend_info  # model and device from the health check
        # Per-Launch Token (on by default): started with --token auto, the add-on read the token file
        launched = session.SESSION.backend
        token_file = launched.token_file
        assert "--token" in launched.proc.args and token_file in launched.proc.args
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token = launched.token
        assert len(token) >= 40 and not prefs.token
        assert connection.make_client().token == token
        assert len(connection.make_client().objects()) >= 1  # the add-on's client, with the token
        with pytest.raises(BackendError) as err:
            Client(prefs.backend_url, timeout=30).health()  # anyone else on this machine: refused
        assert err.value.status == 401
        proc = launched.proc
        assert bpy.ops.viewneti.stop_backend() == {"FINISHED"}
        assert proc.wait(timeout=20) is not None
        assert scene.viewneti.backend_state == "DOWN"
        assert not os.path.exists(token_file)  # the server removes it when it stops
        assert connection.make_client().token == ""  # back to the preferences' token
    finally:
        backend.stop_backend()
        prefs.backend_command = ""
        prefs.backend_workdir = ""


def test_per_launch_token_arguments():
    backend = addon_module("backend")
    args, path = backend.with_token_auto(["python", "-m", "server", "--port", "7860"], "/x/backend.token")
    assert args[-4:] == ["--token", "auto", "--token-file", "/x/backend.token"] and path == "/x/backend.token"
    for own in (["--token", "s3cret"], ["--token=s3cret"]):  # the command chose its own token: leave it
        args, path = backend.with_token_auto(["python", "-m", "server", *own], "/x/backend.token")
        assert args == ["python", "-m", "server", *own] and path == ""
