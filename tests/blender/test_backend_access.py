"""The add-on against the server's access rules (issue 20), headless bpy and real server processes:
the Access Token preference for a server started with a token, a backend URL under a name the server
refuses (its 421 message in the panel), and backend.log kept private to the user."""

import os
import stat
import sys
import tempfile
import urllib.parse

import bpy
import pytest
from addon_testutil import PACKAGE, addon_module, addon_prefs

pytestmark = pytest.mark.blender


@pytest.fixture
def prefs():
    p = addon_prefs()
    yield p
    p.token = ""
    p.backend_url = "http://127.0.0.1:7860"


def test_the_access_token_preference_reaches_a_token_server(scene, token_server, prefs):
    url, token = token_server
    settings = scene.viewneti
    prefs.backend_url, prefs.timeout = url, 600.0
    for wrong in ("", "not-the-token"):
        prefs.token = wrong
        assert bpy.ops.viewneti.refresh_status() == {"CANCELLED"}
        assert "refused the request (401)" in settings.status_message
        assert "set its access token in the add-on preferences" in settings.status_message
    prefs.token = token
    assert addon_module("connection").make_client().token == token
    assert bpy.ops.viewneti.refresh_status() == {"FINISHED"}, settings.status_message
    assert settings.backend_state == "OK" and len(settings.objects) >= 1
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, settings.status_message  # a render, with the token
    assert settings.status_message.startswith("Rendered")


def test_a_refused_host_name_shows_the_servers_421_message(scene, server_url, prefs):
    """127.1 reaches 127.0.0.1 but is not a name the server answers to (DNS rebinding protection)."""
    port = urllib.parse.urlsplit(server_url).port
    prefs.backend_url, prefs.timeout = f"http://127.1:{port}", 60.0
    settings = scene.viewneti
    for op in (bpy.ops.viewneti.refresh_status, bpy.ops.viewneti.render_view):
        settings.status_message = ""
        assert op() == {"CANCELLED"}
        message = settings.status_message
        assert "refused this address (421)" in message
        assert f"Host '127.1:{port}' is not a name of this server" in message  # the server's own words
        assert f"http://127.0.0.1:{port}/" in message  # ... which say what to use instead
        assert "Traceback" not in message and settings.backend_state == "ERROR"


def test_backend_log_is_private_to_the_user(scene, prefs, monkeypatch):
    """backend.log gets the server's output (a per-launch token, if the server printed it): mode 0600, in
    a 0700 folder of the user's own (Blender's per-user resources), never a shared temp folder; also for
    a legacy add-on, which has no extension folder."""
    backend = addon_module("backend")
    user_root = os.environ["BLENDER_USER_RESOURCES"]  # conftest: this test session's Blender user folder
    expected = {False: bpy.utils.extension_path_user(PACKAGE), True: os.path.join(user_root, "datafiles", "viewneti")}
    prefs.backend_command = f"{sys.executable} -c pass"  # exits at once: only the log matters here
    try:
        for legacy in (False, True):
            if legacy:

                def no_extension_folder(package, create=False):
                    raise ValueError('The "package" does not name an extension')

                monkeypatch.setattr(bpy.utils, "extension_path_user", no_extension_folder)
            folder = backend.user_folder()
            assert folder == expected[legacy] and folder != os.path.join(tempfile.gettempdir(), "viewneti")
            log = os.path.join(folder, "backend.log")
            with open(log, "a"):  # a log an earlier version left readable by everyone
                pass
            os.chmod(log, 0o644)
            os.chmod(folder, 0o755)
            assert bpy.ops.viewneti.start_backend() == {"FINISHED"}, scene.viewneti.status_message
            assert f"log: {log}" in scene.viewneti.status_message
            assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
            backend.stop_backend()
    finally:
        backend.stop_backend()
        prefs.backend_command = ""
