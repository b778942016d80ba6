"""A compiled engine reports a shape it has no graph for to the background compiler only once the render
at that shape is over (issue 19): the compile it starts (helper processes loading the model and
autotuning on the same GPU) would otherwise slow the uncompiled render the user is waiting for."""

import pytest

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine
from viewneti_backend.errors import Cancelled
from viewneti_backend.render_shape import RenderShape


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine.load(str(tiny_model_dir), library_dir=tmp_path_factory.mktemp("library"))


def test_an_uncompiled_shape_is_reported_after_its_render(engine, monkeypatch):
    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")  # the compiled path, on eager modules
    monkeypatch.setattr(engine, "ready_shapes", set())
    events: list = []
    monkeypatch.setattr(engine, "on_uncompiled_shape", lambda shape: events.append(("compile", shape)))
    cameras = [Camera(orbit_pose(az, 20.0, 4.0), 40.0, 64, 64) for az in (0.0, 90.0)] + [
        Camera(orbit_pose(0.0, 20.0, 4.0), 40.0, 48, 32)
    ]
    engine.render(cameras, None, seed=1, steps=2, on_step=lambda i, n: events.append(("step", i)))
    # two sizes, two groups: each group's steps, then its shape
    assert events == [
        ("step", 1),
        ("step", 2),
        ("compile", RenderShape(2, 64, 64, True)),
        ("step", 1),
        ("step", 2),
        ("compile", RenderShape(1, 48, 32, True)),
    ]


def test_a_render_stopped_midway_still_reports_its_shape(engine, monkeypatch):
    """Stopped after its first denoising step, the uncompiled shape is still worth compiling; stopped before
    it started (the check before each size group), nothing ran at that shape and nothing is reported."""
    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")
    monkeypatch.setattr(engine, "ready_shapes", set())
    seen: list = []
    monkeypatch.setattr(engine, "on_uncompiled_shape", seen.append)
    camera = Camera(orbit_pose(0.0, 20.0, 4.0), 40.0, 64, 64)
    steps_done: list = []
    with pytest.raises(Cancelled):
        engine.render(
            [camera], None, steps=2, should_stop=lambda: bool(steps_done), on_step=lambda i, n: steps_done.append(i)
        )
    assert steps_done == [1] and seen == [RenderShape(1, 64, 64, True)]
    with pytest.raises(Cancelled):
        engine.render([camera], None, steps=2, should_stop=lambda: True)
    assert seen == [RenderShape(1, 64, 64, True)]
