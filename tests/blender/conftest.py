"""Fixtures for the Blender add-on tests: headless bpy, the installed extension, the real server.

bpy lives in one process for the whole session, so the add-on is installed once (from the built
zip, as a user would) and every test starts from a fresh default file (`scene`).
Set VIEWNETI_TEST_SERVER_URL to run the end-to-end tests against an already running backend
instead of starting one.
"""

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# must be set before bpy is imported anywhere: keep Blender's user config out of $HOME
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="viewneti-blender-user-"))

try:
    import bpy  # noqa: F401
except ImportError as exc:  # never skip silently: the add-on tests are part of the core suite
    raise ImportError(
        "the Blender add-on tests need the bpy module: run `make setup` (bpy==5.0.1, Python 3.11)"
    ) from exc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from addon_testutil import PACKAGE, ROOT, addon_prefs, free_port  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- the add-on ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    from blender_addon import build

    return build.build(str(tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="session")
def addon(addon_zip):
    """The add-on installed from its zip as a user extension, enabled; yields its module."""
    result = bpy.ops.extensions.package_install_files(filepath=addon_zip, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}
    assert PACKAGE in bpy.context.preferences.addons
    yield sys.modules[PACKAGE]


@pytest.fixture
def scene(addon):
    """A fresh factory-default file with the add-on enabled; returns its scene."""
    import addon_utils

    if PACKAGE not in bpy.context.preferences.addons:  # a failed test may have disabled it
        addon_utils.enable(PACKAGE, default_set=True)
    bpy.ops.wm.read_homefile(use_factory_startup=True)
    scene = bpy.context.scene
    scene.viewneti.resolution = 64
    # the CPU toy model costs seconds per step on a busy 2-core machine: own settings, 1 step
    # (test_sampling_defaults.py covers "Use Model Defaults", which is on in a fresh file)
    scene.viewneti.use_model_defaults = False
    scene.viewneti.steps = 1
    yield scene
    addon.session.shutdown()


# -- the real server -------------------------------------------------------------------------


def _health(url, timeout=2.0, token=""):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url + "/v1/health", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def running_server(data_dir, token=""):
    """A real ViewNeTI server (python -m server) on a free port, with `token` as its access token
    (VIEWNETI_TOKEN: a command line is visible to other users); yields its URL, stops it after."""
    log_path = data_dir / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("VIEWNETI_TOKEN", None)
    if token:
        env["VIEWNETI_TOKEN"] = token
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                _health(url, token=token)
                break
            except urllib.error.HTTPError as exc:  # 503 while loading; "failed" will not get better
                body = json.loads(exc.read() or b"{}")
                if body.get("status") == "failed":
                    pytest.fail(f"the server could not load its model: {body.get('error')}")
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready within 120 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer /v1/health within 120 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """URL of a real ViewNeTI server (python -m server), started for the session."""
    external = os.environ.get("VIEWNETI_TEST_SERVER_URL")
    if external:
        _health(external.rstrip("/"))
        yield external.rstrip("/")
        return
    with running_server(tmp_path_factory.mktemp("server-data")) as url:
        yield url


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """(URL, token) of a real server that refuses requests without its access token."""
    token = secrets.token_urlsafe(24)
    with running_server(tmp_path_factory.mktemp("token-server-data"), token=token) as url:
        yield url, token


@pytest.fixture
def live_scene(scene, server_url):
    """`scene` with the add-on pointed at the real server and the object list loaded."""
    addon_prefs().backend_url = server_url
    addon_prefs().timeout = 600.0
    assert bpy.ops.viewneti.refresh_status() == {"FINISHED"}, scene.viewneti.status_message
    assert scene.viewneti.backend_state == "OK"
    return scene
