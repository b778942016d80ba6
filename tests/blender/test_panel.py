"""The panels draw without errors in every state, and only reference properties/operators that exist.

Headless Blender draws no UI, so each panel's draw() runs against a recording layout that checks
every `prop`/`operator` call against the RNA, which is where typos in UI code hide.
"""

import types

import bpy
import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


class RecordingLayout:
    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        if name in {"row", "column", "box", "split", "column_flow", "grid_flow"}:
            return lambda *a, **k: RecordingLayout(self.log)
        return lambda *a, **k: self.log.append((name, a, k))

    def __setattr__(self, name, value):
        if name == "log":
            object.__setattr__(self, name, value)

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self.log.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **kwargs):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        self.log.append(("prop_search", name))

    def operator(self, idname, **kwargs):
        category, op = idname.split(".")
        getattr(getattr(bpy.ops, category), op).get_rna_type()  # raises if not registered
        self.log.append(("operator", idname))

    def template_ID(self, data, name, **kwargs):
        assert name in data.bl_rna.properties
        self.log.append(("template_ID", name))


def draw_all(context):
    panel = addon_module("panel")
    log = []
    for cls in panel.CLASSES:
        cls.draw(types.SimpleNamespace(layout=RecordingLayout(log)), context)
    return log


def test_panels_draw_in_each_state(scene):
    settings = scene.viewneti
    log = draw_all(bpy.context)
    ops = {entry[1] for entry in log if entry[0] == "operator"}
    assert {
        "viewneti.render_view",
        "viewneti.toggle_live",
        "viewneti.render_path",
        "viewneti.invert_reference",
        "viewneti.refresh_status",
    } <= ops

    settings.backend_state = "DOWN"
    settings.status_message = "No ViewNeTI backend is running at http://127.0.0.1:1. Start it or fix the URL."
    settings.use_scene_range = False
    settings.invert_source = "IMAGE"
    scene.camera.data.viewneti.use_seed = True
    for kind, state in (("sequence", "running"), ("invert", "running"), ("invert", "done"), ("sequence", "cancelled")):
        settings.job_kind, settings.job_state, settings.job_step, settings.job_total = kind, state, 3, 10
        settings.job_message = "Cancelled: 3 frames kept"
        log = draw_all(bpy.context)
        if state == "running":
            assert any(entry[0] == "progress" for entry in log)
            assert ("operator", "viewneti.cancel_job") in log
    assert any(entry[0] == "label" and "No ViewNeTI backend" in str(entry[2].get("text", "")) for entry in log)


def labels(log):
    return " ".join(str(entry[2].get("text", "")) for entry in log if entry[0] == "label")


def test_compiling_phase_reaches_the_panel_instead_of_an_eta(scene):
    """A progress event with phase "compiling" (the backend's first inversion at this size compiles
    its training graph, minutes on CUDA, at step 0) reaches the scene state the panel draws from, and
    the panel says so instead of an ETA; the first training step replaces it with the ETA."""
    jobs, job_control, panel = addon_module("jobs"), addon_module("job_control"), addon_module("panel")
    job = jobs.InvertJob(None, {"name": "mug", "steps": 10})
    job.handle_event(
        "progress", {"step": 0, "total": 10, "loss": None, "eta_s": None, "phase": "compiling", "state": "running"}
    )
    assert job.poll() and job.phase == "compiling" and job.state == "running"
    job_control.sync_job(scene, job)
    assert scene.viewneti.job_phase == "compiling" and scene.viewneti.job_running
    text = labels(draw_all(bpy.context))
    assert panel.COMPILING_TEXT in text and "ETA" not in text

    job.handle_event(
        "progress", {"step": 1, "total": 10, "loss": 0.5, "eta_s": 90.0, "phase": "training", "state": "running"}
    )
    job.poll()
    job_control.sync_job(scene, job)
    assert scene.viewneti.job_phase == "training"
    text = labels(draw_all(bpy.context))
    assert "ETA 1 min 30 s" in text and "Compiling" not in text  # timings in seconds and minutes
