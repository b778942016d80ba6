"""Acceptance 2: Render View against the real server: packed background of the right size, new
pixels after a camera move, and everything survives save + reopen."""

import bpy
import pytest

pytestmark = pytest.mark.blender


def pixels(image):
    values = [0.0] * (image.size[0] * image.size[1] * 4)
    image.pixels.foreach_get(values)
    return values


def test_render_view_sets_packed_background_and_survives_reload(live_scene, tmp_path):
    scene = live_scene
    scene.render.resolution_x, scene.render.resolution_y = 800, 600  # 4:3 -> 64 x 48
    camera = scene.camera

    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, scene.viewneti.status_message
    image = camera.data.viewneti.image
    assert image is not None and image.packed_file is not None
    assert tuple(image.size) == (64, 48)
    assert camera.data.show_background_images
    backgrounds = [bg for bg in camera.data.background_images if bg.image == image]
    assert len(backgrounds) == 1 and backgrounds[0].show_background_image
    first = pixels(image)
    assert scene.viewneti.status_message.startswith("Rendered")

    camera.location.x += 1.5
    camera.rotation_euler.z += 0.4
    bpy.context.view_layer.update()
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, scene.viewneti.status_message
    assert camera.data.viewneti.image == image  # same datablock, updated in place
    assert len(camera.data.background_images) == 1  # the slot is reused, not appended
    second = pixels(image)
    assert len(second) == len(first)
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) > 0.02

    path = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    camera = bpy.context.scene.camera
    image = camera.data.viewneti.image
    assert image is not None and image.packed_file is not None
    assert tuple(image.size) == (64, 48)
    assert camera.data.background_images[0].image == image
    assert pixels(image) == pytest.approx(second, abs=1e-6)


def test_live_renders_come_back_as_jpeg_and_stills_as_png(live_scene):
    from addon_testutil import addon_module

    requests, client_mod = addon_module("requests"), addon_module("client")
    request = requests.build_render_request(live_scene, live_scene.camera)
    client = addon_module("connection").make_client()
    live = client.render(request, accept=client_mod.LIVE_ACCEPT)
    still = client.render(request)
    assert live.png.startswith(b"\xff\xd8\xff") and still.png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = request["camera"]["width"], request["camera"]["height"]
    images = addon_module("images")
    assert images.image_size(live.png) == (width, height, "JPEG")
    assert images.image_size(still.png) == (width, height, "PNG")
