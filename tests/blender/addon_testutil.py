"""Constants and helpers shared by the Blender add-on tests (a uniquely named module: every test
folder has its own conftest.py, so importing from "conftest" would be ambiguous)."""

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDON_ID = "viewneti"
PACKAGE = f"bl_ext.user_default.{ADDON_ID}"  # the module name Blender gives an installed extension


def addon_prefs():
    import bpy

    return bpy.context.preferences.addons[PACKAGE].preferences


def addon_module(name):
    """A submodule of the installed add-on (e.g. "runtime"), the copy Blender actually runs."""
    return getattr(__import__(PACKAGE, fromlist=[name]), name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
