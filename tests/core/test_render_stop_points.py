"""The cheap points where a render stops besides its denoising steps: before the VAE decode, and
between the per-size batches of one call (a sequence batch or a cancelled job stops there)."""

import pytest

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine
from viewneti_backend.errors import Cancelled


def cam(width=64, height=64, az=0.0):
    return Camera(orbit_pose(az, 20.0, 4.0), 40.0, width, height)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine.load(str(tiny_model_dir), library_dir=tmp_path_factory.mktemp("library"))


def test_a_stop_after_the_last_step_skips_the_decode(engine, monkeypatch):
    pipeline = type(engine.pipeline)
    decodes, steps = [], []
    real_decode = pipeline.decode
    monkeypatch.setattr(pipeline, "decode", lambda self, *a, **k: decodes.append(1) or real_decode(self, *a, **k))
    with pytest.raises(Cancelled, match="before decoding"):
        engine.render([cam()], None, steps=3, should_stop=lambda: len(steps) >= 3, on_step=lambda i, n: steps.append(i))
    assert steps == [1, 2, 3] and decodes == []
    assert len(engine.render([cam()], None, steps=3, should_stop=lambda: False)) == 1 and decodes == [1]


def test_a_stop_between_size_groups_skips_the_next_group(engine, monkeypatch):
    pipeline = type(engine.pipeline)
    encoded, decodes = [], []
    real_encodings, real_decode = pipeline.view_encodings, pipeline.decode

    def view_encodings(self, cameras, *a, **k):
        encoded.append((cameras[0].width, cameras[0].height))
        return real_encodings(self, cameras, *a, **k)

    monkeypatch.setattr(pipeline, "view_encodings", view_encodings)
    monkeypatch.setattr(pipeline, "decode", lambda self, *a, **k: decodes.append(1) or real_decode(self, *a, **k))
    with pytest.raises(Cancelled, match="before the 96x64 views"):
        engine.render([cam(), cam(96, 64), cam(az=90.0)], None, steps=2, should_stop=lambda: len(decodes) >= 1)
    assert encoded == [(64, 64)] and decodes == [1]  # the 64x64 pair was rendered; the 96x64 view never started
