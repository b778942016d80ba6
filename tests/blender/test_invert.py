"""Acceptance 5: Invert Reference against the real server: progress lands in the scene, the new
object is listed and selected and renders; cancel stops the job and adds nothing."""

import base64
import threading
import time
import uuid
import zlib

import bpy
import pytest
from addon_testutil import FakeBackend, addon_module

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
    connection = addon_module("connection")
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
    assert name in [o["name"] for o in connection.make_client().objects()]
    assert bpy.data.images.get(f"ViewNeTI preview {name}") is not None

    scene.camera.location.z += 1.0
    bpy.context.view_layer.update()
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, settings.status_message
    assert scene.camera.data.viewneti.last_object == name


def test_invert_from_file_can_be_cancelled(live_scene, tmp_path, monkeypatch):
    connection, job_control, session = addon_module("connection"), addon_module("job_control"), addon_module("session")
    monkeypatch.setattr(session.SESSION, "synchronous", False)  # drive the job tick by tick, as the timer does
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

    assert job_control.start_invert(scene) is None
    job = job_control.active_job()
    assert job is not None
    deadline = time.monotonic() + 300
    while settings.job_step < 1:
        job_control.job_step()
        assert not job.finished, job.message
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert settings.job_total == 5000 and settings.job_state == "running"
    job_control.cancel_job()
    while job_control.active_job() is job:
        job_control.job_step()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert settings.job_state == "cancelled"
    assert name not in [o["name"] for o in connection.make_client().objects()]
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
    connection = addon_module("connection")
    settings = live_scene.viewneti
    settings.invert_source, settings.invert_image = "IMAGE", reference_image()
    settings.invert_camera = live_scene.camera
    settings.invert_name = name = f"demo_{uuid.uuid4().hex[:6]}"
    settings.invert_steps, settings.invert_preview_every = 1, 0
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert name in [o["name"] for o in connection.make_client().objects()]

    assert demo.forget_previous_inversion(server_url, name) is True
    names = [o["name"] for o in connection.make_client().objects()]
    assert name not in names and "toy_000" in names  # built-ins untouched
    assert demo.forget_previous_inversion(server_url, name) is False  # nothing left: not an error
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message  # the name is free again


def test_a_float_reference_is_converted_on_the_job_thread(scene, monkeypatch):
    """An HDR/EXR-like reference (float pixels, values above 1) is only copied on the main thread:
    the linear -> sRGB conversion and the PNG encoding run on the job's thread, before the upload."""
    images, connection = addon_module("images"), addon_module("connection")
    image = bpy.data.images.new("hdr reference", 64, 48, float_buffer=True)
    image.pixels.foreach_set([2.5, 0.5, 0.1, 1.0] * (64 * 48))
    settings = scene.viewneti
    settings.invert_source, settings.invert_image, settings.invert_camera = "IMAGE", image, scene.camera
    settings.invert_name, settings.invert_steps, settings.invert_preview_every = "hdr", 3, 0
    snapshot = addon_module("requests").build_invert_request(scene)["images"][0]
    assert isinstance(snapshot, images.PixelSnapshot) and snapshot.is_float  # copied here, not converted

    converted_on = []
    to_png = images.PixelSnapshot.to_png

    def watched_to_png(snapshot):
        converted_on.append(threading.current_thread())
        return to_png(snapshot)

    backend = FakeBackend({"base_model": "toy", "native_size": 64})
    monkeypatch.setattr(images.PixelSnapshot, "to_png", watched_to_png)
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert settings.object_name == "hdr"

    main = threading.main_thread()
    assert converted_on and all(thread is not main for thread in converted_on)
    upload_thread = backend.threads[backend.calls.index("invert")]
    assert upload_thread is converted_on[0] and upload_thread.name == "viewneti-invert"  # the job's own thread
    png = base64.b64decode(backend.requests[0]["images"][0])
    assert images.png_size(png) == (64, 48)
    raw = zlib.decompress(png[33 + 8 : -16])  # the one IDAT chunk: a filter byte, then RGBA rows
    assert tuple(raw[1:5]) == (255, 188, 89, 255)  # 2.5 clamped; linear 0.5 and 0.1 as sRGB
