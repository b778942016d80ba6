"""A new pose's later encodings computed beside the denoising loop (text_beside.py, VIEWNETI_TEXT_BESIDE):
the chunks worked by hand, a render the same as with one text-encoder call, a re-render the same bytes,
the cache filled once all chunks are queued, a stop before that leaves nothing cached, and the switch.
On a CPU the side stream's work runs in turn: the same code path, without a second stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.errors import Cancelled
from viewneti_backend.text_beside import (
    TEXT_BESIDE_ENV,
    ChunkedConditions,
    Rest,
    step_chunks,
    text_beside_requested,
)


def test_chunks_worked_by_hand():
    assert step_chunks(30) == [(0, 2), (2, 6), (6, 18), (18, 30)]
    assert step_chunks(8) == [(0, 1), (1, 3), (3, 8)]
    assert step_chunks(50) == [(0, 3), (3, 9), (9, 27), (27, 50)]  # head round(50 * 2 / 30) = 3
    assert step_chunks(2) == [(0, 1), (1, 2)]
    assert step_chunks(1) == [(0, 1)]
    assert step_chunks(5, head=5) == [(0, 5)]
    assert step_chunks(5, head=9) == [(0, 5)]
    with pytest.raises(ValueError, match="steps must be at least 1"):
        step_chunks(0)
    with pytest.raises(ValueError, match="head must be at least 1"):
        step_chunks(4, head=0)


def test_chunked_conditions_index_steps_across_chunks():
    parts = [torch.arange(2)[:, None] * 1.0, None, None]
    calls = []

    def queue_rest() -> Rest:
        calls.append(1)
        return [(torch.tensor([[2.0], [3.0]]), None), (torch.tensor([[4.0]]), None)], None

    conds = ChunkedConditions([(0, 2), (2, 4), (4, 5)], parts, torch.device("cpu"), queue_rest)
    assert len(conds) == 5
    assert conds[1].item() == 1.0 and calls == []  # the first chunk needs nothing queued
    assert [conds[i].item() for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert calls == [1]  # queued once, at the first read beyond the first chunk
    conds.start_rest()
    assert calls == [1]
    with pytest.raises(IndexError):
        conds[5]
    with pytest.raises(ValueError, match="need a queue_rest"):
        ChunkedConditions([(0, 1), (1, 2)], [torch.zeros(1, 1), None], torch.device("cpu"))


@pytest.fixture
def engines(tiny_model_dir, monkeypatch):
    """The tiny model twice: one text-encoder call a render (VIEWNETI_TEXT_BESIDE=0), and in chunks."""
    from viewneti_backend.engine import Engine

    monkeypatch.setenv(TEXT_BESIDE_ENV, "0")
    plain = Engine.load(tiny_model_dir, device="cpu", compile=False)
    monkeypatch.setenv(TEXT_BESIDE_ENV, "1")
    beside = Engine.load(tiny_model_dir, device="cpu", compile=False)
    assert not plain.pipeline.text_beside and beside.pipeline.text_beside
    return plain, beside


def _cam(azimuth: float) -> Camera:
    return Camera(orbit_pose(azimuth, 20.0, 3.6), 40.0, 32, 32)


def test_a_render_is_the_same_with_the_text_phase_in_chunks(engines):
    plain, beside = engines
    computed = []
    compute = beside.pipeline._compute_packed

    def spy(cameras, object_mapper, timesteps, with_view):
        computed.append(len(timesteps))
        return compute(cameras, object_mapper, timesteps, with_view)

    beside.pipeline._compute_packed = spy
    for guidance in (2.0, 1.0):  # with CFG and without
        cam = _cam(30.0 + guidance)
        computed.clear()
        a = plain.render([cam], seed=1, steps=8, guidance=guidance)[0]
        b = beside.render([cam], seed=1, steps=8, guidance=guidance)[0]
        assert computed == [1, 2, 5]  # step_chunks(8): one text-encoder call per chunk
        # float32: the same image up to a rounding of a pixel value (other GEMM row counts)
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
        computed.clear()
        again = beside.render([cam], seed=1, steps=8, guidance=guidance)[0]
        assert computed == []  # the pose's encodings came from the cache
        assert np.array_equal(np.asarray(again), np.asarray(b))  # a re-render: the same bytes


def test_the_cache_gets_a_pose_once_all_its_chunks_are_queued(engines):
    _, beside = engines
    pipe = beside.pipeline
    cam = _cam(10.0)

    def stop_at(step):
        seen = []

        def should_stop():
            seen.append(1)
            return len(seen) > step + 1  # the engine asks once before the batch, then once a step

        return should_stop

    with pytest.raises(Cancelled, match="stopped at step 0"):
        beside.render([cam], seed=0, steps=8, guidance=2.0, should_stop=stop_at(0))
    assert pipe.cached_encodings == 0  # stopped before the first step: the later chunks were never queued
    with pytest.raises(Cancelled, match="stopped at step 2"):
        beside.render([cam], seed=0, steps=8, guidance=2.0, should_stop=stop_at(2))
    assert pipe.cached_encodings == 1  # queued with the first step: the cache has every step's encodings
    timesteps = pipe.scheduler(8).timesteps
    cached = pipe.view_encodings(
        beside.mapper_cameras([cam]), beside.object_mapper(None)[1], timesteps, True, "default"
    )
    fresh = pipe.view_encodings(
        beside.mapper_cameras([cam]), beside.object_mapper(None)[1], timesteps, True, "default", use_cache=False
    )
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-5)


def test_several_views_and_single_steps_take_one_text_encoder_call(engines):
    _, beside = engines
    computed = []
    compute = beside.pipeline._compute_packed

    def spy(cameras, object_mapper, timesteps, with_view):
        computed.append((len(cameras), len(timesteps)))
        return compute(cameras, object_mapper, timesteps, with_view)

    beside.pipeline._compute_packed = spy
    beside.render([_cam(0.0), _cam(90.0)], seed=0, steps=3, guidance=2.0)
    beside.render([_cam(45.0)], seed=0, steps=1, guidance=2.0)
    assert computed == [(2, 3), (1, 1)]


def test_the_environment_switch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(TEXT_BESIDE_ENV, raising=False)
    assert not text_beside_requested(cpu)  # unset: never on a CPU
    for value, on in (("0", False), (" 0 ", False), ("1", True), (" 1 ", True)):
        monkeypatch.setenv(TEXT_BESIDE_ENV, value)
        assert text_beside_requested(cpu) is on and text_beside_requested(cuda) is on
    monkeypatch.setenv(TEXT_BESIDE_ENV, "yes")
    with pytest.raises(ValueError, match="VIEWNETI_TEXT_BESIDE='yes': set it to 1 \\(on\\) or 0 \\(off\\)"):
        text_beside_requested(cpu)
