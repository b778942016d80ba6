"""A render served between two denoising steps of another (the server does this for a live frame while
a sequence's frames render): both give the images they give alone, and the engine stays busy for a
background compile until the outer render ends."""

import numpy as np
import pytest

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine


def cam(width=64, height=64, az=0.0):
    return Camera(orbit_pose(az, 20.0, 4.0), 40.0, width, height)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine.load(str(tiny_model_dir), library_dir=tmp_path_factory.mktemp("library"))


def pixels(images):
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize("inner_size", [(64, 64), (48, 64)], ids=["same-shape", "other-shape"])
def test_a_render_between_the_steps_of_another_equals_both_renders_alone(engine, inner_size):
    outer_cams = [cam(az=10.0), cam(az=40.0)]
    inner_cam = cam(*inner_size, az=75.0)
    alone_outer = pixels(engine.render(outer_cams, None, seed=3, steps=4))
    alone_inner = pixels(engine.render([inner_cam], None, seed=5, steps=2))
    engine.pipeline.clear_cache()  # the nested run computes its encodings again, inside the outer one
    inner, idle_inside, idle_after_inner = [], [], []

    def on_step(step, steps):
        if step == 2:
            idle_inside.append(engine.idle.is_set())
            inner.extend(pixels(engine.render([inner_cam], None, seed=5, steps=2)))
            idle_after_inner.append(engine.idle.is_set())

    outer = pixels(engine.render(outer_cams, None, seed=3, steps=4, should_stop=lambda: False, on_step=on_step))
    assert idle_inside == [False] and idle_after_inner == [False], "the outer render still runs"
    assert engine.idle.is_set(), "both ended: a background compile may go on"
    assert all(np.array_equal(a, b) for a, b in zip(outer, alone_outer, strict=True))
    assert np.array_equal(inner[0], alone_inner[0])


def test_busy_is_reentrant_and_ends_idle_after_an_error(engine):
    assert engine.idle.is_set() and not engine.rendering.is_set()
    with pytest.raises(RuntimeError, match="inner"):
        with engine.busy():
            with engine.busy():
                assert not engine.idle.is_set() and engine.rendering.is_set()
            assert not engine.idle.is_set(), "the inner end must not mark the engine idle"
            assert engine.rendering.is_set()
            raise RuntimeError("inner")
    assert engine.idle.is_set() and not engine.rendering.is_set()


def test_the_engine_hands_lockstep_to_the_step_pacer(engine, monkeypatch):
    """``Engine.render(lockstep=...)`` reaches the pacer of the denoising loop (which asks it at each step
    on CUDA: tests/core/test_step_pacer.py); a render without one gets none."""
    from viewneti_backend import pipeline as pipeline_module
    from viewneti_backend.step_pacer import StepPacer

    given = []

    class RecordingPacer(StepPacer):
        def __init__(self, device, ahead=None, event_factory=None, lockstep=None):
            given.append(lockstep)
            super().__init__(device, ahead, event_factory, lockstep)

    monkeypatch.setattr(pipeline_module, "StepPacer", RecordingPacer)

    def lockstep():
        return True

    engine.render([cam()], None, seed=1, steps=2, on_step=lambda k, n: None, lockstep=lockstep)
    engine.render([cam()], None, seed=1, steps=2, should_stop=lambda: False)
    assert given == [lockstep, None]
