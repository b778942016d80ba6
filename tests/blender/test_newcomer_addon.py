"""What a new user meets in the add-on (issue 24), headless bpy: the model's native size by default,
warnings from the backend in the panel, timings in seconds, Online Access for remote backends,
delete/rename buttons, inversion steps from the backend, and colour management of stored images."""

import io
import os
import socket
import time
import uuid

import bpy
import numpy as np
import pytest
from addon_testutil import FakeBackend, addon_module, addon_prefs
from PIL import Image

pytestmark = pytest.mark.blender


def draw_labels(context):
    from test_panel import draw_all, labels

    return labels(draw_all(context))


def health(native=64, invert_steps=150):
    return {
        "base_model": "toy",
        "device": "cpu",
        "version": "0.1.0",
        "native_size": native,
        "invert_steps": invert_steps,
        "sampling_defaults": {"steps": 4, "guidance": 2.0, "live_steps": 3},
    }


def test_requests_use_the_models_native_size_until_the_user_sets_one(scene, monkeypatch):
    requests, connection = addon_module("requests"), addon_module("connection")
    settings = scene.viewneti
    settings.resolution = 512
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    assert settings.use_native_resolution, "on in a fresh file"
    backend = FakeBackend(health(native=64))
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    # the first Render View asks the backend for its model's size before it renders: never a 512-px guess
    assert not connection.backend_known(settings)
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, settings.status_message
    assert backend.calls == ["health", "objects", "render"]
    cam = backend.requests[-1]["camera"]
    assert (cam["width"], cam["height"]) == (64, 40)  # long side 64, the scene's 16:9 kept
    assert settings.model_native_size == 64 and connection.backend_known(settings)
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}
    assert backend.calls[3:] == ["render"]  # known now: no second health check
    assert requests.size_warning(settings) == ""
    assert "64 × 40 px" in draw_labels(bpy.context)
    settings.use_native_resolution = False
    assert requests.build_render_request(scene, scene.camera)["camera"]["width"] == 512
    assert "512 px is 8x the model's 64 px" in requests.size_warning(settings)
    assert "Turn on Model's Size" in draw_labels(bpy.context)


def test_live_and_camera_path_also_ask_for_the_size_first(scene, monkeypatch, tmp_path):
    connection, renders = addon_module("connection"), addon_module("renders")
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    backend = FakeBackend(health(native=48))
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    addon_prefs().live_debounce = 0.0
    assert bpy.ops.viewneti.toggle_live() == {"FINISHED"}, scene.viewneti.status_message
    assert backend.calls == ["health", "objects"] and renders.live_running()
    deadline = time.monotonic() + 10
    while scene.camera.data.viewneti.image is None:  # what the timer does in the UI
        renders.live_step()
        assert time.monotonic() < deadline, scene.viewneti.status_message
        time.sleep(0.01)
    assert (backend.requests[0]["camera"]["width"], backend.requests[0]["camera"]["height"]) == (48, 24)  # 16:9
    renders.stop_live()

    bpy.ops.wm.read_homefile(use_factory_startup=True)  # a new file: its scene knows no backend yet
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 2
    scene.viewneti.output_dir = str(tmp_path / "frames")
    backend = FakeBackend(health(native=48))
    assert bpy.ops.viewneti.render_path() == {"FINISHED"}, scene.viewneti.status_message
    assert backend.calls[:3] == ["health", "objects", "sequence"]
    assert {(c["width"], c["height"]) for c in backend.requests[-1]["cameras"]} == {(48, 24)}
    assert sorted(os.listdir(tmp_path / "frames")) == ["frame_000001.png", "frame_000002.png"]


def test_the_first_render_in_the_ui_checks_health_on_the_timer(scene, monkeypatch):
    """The UI's path: the operator returns at once; the health check and then the render arrive on ticks."""
    connection, session = addon_module("connection"), addon_module("session")
    monkeypatch.setattr(session.SESSION, "synchronous", False)
    backend = FakeBackend(health(native=32))
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}
    deadline = time.monotonic() + 10
    while scene.camera.data.viewneti.image is None:
        session.tick()
        assert time.monotonic() < deadline, scene.viewneti.status_message
        time.sleep(0.01)
    assert backend.calls == ["health", "objects", "render"]
    image = scene.camera.data.viewneti.image
    assert image is not None and tuple(image.size) == (32, 16)  # the factory scene's 16:9 at the model's 32 px


def test_inversion_warnings_are_shown_as_a_sequences(scene, monkeypatch):
    """The backend's warnings about an inversion (202 answer, progress events) land in the Invert
    Reference box and the status line, as a camera path's do."""
    connection = addon_module("connection")
    far = "camera 0 is 9.00 units from the anchor, outside the view-mapper's trained distances (3.20-4.00)"
    backend = FakeBackend(health(native=64), warnings=[far])
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    settings = scene.viewneti
    image = bpy.data.images.new("ref", 32, 32)
    settings.invert_source, settings.invert_image, settings.invert_camera = "IMAGE", image, scene.camera
    settings.invert_name, settings.invert_steps, settings.invert_preview_every = "far_mug", 3, 0
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert settings.job_kind == "invert" and settings.job_state == "done"
    assert settings.job_warnings == far
    assert settings.status_message == f"New object 'far_mug' is ready and selected. Warning: {far}"
    assert far in draw_labels(bpy.context)  # in the Invert Reference panel's job box


def test_timings_are_shown_in_seconds_and_warnings_reach_the_panel(scene):
    requests, renders, client = addon_module("requests"), addon_module("renders"), addon_module("client")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buf, "PNG")
    result = client.RenderResult(buf.getvalue(), 0, "r1", {"total": 720.4}, ["the camera is far away: move it"])
    request = requests.build_render_request(scene, scene.camera)
    renders.apply_render(scene, scene.camera, request, result)
    settings = scene.viewneti
    assert settings.last_timings == "0.72 s"
    assert "Warning: the camera is far away" in settings.status_message
    text = draw_labels(bpy.context)
    assert "Last render: 0.72 s" in text and "the camera is far away: move it" in text
    status = addon_module("status")
    assert status.format_seconds(41.2) == "41 s" and status.format_seconds(200) == "3 min 20 s"
    assert client.parse_warnings('["a", "b"]') == ["a", "b"] and client.parse_warnings("nonsense") == []


def test_a_remote_backend_needs_online_access_and_is_not_contacted(scene, monkeypatch):
    connection = addon_module("connection")
    connects = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda s, a: connects.append(a) or real_connect(s, a))
    assert bpy.app.online_access is False  # the bpy module's default
    addon_prefs().backend_url = "http://10.20.30.40:7860"
    try:
        assert bpy.ops.viewneti.refresh_status() == {"CANCELLED"}
        message = scene.viewneti.status_message
        assert "Online Access" in message and "Preferences > System" in message
        assert connects == []
        monkeypatch.setattr(connection, "online_access_allowed", lambda: True)
        assert connection.make_client().base_url == "http://10.20.30.40:7860"
        monkeypatch.setattr(connection, "online_access_allowed", lambda: False)
        for url in ("http://127.0.0.1:1", "localhost:7860", "http://[::1]:7860"):
            addon_prefs().backend_url = url
            connection.make_client()  # loopback is not Internet access: never gated
    finally:
        addon_prefs().backend_url = "http://127.0.0.1:7860"


def test_far_camera_warning_from_the_real_backend_lands_in_the_panel(live_scene):
    scene = live_scene
    scene.camera.location = (0.0, -12.0, 0.0)
    scene.camera.rotation_euler = (1.5708, 0.0, 0.0)
    bpy.context.view_layer.update()
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, scene.viewneti.status_message
    assert "outside the view-mapper's trained distances" in scene.viewneti.last_warnings
    assert "Warning:" in scene.viewneti.status_message
    assert scene.viewneti.last_timings.endswith(" s")


def test_rename_and_delete_buttons_change_the_library(live_scene):
    connection, library = addon_module("connection"), addon_module("library")
    scene = live_scene
    settings = scene.viewneti
    builtin = settings.object_name
    assert settings.objects[builtin].builtin
    assert not bpy.ops.viewneti.delete_object.poll() and not bpy.ops.viewneti.rename_object.poll()

    image = bpy.data.images.new("ref", 64, 64)
    settings.invert_source, settings.invert_image, settings.invert_camera = "IMAGE", image, scene.camera
    settings.invert_name = name = f"obj_{uuid.uuid4().hex[:6]}"
    settings.invert_steps, settings.invert_preview_every = 1, 0
    assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
    assert settings.object_name == name and bpy.ops.viewneti.rename_object.poll()

    # the same name again: the add-on's own words, not an HTTP route
    assert bpy.ops.viewneti.invert_reference() == {"CANCELLED"}
    assert "already exists: change Name" in settings.status_message and "/v1/" not in settings.status_message

    new = name + "_v2"
    assert bpy.ops.viewneti.rename_object(new_name=new) == {"FINISHED"}, settings.status_message
    assert settings.object_name == new and new in settings.objects and name not in settings.objects
    assert bpy.ops.viewneti.rename_object(new_name=builtin) == {"CANCELLED"}
    assert f"an object named '{builtin}' already exists" in settings.status_message  # the backend's words
    # a 409 for another reason is not "already exists": the backend's own text says why
    assert library.rename_object(live_scene, builtin, "anything_else") is not None
    assert "built-in object" in settings.status_message and "cannot be renamed" in settings.status_message
    assert "already exists" not in settings.status_message
    assert bpy.ops.viewneti.delete_object() == {"FINISHED"}, settings.status_message
    assert new not in settings.objects and settings.object_name == builtin  # back to the default object
    assert new not in [o["name"] for o in connection.make_client().objects()]


def test_inversion_steps_default_to_the_backends(scene):
    connection, requests = addon_module("connection"), addon_module("requests")
    settings = scene.viewneti
    assert settings.invert_steps == 0
    image = bpy.data.images.new("ref", 32, 32)
    settings.invert_source, settings.invert_image, settings.invert_camera = "IMAGE", image, scene.camera
    assert "steps" not in requests.build_invert_request(scene)
    connection.apply_backend(scene, health(invert_steps=150), [])
    assert settings.model_invert_steps == 150
    assert "Backend default: 150 steps" in draw_labels(bpy.context)
    settings.invert_steps = 20
    assert requests.build_invert_request(scene)["steps"] == 20


@pytest.mark.parametrize(
    ("view", "colorspace", "max_mean_error"),
    [
        ("Standard", "sRGB", 0.0),
        ("AgX", "AgX Base sRGB", 8.0),
        ("Filmic", "Filmic sRGB", 1.0),
        ("Raw", "Non-Color", 0.0),
    ],
)
def test_stored_images_show_their_pixels_through_the_scene_view_transform(
    scene, tmp_path, view, colorspace, max_mean_error
):
    images = addon_module("images")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    scene.view_settings.view_transform = view
    image = images.store_png("ViewNeTI test", buf.getvalue(), scene=scene)
    assert image.colorspace_settings.name == colorspace
    # save_render applies the scene's view transform, as the viewport and renders do
    scene.render.image_settings.file_format = "PNG"
    image.save_render(str(tmp_path / "shown.png"), scene=scene)
    shown = np.asarray(Image.open(tmp_path / "shown.png").convert("RGB")).astype(float)
    error = np.abs(shown - pixels).mean()
    assert error <= max_mean_error, (view, error)
    if view == "AgX":  # plain sRGB would be tone-mapped twice: far worse
        image.colorspace_settings.name = "sRGB"
        image.save_render(str(tmp_path / "double.png"), scene=scene)
        double = np.asarray(Image.open(tmp_path / "double.png").convert("RGB")).astype(float)
        assert np.abs(double - pixels).mean() > 2 * error


def test_a_camera_path_shows_the_backends_warnings(live_scene, tmp_path):
    scene = live_scene
    settings = scene.viewneti
    native = settings.model_native_size
    assert native > 0
    camera = scene.camera
    for frame, x in ((1, 2.5), (2, -2.5)):  # 3.65 units from the anchor: inside the trained distances
        camera.location = (x, -2.5, 0.9)
        camera.keyframe_insert("location", frame=frame)
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 2, 1
    settings.output_dir = str(tmp_path / "frames")
    settings.use_native_resolution, settings.resolution = False, 3 * native  # above 2x: the backend warns
    settings.use_model_defaults, settings.steps = False, 1
    assert bpy.ops.viewneti.render_path() == {"FINISHED"}, settings.status_message
    assert settings.job_state == "done"
    (warning,) = settings.job_warnings.splitlines()
    assert "the model's native size" in warning
    assert f"Warning: {warning}" in settings.status_message
    assert warning in draw_labels(bpy.context)  # in the Camera Path panel's job box

    settings.use_native_resolution = True  # at the model's size: nothing to say
    assert bpy.ops.viewneti.render_path() == {"FINISHED"}, settings.status_message
    assert settings.job_state == "done" and settings.job_warnings == ""
    assert "Warning" not in settings.status_message
