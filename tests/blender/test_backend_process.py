"""Start Backend / Stop Backend: the add-on supervises a local server process it started itself."""

import sys
import time

import bpy
import pytest
from addon_testutil import ROOT, addon_module, addon_prefs, free_port

pytestmark = pytest.mark.blender


def test_start_and_stop_a_local_backend(scene, tmp_path):
    runtime = addon_module("runtime")
    prefs = addon_prefs()
    prefs.backend_url = f"http://127.0.0.1:{free_port()}"
    prefs.backend_command = f"{sys.executable} -m server --port {{port}} --data-dir {tmp_path / 'data'}"
    prefs.backend_workdir = str(ROOT)
    try:
        assert bpy.ops.viewneti.start_backend() == {"FINISHED"}, scene.viewneti.status_message
        assert runtime.backend_running()
        assert not bpy.ops.viewneti.start_backend.poll()  # one at a time
        deadline = time.monotonic() + 120
        while scene.viewneti.backend_state not in {"OK", "ERROR"}:  # what the timer does in the UI
            runtime.backend_step()
            assert runtime.backend_running(), scene.viewneti.status_message
            assert time.monotonic() < deadline, scene.viewneti.status_message
            time.sleep(0.25)
        assert scene.viewneti.backend_state == "OK", scene.viewneti.status_message
        assert scene.viewneti.backend_info  # model and device from the health check
        proc = runtime.SESSION.backend_proc
        assert bpy.ops.viewneti.stop_backend() == {"FINISHED"}
        assert proc.wait(timeout=20) is not None
        assert scene.viewneti.backend_state == "DOWN"
    finally:
        runtime.stop_backend()
        prefs.backend_command = ""
        prefs.backend_workdir = ""
