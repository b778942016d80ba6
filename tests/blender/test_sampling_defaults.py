"""The "Use Model Defaults" switch: with it on (a fresh file's setting) the add-on leaves steps/guidance out of its
requests so the backend's model picks them; live mode sends the model's live steps; off, the panel's
values are sent. The model's values come from /v1/health and are shown in the panel."""

import time

import bpy
import pytest
from addon_testutil import addon_module, addon_prefs

from blender_addon.client import RenderResult
from tests.blender.test_panel import draw_all

pytestmark = pytest.mark.blender

HEALTH = {
    "status": "ok",
    "api": "v1",
    "base_model": "toy",
    "device": "cpu",
    "version": "0.1.0",
    "sampling_defaults": {"guidance": 2.0, "steps": 20, "live_steps": 8},
}


def test_use_model_defaults_is_on_in_a_fresh_file(scene):
    prop = scene.viewneti.bl_rna.properties["use_model_defaults"]
    assert prop.default is True
    # the panel's own values keep their old defaults, for when the user turns it off
    assert scene.viewneti.bl_rna.properties["steps"].default == 30
    assert scene.viewneti.bl_rna.properties["guidance"].default == pytest.approx(7.5)


def test_render_request_omits_steps_and_guidance_with_model_defaults(scene):
    connection, requests = addon_module("connection"), addon_module("requests")
    settings = scene.viewneti
    settings.use_model_defaults = True
    request = requests.build_render_request(scene, scene.camera)
    assert "steps" not in request and "guidance" not in request
    assert {"camera", "seed", "session"} <= set(request)
    # live mode before the model's values are known: left out too
    assert "steps" not in requests.build_render_request(scene, scene.camera, live=True)

    connection.apply_backend(scene, HEALTH, [], announce=False)
    assert (settings.model_steps, settings.model_live_steps) == (20, 8)
    assert settings.model_guidance == pytest.approx(2.0)
    assert "steps" not in requests.build_render_request(scene, scene.camera)  # Render View: the model's steps
    live = requests.build_render_request(scene, scene.camera, live=True)
    assert live["steps"] == 8 and "guidance" not in live  # live previews: the model's live steps


def test_own_values_are_sent_with_model_defaults_off(scene):
    connection, requests = addon_module("connection"), addon_module("requests")
    settings = scene.viewneti
    connection.apply_backend(scene, HEALTH, [], announce=False)
    settings.use_model_defaults = False
    settings.steps, settings.guidance = 12, 3.25
    for live in (False, True):
        request = requests.build_render_request(scene, scene.camera, live=live)
        assert request["steps"] == 12 and request["guidance"] == pytest.approx(3.25)


def test_sequence_request_follows_the_switch(scene):
    requests = addon_module("requests")
    settings = scene.viewneti
    scene.frame_start, scene.frame_end = 1, 3
    settings.use_model_defaults = True
    request = requests.build_sequence_request(scene, scene.camera)
    assert len(request["cameras"]) == 3
    assert "steps" not in request and "guidance" not in request
    settings.use_model_defaults = False
    settings.steps, settings.guidance = 5, 4.0
    request = requests.build_sequence_request(scene, scene.camera)
    assert request["steps"] == 5 and request["guidance"] == pytest.approx(4.0)


def test_health_without_or_with_bad_defaults_clears_the_models_values(scene):
    connection = addon_module("connection")
    settings = scene.viewneti
    connection.apply_backend(scene, HEALTH, [], announce=False)
    connection.apply_backend(scene, {k: v for k, v in HEALTH.items() if k != "sampling_defaults"}, [], announce=False)
    assert (settings.model_steps, settings.model_live_steps, settings.model_guidance) == (0, 0, 0.0)
    connection.apply_backend(scene, {**HEALTH, "sampling_defaults": {"steps": "many"}}, [], announce=False)
    assert settings.model_steps == 0


def test_panel_shows_the_models_values_instead_of_the_fields(scene):
    connection = addon_module("connection")
    settings = scene.viewneti
    settings.use_model_defaults = True

    def props_and_labels():
        log = draw_all(bpy.context)
        props = {entry[1] for entry in log if entry[0] == "prop"}
        labels = " | ".join(str(entry[2].get("text", "")) for entry in log if entry[0] == "label")
        return props, labels

    props, labels = props_and_labels()
    assert "use_model_defaults" in props and "steps" not in props and "guidance" not in props
    assert "Refresh" in labels  # values not known yet
    connection.apply_backend(scene, HEALTH, [], announce=False)
    props, labels = props_and_labels()
    assert "20 steps · guidance 2 · live 8 steps" in labels
    settings.use_model_defaults = False
    props, _ = props_and_labels()
    assert {"use_model_defaults", "steps", "guidance"} <= props


def test_live_step_sends_the_models_live_steps(scene, monkeypatch):
    connection = addon_module("connection")
    from blender_addon.images import encode_png

    sent = []

    class Client:
        def render(self, request, accept=None):
            sent.append(request)
            w, h = request["camera"]["width"], request["camera"]["height"]
            return RenderResult(encode_png(w, h, bytes([10, 200, 30, 255]) * (w * h)), seed=request["seed"])

    renders, session = addon_module("renders"), addon_module("session")
    monkeypatch.setattr(connection, "make_client", lambda context=None: Client())
    addon_prefs().live_debounce = 0.0
    scene.viewneti.use_model_defaults = True
    connection.apply_backend(scene, HEALTH, [], announce=False)
    renders.start_live(scene)
    try:
        renders.live_step()
        deadline = time.monotonic() + 10
        while not (sent and session.SESSION.live.controller.results_waiting):
            assert time.monotonic() < deadline, "the live render did not run"
            time.sleep(0.01)
        renders.live_step()
        assert scene.camera.data.viewneti.image is not None
    finally:
        renders.stop_live()
    assert sent[0]["steps"] == 8 and "guidance" not in sent[0]


def test_render_view_with_model_defaults_against_the_real_server(live_scene, server_url):
    """The real backend accepts the fields left out and reports its model's values."""
    import json
    import urllib.request

    scene = live_scene
    with urllib.request.urlopen(server_url + "/v1/health", timeout=10) as response:
        health = json.loads(response.read())
    defaults = health["sampling_defaults"]
    settings = scene.viewneti
    assert settings.model_steps == defaults["steps"] and settings.model_live_steps == defaults["live_steps"]
    assert settings.model_guidance == pytest.approx(defaults["guidance"])
    settings.use_model_defaults = True
    settings.steps, settings.guidance = 1, 30.0  # ignored while the switch is on
    scene.render.resolution_x = scene.render.resolution_y = 64
    assert bpy.ops.viewneti.render_view() == {"FINISHED"}, settings.status_message
    image = scene.camera.data.viewneti.image
    assert image is not None and tuple(image.size) == (64, 64)
