"""How a sequence job cuts its frames into engine calls (``sequence_unit``), and live renders served
between the denoising steps of those calls, on the worker with the fake engine."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_engine import FakeEngine
from PIL import Image

from server import worker as worker_module
from server.events import EventHub
from server.jobs import InvertSpec, JobStore, SequenceSpec
from server.worker import RenderTask, Worker, sequence_unit
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.render_shape import RenderShape


def compiled_views(*views: int):
    return lambda v: v in views


@pytest.mark.parametrize(
    "remaining,batch,compiled,expected",
    [
        (20, 8, (), (8, 8)),  # a full batch whatever is compiled
        (8, 8, (8,), (8, 8)),
        (3, 8, (3, 8), (3, 3)),  # three left and that shape compiled: three views
        (4, 8, (1, 8), (1, 1)),  # half a batch left: one compiled single view a call
        (5, 8, (1, 8), (5, 8)),  # more than half: the compiled batch, padded with three copies
        (2, 8, (8,), (2, 8)),  # single views not compiled: padded
        (2, 8, (), (2, 2)),  # nothing compiled (an eager engine): just the frames left
        (1, 1, (), (1, 1)),  # the CPU: one frame a call
        (3, 4, (1,), (3, 3)),  # neither k nor the batch compiled, more than half left: k uncompiled
    ],
)
def test_sequence_unit(remaining, batch, compiled, expected):
    assert sequence_unit(remaining, batch, compiled_views(*compiled)) == expected


class CountingEngine(FakeEngine):
    """A fake engine that batches ``sequence_batch`` frames, says which views are compiled, and logs
    when each render call starts and ends."""

    def __init__(self, *args, compiled: tuple[int, ...] = (), batch: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sequence_batch = batch
        self.compiled_views = compiled
        self.log: list[tuple[str, int]] = []
        self.step_seen = threading.Event()

    def runs_uncompiled(self, shape: RenderShape) -> bool:
        return shape.views not in self.compiled_views

    def render(self, cameras, *args, on_step=None, **kwargs):
        self.log.append(("start", len(cameras)))

        def step(k, n):
            self.step_seen.set()
            if on_step is not None:
                on_step(k, n)

        try:
            return super().render(cameras, *args, on_step=step, **kwargs)
        finally:
            self.log.append(("end", len(cameras)))


def _cams(n: int, size: int = 32) -> tuple[Camera, ...]:
    return tuple(Camera(orbit_pose(15.0 * k, 10.0, 4.0), 40.0, size, size) for k in range(n))


def _worker(tmp_path, engine):
    store = JobStore(tmp_path / "jobs", EventHub())
    w = Worker(lambda: engine, store)
    w.start()
    deadline = time.monotonic() + 10
    while w.state != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.state == "ready"
    return w, store


def _sequence(store, cams, steps=2):
    spec = SequenceSpec(cams, tuple(range(100, 100 + len(cams))), None, 4, steps, 2.0)
    return store.create("sequence", len(cams), {}, spec=spec)


def _wait_state(job, states=("done", "error", "cancelled"), timeout=30.0):
    deadline = time.monotonic() + timeout
    while job.state not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return job.state


@pytest.mark.parametrize(
    "compiled,calls",
    [((1, 4), [4, 4, 1, 1]), ((4,), [4, 4, 4]), ((), [4, 4, 2])],
    ids=["singles-compiled", "batch-compiled-only", "nothing-compiled"],
)
def test_the_last_frames_take_a_compiled_shape_and_keep_their_own_images(tmp_path, compiled, calls):
    engine = CountingEngine(tmp_path / "lib", step_s=0.0, compiled=compiled, batch=4)
    w, store = _worker(tmp_path, engine)
    try:
        cams = _cams(10)
        job = _sequence(store, cams)
        w.submit_job(job)
        assert _wait_state(job) == "done", job.error
        assert [n for what, n in engine.log if what == "start"] == calls
        assert job.frames_done == list(range(100, 110))
        # each call's phase timings (the fake's encode and decode take 0.1 ms a call), summed over the job
        assert job.phase_ms is not None and job.phase_ms["encode"] == pytest.approx(0.1 * len(calls))
        assert job.phase_ms["decode"] == pytest.approx(0.1 * len(calls)) and job.phase_ms["denoise"] >= 0.0
        alone = FakeEngine(tmp_path / "lib2", step_s=0.0)
        for k, cam in enumerate(cams):  # a padded call's copies were dropped: frame k is camera k's view
            path = store.frame_path(job, 100 + k)
            assert path is not None
            with Image.open(path) as im:
                got = np.asarray(im.convert("RGB"))
            want = np.asarray(alone.render([cam], None, 4, 2, 2.0)[0])
            assert np.array_equal(got, want), f"frame {k}"
    finally:
        w.stop()


def _live_render_during_a_job(w, store, engine, steps, delay_s=0.0):
    """A sequence job of 4 frames (one engine call), then, once its first step ran and ``delay_s`` more,
    a live render: the job and the live render's images."""
    job = _sequence(store, _cams(4), steps=steps)
    w.submit_job(job)
    assert engine.step_seen.wait(10)
    time.sleep(delay_s)
    live = RenderTask([_cams(1)[0]], None, 0, 2, 2.0)
    w.submit_render(live)
    return job, live.future.result(10)


def test_a_live_render_is_served_between_the_steps_of_a_sequence_batch(tmp_path):
    engine = CountingEngine(tmp_path / "lib", step_s=0.05, batch=4)
    w, store = _worker(tmp_path, engine)
    try:
        job, images = _live_render_during_a_job(w, store, engine, steps=20)  # the job: ~1 s
        assert images[0].size == (32, 32)
        assert engine.log[:3] == [("start", 4), ("start", 1), ("end", 1)], engine.log  # inside the batch
        assert job.state == "running" and job.frames_done == []
        assert _wait_state(job) == "done"
    finally:
        w.stop()


def test_without_serving_during_jobs_a_live_render_waits_for_the_batch(tmp_path):
    engine = CountingEngine(tmp_path / "lib", step_s=0.02, batch=4)
    store = JobStore(tmp_path / "jobs", EventHub())
    w = Worker(lambda: engine, store, serve_renders_during_jobs=False)
    w.start()
    try:
        while w.state != "ready":
            time.sleep(0.01)
        job, _ = _live_render_during_a_job(w, store, engine, steps=10)
        assert engine.log[:3] == [("start", 4), ("end", 4), ("start", 1)], engine.log
        assert engine.lockstep_seen == []  # nothing served between its steps: never in lockstep
        assert _wait_state(job) == "done"
    finally:
        w.stop()


def test_a_job_runs_in_lockstep_for_a_while_after_a_render(tmp_path, monkeypatch):
    """A job's steps are issued in lockstep with the GPU (the engine's ``lockstep()``) only for
    LOCKSTEP_AFTER_RENDER_S after a render ended: before the first live render, no; right after it,
    yes; once that time has passed with no other render, no again."""
    monkeypatch.setattr(worker_module, "LOCKSTEP_AFTER_RENDER_S", 0.3)
    engine = CountingEngine(tmp_path / "lib", step_s=0.02, batch=4)
    w, store = _worker(tmp_path, engine)
    try:
        job, _ = _live_render_during_a_job(w, store, engine, steps=60, delay_s=0.1)  # the job: ~1.2 s
        assert _wait_state(job) == "done"
        seen = engine.lockstep_seen
        assert len(seen) == 60  # the job's steps only: a live render is never paced in lockstep
        first_on = seen.index(True)
        last_on = len(seen) - 1 - seen[::-1].index(True)
        assert first_on > 0 and not any(seen[:first_on])  # off until the live render ended
        assert all(seen[first_on : last_on + 1])  # on, without a gap, while it was recent
        assert last_on < len(seen) - 1 and not any(seen[last_on + 1 :])  # and off again after 0.3 s
    finally:
        w.stop()


class OutOfMemoryError(RuntimeError):
    """Named as torch's: the worker recognises it by name (it does not import torch)."""


class SmallGpuEngine(CountingEngine):
    """Runs out of memory on any render of more than ``fits`` views."""

    def __init__(self, *args, fits: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fits = fits

    def render(self, cameras, *args, **kwargs):
        if len(cameras) > self.fits:
            self.log.append(("oom", len(cameras)))
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return super().render(cameras, *args, **kwargs)


def test_a_batch_out_of_gpu_memory_is_rendered_again_with_half_as_many_frames(tmp_path):
    engine = SmallGpuEngine(tmp_path / "lib", step_s=0.0, batch=8, fits=2)
    w, store = _worker(tmp_path, engine)
    try:
        assert w.info["sequence_batch"] == 8
        cams = _cams(5)
        job = _sequence(store, cams)
        w.submit_job(job)
        assert _wait_state(job) == "done", job.error
        assert [(what, n) for what, n in engine.log if what != "end"] == [
            ("oom", 5),  # five frames left: all of them at once (nothing is compiled on this engine)
            ("start", 2),  # half of what did not fit, from now on
            ("start", 2),
            ("start", 1),
        ]
        assert job.frames_done == list(range(100, 105))
        assert job.phase_ms is not None and job.phase_ms["encode"] == pytest.approx(0.3)  # the 3 calls that rendered
        assert engine.sequence_batch == 2 and w.info["sequence_batch"] == 2  # /v1/health says so
    finally:
        w.stop()


def test_a_single_frame_out_of_gpu_memory_ends_the_job_with_an_error(tmp_path):
    engine = SmallGpuEngine(tmp_path / "lib", step_s=0.0, batch=4, fits=0)
    w, store = _worker(tmp_path, engine)
    try:
        job = _sequence(store, _cams(3))
        w.submit_job(job)
        assert _wait_state(job) == "error"
        assert "OutOfMemoryError" in (job.error or "") and engine.sequence_batch == 1
    finally:
        w.stop()


def test_an_inversion_runs_in_lockstep_for_a_while_after_a_render(tmp_path, monkeypatch):
    """The same window for an inversion's optimisation steps (the engine's ``lockstep()`` at each step):
    off before the live render, on right after it, off again once LOCKSTEP_AFTER_RENDER_S has passed."""
    monkeypatch.setattr(worker_module, "LOCKSTEP_AFTER_RENDER_S", 0.3)
    engine = CountingEngine(tmp_path / "lib", step_s=0.02)
    w, store = _worker(tmp_path, engine)
    try:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, "PNG")
        spec = InvertSpec(_cams(1), seed=0, preview_every=0, max_pixels=10**6)
        job = store.create("invert", 60, {}, name="probe", spec=spec, references=[buf.getvalue()])
        w.submit_job(job)
        deadline = time.monotonic() + 10
        while job.step < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        live = RenderTask([_cams(1)[0]], None, 0, 2, 2.0)
        w.submit_render(live)
        assert live.future.result(10)[0].size == (32, 32)
        assert _wait_state(job) == "done", job.error
        seen = engine.lockstep_seen
        assert len(seen) == 60  # the inversion's steps only
        first_on = seen.index(True)
        last_on = len(seen) - 1 - seen[::-1].index(True)
        assert first_on > 0 and not any(seen[:first_on])
        assert all(seen[first_on : last_on + 1])
        assert last_on < len(seen) - 1 and not any(seen[last_on + 1 :])
    finally:
        w.stop()


def test_the_docs_quote_the_lockstep_time():
    """README and server/API.md name LOCKSTEP_AFTER_RENDER_S with its value, kept in step with the code."""
    root = Path(__file__).resolve().parents[2]
    quote = f"(`LOCKSTEP_AFTER_RENDER_S`, {worker_module.LOCKSTEP_AFTER_RENDER_S:g} s)"
    for doc in ("README.md", "server/API.md"):
        assert quote in " ".join((root / doc).read_text().split()), doc
