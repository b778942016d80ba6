"""What a new user meets in the add-on (issue 24), headless bpy: the model's native size by default,
warnings from the backend in the panel, timings in seconds, Online Access for remote backends,
delete/rename buttons, inversion steps from the backend, and colour management of stored images."""

import io
import socket
import uuid

import bpy
import numpy as np
import pytest
from addon_testutil import addon_module, addon_prefs
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


def test_requests_use_the_models_native_size_until_the_user_sets_one(scene):
    runtime = addon_module("runtime")
    settings = scene.viewneti
    settings.resolution = 512
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    assert settings.use_native_resolution, "on in a fresh file"
    # before the backend said its size: the Resolution field
    assert runtime.build_render_request(scene, scene.camera)["camera"]["width"] == 512
    runtime.apply_backend(scene, health(native=64), [])
    cam = runtime.build_render_request(scene, scene.camera)["camera"]
    assert (cam["width"], cam["height"]) == (64, 40)  # long side 64, the scene's 16:9 kept
    assert runtime.size_warning(settings) == ""
    assert "64 × 40 px" in draw_labels(bpy.context)
    settings.use_native_resolution = False
    assert runtime.build_render_request(scene, scene.camera)["camera"]["width"] == 512
    assert "512 px is 8x the model's 64 px" in runtime.size_warning(settings)
    assert "Turn on Model's Size" in draw_labels(bpy.context)


def test_timings_are_shown_in_seconds_and_warnings_reach_the_panel(scene):
    runtime, client = addon_module("runtime"), addon_module("client")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buf, "PNG")
    result = client.RenderResult(buf.getvalue(), 0, "r1", {"total": 720.4}, ["the camera is far away: move it"])
    request = runtime.build_render_request(scene, scene.camera)
    runtime.apply_render(scene, scene.camera, request, result)
    settings = scene.viewneti
    assert settings.last_timings == "0.72 s"
    assert "Warning: the camera is far away" in settings.status_message
    text = draw_labels(bpy.context)
    assert "Last render: 0.72 s" in text and "the camera is far away: move it" in text
    assert runtime.format_seconds(41.2) == "41 s" and runtime.format_seconds(200) == "3 min 20 s"
    assert client.parse_warnings('["a", "b"]') == ["a", "b"] and client.parse_warnings("nonsense") == []


def test_a_remote_backend_needs_online_access_and_is_not_contacted(scene, monkeypatch):
    runtime = addon_module("runtime")
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
        monkeypatch.setattr(runtime, "online_access_allowed", lambda: True)
        assert runtime.make_client().base_url == "http://10.20.30.40:7860"
        monkeypatch.setattr(runtime, "online_access_allowed", lambda: False)
        for url in ("http://127.0.0.1:1", "localhost:7860", "http://[::1]:7860"):
            addon_prefs().backend_url = url
            runtime.make_client()  # loopback is not Internet access: never gated
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
    runtime = addon_module("runtime")
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
    assert "already exists" in settings.status_message
    assert bpy.ops.viewneti.delete_object() == {"FINISHED"}, settings.status_message
    assert new not in settings.objects and settings.object_name == builtin  # back to the default object
    assert new not in [o["name"] for o in runtime.make_client().objects()]


def test_inversion_steps_default_to_the_backends(scene):
    runtime = addon_module("runtime")
    settings = scene.viewneti
    assert settings.invert_steps == 0
    image = bpy.data.images.new("ref", 32, 32)
    settings.invert_source, settings.invert_image, settings.invert_camera = "IMAGE", image, scene.camera
    assert "steps" not in runtime.build_invert_request(scene)
    runtime.apply_backend(scene, health(invert_steps=150), [])
    assert settings.model_invert_steps == 150
    assert "Backend default: 150 steps" in draw_labels(bpy.context)
    settings.invert_steps = 20
    assert runtime.build_invert_request(scene)["steps"] == 20


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
