"""Acceptance 5: Invert Reference against the real server: progress lands in the scene, the new
object is listed and selected and renders; cancel stops the job and adds nothing."""

import time
import uuid

import bpy
import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


def reference_image(width=64, height=48):
    """A "photo" made in Blender (generated pixels, not a file): exercises the pixels -> PNG path."""
    image = bpy.data.images.new("reference", width, height)
    pixels = []
    for y in range(height):
        for x in range(width):
            inside = abs(x - width / 2) < width / 5 and abs(y - height / 2) < height / 4
            pixels += [0.9, 0.2, 0.1, 1.0] if inside else [0.3, 0.5, 0.3 + 0.5 * y / height, 1.0]
    image.pixels.foreach_set(pixels)
    return image


def test_invert_from_image_datablock_then_render_the_new_object(live_scene):
    runtime = addon_module("runtime")
    scene = live_scene
    settings = scene.viewneti
    settings.invert_source = "IMAGE"
    settings.invert_image = reference_image()
    settings.invert_camera = scene.camera
    settings.invert_name = name = f"mug_{uuid.uuid4().hex[:6]}"
    settings.invert_steps = 3
    settings.invert_preview_every = 2

    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert settings.job_state == "done" and settings.job_step == settings.job_total == 3
    assert settings.job_loss > 0
    assert name in settings.objects and settings.object_name == name
    assert name in [o["name"] for o in runtime.make_client().objects()]
    assert bpy.data.images.get(f"ViewNeTI preview {name}") is not None

    scene.camera.location.z += 1.0
    bpy.context.view_layer.update()
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, settings.status_message
    assert scene.camera.data.viewneti.last_object == name


def test_invert_from_file_can_be_cancelled(live_scene, tmp_path):
    runtime = addon_module("runtime")
    scene = live_scene
    settings = scene.viewneti
    png = tmp_path / "reference.png"
    image = reference_image()
    image.filepath_raw = str(png)
    image.file_format = "PNG"
    image.save()
    settings.invert_source = "FILE"
    settings.invert_filepath = str(png)
    settings.invert_camera = scene.camera
    settings.invert_name = name = f"cancelled_{uuid.uuid4().hex[:6]}"
    settings.invert_steps = 5000

    job = runtime.start_invert(scene)
    deadline = time.monotonic() + 300
    while settings.job_step < 1:
        runtime.job_step()
        assert not job.finished, job.message
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert settings.job_total == 5000 and settings.job_state == "running"
    runtime.cancel_job()
    while runtime.SESSION.job is job:
        runtime.job_step()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert settings.job_state == "cancelled"
    assert name not in [o["name"] for o in runtime.make_client().objects()]
    assert name not in settings.objects


def test_the_demo_replaces_its_previous_inversion_instead_of_failing(live_scene, server_url):
    """`make demo` run twice: its second Invert Reference would hit 'name already exists'; the demo
    first deletes the object its previous run created (and only that name)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "viewneti_demo_script", Path(__file__).resolve().parents[2] / "blender_addon" / "demo.py"
    )
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    runtime = addon_module("runtime")
    settings = live_scene.viewneti
    settings.invert_source, settings.invert_image = "IMAGE", reference_image()
    settings.invert_camera = live_scene.camera
    settings.invert_name = name = f"demo_{uuid.uuid4().hex[:6]}"
    settings.invert_steps, settings.invert_preview_every = 1, 0
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert name in [o["name"] for o in runtime.make_client().objects()]

    assert demo.forget_previous_inversion(server_url, name) is True
    names = [o["name"] for o in runtime.make_client().objects()]
    assert name not in names and "toy_000" in names  # built-ins untouched
    assert demo.forget_previous_inversion(server_url, name) is False  # nothing left: not an error
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message  # the name is free again
