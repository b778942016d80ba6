"""Constants and helpers shared by the Blender add-on tests (a uniquely named module: every test
folder has its own conftest.py, so importing from "conftest" would be ambiguous)."""

import socket
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDON_ID = "viewneti"
PACKAGE = f"bl_ext.user_default.{ADDON_ID}"  # the module name Blender gives an installed extension


def addon_prefs():
    import bpy

    return bpy.context.preferences.addons[PACKAGE].preferences


def addon_module(name):
    """A submodule of the installed add-on (e.g. "session"), the copy Blender actually runs."""
    return getattr(__import__(PACKAGE, fromlist=[name]), name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(width, height):
    from blender_addon.images import encode_png

    return encode_png(width, height, bytes([90, 90, 90, 255]) * (width * height))


class FakeBackend:
    """A backend in-process, in place of the add-on's client: answers health, renders, sequences and
    inversions at once, and records what the add-on asked for, in order, and on which thread."""

    timeout = 30.0

    def __init__(self, info, warnings=()):
        self.info = info
        self.warnings = list(warnings)  # what the backend runs a job despite (202 answer, events)
        self.calls = []
        self.threads = []  # the thread of each call
        self.requests = []
        self.job_events = []

    def _record(self, name, request=None):
        self.calls.append(name)
        self.threads.append(threading.current_thread())
        if request is not None:
            self.requests.append(request)

    def health(self, timeout=None):
        self._record("health")
        return {"api": "v1", **self.info}

    def objects(self):
        self._record("objects")
        return [{"name": "toy_000", "builtin": True}]

    def render(self, request, accept=None, timeout=None):
        self._record("render", request)
        w, h = request["camera"]["width"], request["camera"]["height"]
        return addon_module("client").RenderResult(_png(w, h), seed=0)

    def compile_shape(self, width, height, views=1):
        """POST /v1/compile: queued, unless health already lists the shape as ready (a compiling backend)."""
        label = f"{width}x{height}" + (f"x{views}" if views != 1 else "")
        self._record("compile", {"width": width, "height": height, "views": views})
        ready = (self.info.get("compiled_shapes") or {}).get("ready") or []
        return {"shape": label, "status": "ready" if label in ready else "queued"}

    def submit_sequence(self, request):
        self._record("sequence", request)
        self.job_events = [("done", {"result": {}})]
        return {"job_id": "s1", "total": len(request["cameras"]), "warnings": self.warnings}

    def submit_invert(self, request):
        self._record("invert", request)
        progress = {"step": 1, "total": 3, "loss": 0.5, "warnings": self.warnings}
        self.job_events = [("progress", progress), ("done", {"result": {"name": request["name"], "steps": 3}})]
        return {"job_id": "i1", "kind": "invert", "total": 3, "warnings": self.warnings}

    def events(self, job_id, timeout=None, max_silence=None):
        return EventList(addon_module("client").SSEEvent(*e) for e in self.job_events)

    def frame(self, job_id, frame):
        camera = self.requests[-1]["cameras"][self.requests[-1]["frames"].index(frame)]
        w, h = camera["width"], camera["height"]
        return _png(w, h)

    def cancel(self, job_id):
        return {}


class EventList(list):
    """A stream's events, all there at once, with the stream's close()."""

    def close(self):
        pass
