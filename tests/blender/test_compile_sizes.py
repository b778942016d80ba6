"""A compiling backend (CUDA) is asked to compile the scene's render size as soon as the add-on knows it
(issue 19: no minute-long first render at the add-on's resolution), and the panel says whether that size
is compiled yet; a render that ran uncompiled says so next to its time. Headless bpy, a fake backend for
the compiling server (the CPU test server does not compile) and the real server for the wire."""

import bpy
import pytest
from addon_testutil import FakeBackend, addon_module
from test_panel import draw_all, labels

from blender_addon.client import RenderResult

pytestmark = pytest.mark.blender


def health(ready=(), compiling=None, queued=(), failed=None, batch=4, compiled=True):
    info = {"base_model": "sd21", "device": "cuda", "version": "0.1.0", "native_size": 768, "sequence_batch": batch}
    if compiled:
        info["compiled_shapes"] = {
            "ready": list(ready),
            "compiling": compiling,
            "queued": list(queued),
            "failed": dict(failed or {}),
        }
    else:
        info["compiled_shapes"] = None
    return info


@pytest.fixture
def wide_scene(scene, monkeypatch):
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080  # 768 long side -> 768x432
    scene.viewneti.use_native_resolution = True
    return scene


def connect(scene, monkeypatch, info):
    connection = addon_module("connection")
    backend = FakeBackend(info)
    monkeypatch.setattr(connection, "make_client", lambda context=None: backend)
    assert connection.refresh_backend(scene, announce=False) is None, scene.viewneti.status_message
    return backend


def test_a_new_scene_size_is_sent_to_compile_for_renders_and_sequences(wide_scene, monkeypatch):
    backend = connect(wide_scene, monkeypatch, health(ready=["512x512", "768x576", "768x576x4"]))
    assert backend.calls == ["health", "objects", "compile", "compile"]
    assert backend.requests == [{"width": 768, "height": 432, "views": 1}, {"width": 768, "height": 432, "views": 4}]
    settings = wide_scene.viewneti
    assert settings.backend_compiles and settings.backend_sequence_batch == 4
    assert settings.compile_state.startswith("768×432: queued on the backend")
    assert "uncompiled (slower)" in labels(draw_all(bpy.context))


def test_sizes_the_backend_has_or_is_compiling_are_not_asked_again(wide_scene, monkeypatch):
    backend = connect(wide_scene, monkeypatch, health(ready=["768x432"], compiling="768x432x4"))
    assert backend.calls == ["health", "objects"]
    assert wide_scene.viewneti.compile_state == "768×432: compiled, renders at full speed"
    assert "compiled, renders at full speed" in labels(draw_all(bpy.context))

    backend = connect(wide_scene, monkeypatch, health(ready=["768x432"], batch=1))  # no batched sequences
    assert backend.calls == ["health", "objects"]

    backend = connect(wide_scene, monkeypatch, health(queued=["768x432", "768x432x4"]))
    assert backend.calls == ["health", "objects"]
    assert "queued on the backend" in wide_scene.viewneti.compile_state

    backend = connect(wide_scene, monkeypatch, health(failed={"768x432": "boom", "768x432x4": "boom"}))
    assert backend.calls == ["health", "objects"]
    assert "could not compile it" in wide_scene.viewneti.compile_state


def test_the_panels_own_resolution_is_what_gets_compiled(wide_scene, monkeypatch):
    settings = wide_scene.viewneti
    settings.use_native_resolution, settings.resolution = False, 512
    backend = connect(wide_scene, monkeypatch, health(batch=1))
    assert backend.calls == ["health", "objects", "compile"]
    assert backend.requests[-1] == {"width": 512, "height": 288, "views": 1}


def test_a_backend_that_does_not_compile_is_asked_nothing(wide_scene, monkeypatch):
    backend = connect(wide_scene, monkeypatch, health(compiled=False))
    assert backend.calls == ["health", "objects"]
    settings = wide_scene.viewneti
    assert not settings.backend_compiles and settings.compile_state == ""
    assert "compiled" not in labels(draw_all(bpy.context))


def test_an_uncompiled_render_says_so_next_to_its_time(scene):
    renders = addon_module("renders")
    request = {"camera": {"width": 64, "height": 64}, "seed": 0}
    png = addon_module("images").encode_png(64, 64, bytes([9, 9, 9, 255]) * 64 * 64)
    renders.apply_render(scene, scene.camera, request, RenderResult(png, 0, "r1", {"total": 1520.0, "eager": 1}))
    assert scene.viewneti.last_timings == "1.52 s (uncompiled: the backend is still compiling this size)"
    renders.apply_render(scene, scene.camera, request, RenderResult(png, 0, "r2", {"total": 310.0, "eager": 0}))
    assert scene.viewneti.last_timings == "0.31 s"


def test_the_real_server_answers_the_compile_request(scene, server_url):
    """The CPU test server does not compile: POST /v1/compile says "eager" and health's compiled_shapes is
    null, so the add-on asks for nothing and shows nothing."""
    from blender_addon.client import Client

    client = Client(server_url, timeout=30)
    assert client.compile_shape(64, 48) == {"shape": "64x48", "status": "eager"}
    connection = addon_module("connection")
    connection.apply_backend(scene, client.health(), client.objects(), announce=False)
    assert not scene.viewneti.backend_compiles and scene.viewneti.compile_state == ""
