"""The add-on requests at most the backend's max_size (GET /v1/health): a CPU backend caps renders far
lower than the panel's default Resolution, and a default setting must not earn a 422."""

import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


def test_render_requests_are_capped_at_the_backend_max_size(scene):
    connection, requests = addon_module("connection"), addon_module("requests")
    settings = scene.viewneti
    settings.resolution = 512
    scene.render.resolution_x, scene.render.resolution_y = 800, 600
    connection.apply_backend(scene, {"max_size": 256, "base_model": "toy", "device": "cpu"}, [], announce=False)
    assert settings.backend_max_size == 256
    cam = requests.build_render_request(scene, scene.camera)["camera"]
    assert (cam["width"], cam["height"]) == (256, 192)
    connection.apply_backend(scene, {"max_size": 2048}, [], announce=False)
    cam = requests.build_render_request(scene, scene.camera)["camera"]
    assert (cam["width"], cam["height"]) == (512, 384)
    connection.apply_backend(scene, {"max_size": "nonsense"}, [], announce=False)  # unknown: the panel's value
    assert settings.backend_max_size == 0
    assert requests.build_render_request(scene, scene.camera)["camera"]["width"] == 512
