"""A sequence job whose batch of frames runs out of real GPU memory: the worker renders the same frames
again, fewer at a time, and the engine keeps working afterwards. The CPU tests
(``test_sequence_units.py``) cover the worker's side with a fake engine that raises; this one makes the
CUDA caching allocator refuse a real allocation, inside the uncompiled UNet whose CUDA graphs the engine
drops on the way. Needs a CUDA GPU (run on the device machine); CI has none, so it is skipped there with
that reason."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from server.events import EventHub
from server.jobs import JobStore, SequenceSpec
from server.worker import Worker
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine
from viewneti_backend.evaluation import masked_psnr

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the caching allocator's out-of-memory path"
)

SIZE, STEPS, GUIDANCE, SEED = 256, 4, 2.0, 5


def _extra_bytes(engine: Engine, cameras: list[Camera]) -> int:
    """GPU memory one render of these views allocates above what is allocated before it (its peak)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    engine.render(cameras, None, SEED, STEPS, GUIDANCE)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_a_sequence_batch_out_of_gpu_memory_renders_again_with_fewer_frames(tmp_path):
    engine = Engine.load(device="cuda", library_dir=tmp_path / "lib", compile=False)
    assert engine.sequence_batch == 8
    cams = [Camera(orbit_pose(20.0 * k, 20.0, 3.6), 40.0, SIZE, SIZE) for k in range(8)]
    store = JobStore(tmp_path / "jobs", EventHub())
    worker = Worker(lambda: engine, store, warmup=[], compile_new_shapes=False)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while worker.state != "ready" and time.monotonic() < deadline:  # first-use priming done
            time.sleep(0.05)
        assert worker.state == "ready", worker.load_error
        assert worker.info["sequence_batch"] == 8
        singles = [engine.render([c], None, SEED, STEPS, GUIDANCE)[0] for c in cams]
        # half a batch: the plain call's extra memory; then recorded into a CUDA graph and replayed
        extra4 = _extra_bytes(engine, cams[:4])
        for _ in range(2):
            engine.render(cams[:4], None, SEED, STEPS, GUIDANCE)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        total = torch.cuda.get_device_properties(0).total_memory
        # room for 3/4 of what a plain call of 4 views takes: 8 views cannot fit
        limit = reserved + extra4 * 3 // 4
        print(
            f"plain call at 4 views {extra4 / 2**20:.1f} MiB, reserved {reserved / 2**20:.1f}, limit {limit / 2**20:.1f}"
        )
        torch.cuda.set_per_process_memory_fraction(limit / total)
        spec = SequenceSpec(tuple(cams), tuple(range(1, 9)), None, SEED, STEPS, GUIDANCE)
        job = store.create("sequence", len(cams), {}, spec=spec)
        worker.submit_job(job)
        deadline = time.monotonic() + 300
        while job.state not in ("done", "error", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.state == "done", job.error
        print(f"sequence batch after the job: {engine.sequence_batch}")
        assert 1 <= engine.sequence_batch < 8  # halved until the frames fit (4 unless the graphs' memory is needed)
        assert worker.info["sequence_batch"] == engine.sequence_batch  # what /v1/health reports
        assert job.frames_done == list(range(1, 9))
        for k in range(len(cams)):
            path = store.frame_path(job, k + 1)
            assert path is not None
            with Image.open(path) as im:
                frame = np.asarray(im.convert("RGB"))
            assert masked_psnr(frame, singles[k]) > 30.0, (k, masked_psnr(frame, singles[k]))
        assert masked_psnr(singles[0], singles[4]) < 30.0, "two poses rendered the same image"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        worker.stop()
    # with the GPU's memory back, a full batch renders again (plain UNet: its graphs were dropped)
    again = engine.render(cams, None, SEED, STEPS, GUIDANCE)
    assert all(masked_psnr(a, s) > 30.0 for a, s in zip(again, singles))
