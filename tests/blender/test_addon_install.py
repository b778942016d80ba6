"""Acceptance 1: the built zip installs as an extension, enables, and enable/disable leaves no residue."""

import os
import socket
import subprocess
import sys
import zipfile

import addon_utils
import bpy
import pytest
from addon_testutil import PACKAGE, ROOT, addon_module

pytestmark = pytest.mark.blender


def _our_types():
    return sorted(name for name in dir(bpy.types) if name.startswith("VIEWNETI_"))


def _our_handlers():
    return [h for h in bpy.app.handlers.load_pre if getattr(h, "__module__", "").startswith(PACKAGE)]


def test_zip_layout(addon_zip):
    with zipfile.ZipFile(addon_zip) as archive:
        names = archive.namelist()
    assert os.path.basename(addon_zip) == "viewneti-0.1.0.zip"
    assert "blender_manifest.toml" in names and "__init__.py" in names  # manifest at the zip root
    assert not any("__pycache__" in n or n.endswith(".pyc") or n in {"build.py", "demo.py"} for n in names)


def test_blender_validates_the_zip(addon_zip):
    """Blender's own extension validator (shipped inside bpy) accepts the manifest and the archive."""
    tool = os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    out = subprocess.run([sys.executable, tool, "validate", addon_zip], capture_output=True, text=True)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr


def test_build_cli_runs_without_bpy(tmp_path):
    """`python -m blender_addon.build` must work where bpy cannot be imported (CI, make addon-zip)."""
    code = (
        "import runpy, sys; sys.modules['bpy'] = None; "  # makes `import bpy` fail
        "sys.argv = ['build', '--out', sys.argv[1]]; runpy.run_module('blender_addon.build', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert (tmp_path / "viewneti-0.1.0.zip").is_file(), out.stderr


def test_installed_and_enabled(addon, scene):
    assert addon.__name__ == PACKAGE
    assert PACKAGE in bpy.context.preferences.addons
    assert bpy.context.preferences.addons[PACKAGE].preferences.backend_url == "http://127.0.0.1:7860"
    assert "VIEWNETI_PT_main" in _our_types() and "VIEWNETI_OT_render_view" in _our_types()
    assert scene.viewneti.resolution == 64 and scene.viewneti.object_name == ""
    assert scene.camera.data.viewneti.use_seed is False


def test_the_stand_in_preferences_are_the_registered_defaults(addon):
    """Outside an enabled add-on ``prefs()`` answers with ``DefaultPrefs``: every preference at the default
    Blender registered for it (read from the property definitions, not a second copy of each value)."""
    props = addon_module("properties")
    stand_in = props.DefaultPrefs()
    registered = bpy.context.preferences.addons[PACKAGE].preferences.bl_rna.properties
    names = list(props.VIEWNETI_AddonPreferences.__annotations__)
    assert {"backend_url", "token", "timeout", "live_debounce", "refine_delay", "backend_token_auto"} <= set(names)
    for name in names:
        assert getattr(stand_in, name) == registered[name].default, name
    assert stand_in.live_debounce == 0.25 and stand_in.backend_url == "http://127.0.0.1:7860"
    assert not hasattr(stand_in, "no_such_preference")


def test_register_unregister_twice_leaves_no_residue(addon, monkeypatch):
    connects = []
    real_connect = socket.socket.connect

    def spy(sock, address):
        connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    user_dir = bpy.utils.extension_path_user(PACKAGE, create=False)
    expected_types = _our_types()
    for _ in range(2):
        addon_utils.disable(PACKAGE, default_set=True)
        assert _our_types() == []
        assert "viewneti" not in bpy.types.Scene.bl_rna.properties
        assert "viewneti" not in bpy.types.Camera.bl_rna.properties
        assert not hasattr(bpy.types.Scene, "viewneti")
        assert _our_handlers() == []
        assert not addon.session.timer_running()

        addon_utils.enable(PACKAGE, default_set=True)
        assert _our_types() == expected_types
        assert "viewneti" in bpy.types.Scene.bl_rna.properties
        assert len(_our_handlers()) == 1
        assert not sys.modules[PACKAGE].session.timer_running()
    assert connects == []  # nothing touches the network at register time
    assert not os.path.exists(user_dir)  # ... nor writes user data
