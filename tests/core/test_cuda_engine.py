"""The server's CUDA path: compiled UNet + VAE (CUDA graphs), render, invert through the compiled UNet
(training graph), render again, and agreement with the eager path. Needs a CUDA GPU (run on the
device machine); CI has none, so these are skipped there with that reason."""

import functools
import threading
import time

import numpy as np
import pytest
import torch

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled (CUDA-graph) path only exists there"
)


def _psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean() / 255.0**2
    return float("inf") if mse == 0 else -10 * np.log10(mse)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    compiled = Engine.load(device="cuda", library_dir=tmp_path_factory.mktemp("lib_c"))
    eager = Engine.load(device="cuda", library_dir=tmp_path_factory.mktemp("lib_e"), compile=False)
    return compiled, eager


def test_compiled_render_matches_eager(engines):
    compiled, eager = engines
    cams = [Camera(orbit_pose(a, 25.0, 3.6), 40.0, 64, 64) for a in (0.0, 120.0)]
    a = compiled.render(cams, seed=3, steps=10, guidance=2.0)
    b = eager.render(cams, seed=3, steps=10, guidance=2.0)
    for x, y in zip(a, b):
        assert _psnr(x, y) > 30.0, _psnr(x, y)
    assert _psnr(a[0], a[1]) < 30.0, "two poses rendered the same image"


def test_render_phases_are_timed_on_the_gpu_and_add_up_to_the_wall_time(engines):
    """Phase boundaries are CUDA events (no sync between phases); each phase covers its GPU work."""
    compiled, _ = engines
    cam = Camera(orbit_pose(77.0, 25.0, 3.6), 40.0, 64, 64)
    _, mapper = compiled.object_mapper(None)
    render = functools.partial(compiled.pipeline, [cam], mapper, seed=1, steps=6, guidance=2.0, use_cache=False)
    render()  # this size's graphs exist before timing
    timings: dict = {}
    t0 = time.perf_counter()
    render(timings=timings)
    wall_ms = (time.perf_counter() - t0) * 1e3
    phases = [timings[k] for k in ("encode", "denoise", "decode")]
    assert all(ms > 0 for ms in phases), timings
    assert 0.8 * wall_ms < sum(phases) <= wall_ms, (timings, wall_ms)


def test_compiled_engine_inverts_then_renders(engines):
    compiled, _ = engines
    cam = Camera(orbit_pose(30.0, 25.0, 3.6), 40.0, 64, 64)
    reference = compiled.render([cam], seed=0, steps=10, guidance=2.0)[0]
    seen = []
    entry = compiled.invert([reference], [cam], "cuda_probe", steps=12, on_progress=seen.append, preview_every=6)
    # the first inversion at this size compiles the training graph and says so first (step 0, no ETA)
    assert seen[0].phase == "compiling" and seen[0].step == 0 and seen[0].eta_s is None
    events = seen[1:]
    assert entry["name"] == "cuda_probe" and [e.step for e in events] == list(range(1, 13))
    assert all(e.phase == "training" for e in events)
    assert all(e.loss is not None and np.isfinite(e.loss) for e in events)
    assert events[5].preview is not None and events[5].preview.size == (64, 64)
    # renders keep working after the training graph ran, at a new batch size too
    views = compiled.render([cam, cam.with_size(64, 64)], "cuda_probe", seed=1, steps=10, guidance=2.0)
    single = compiled.render([cam], "cuda_probe", seed=1, steps=10, guidance=2.0)[0]
    assert _psnr(views[0], single) > 30.0
    assert np.asarray(single).std() > 1.0


def test_an_inversion_in_lockstep_reports_each_step_with_the_gpu_idle(engines):
    """While ``lockstep()`` is true (the server: a live render ended recently), each optimisation step
    is reported with no training step queued behind it, so a render served from the progress callback
    starts at once (the order is tested on the CPU in test_training.py)."""
    compiled, _ = engines
    cam = Camera(orbit_pose(60.0, 25.0, 3.6), 40.0, 64, 64)
    reference = compiled.render([cam], seed=0, steps=10, guidance=2.0)[0]
    idle: list[bool] = []

    def on_progress(p) -> None:
        if p.phase == "training":
            idle.append(torch.cuda.current_stream().query())

    compiled.invert([reference], [cam], "cuda_lockstep", steps=6, on_progress=on_progress, lockstep=lambda: True)
    assert idle == [True] * 6


def test_compiled_graphs_run_first_on_threads_other_than_the_main_one(engines):
    """The server records render graphs on its compiler thread, then renders and inverts on its worker
    thread: a compiled module's first run on a thread that did not import inductor (an inversion's
    training graph there) failed with a bare AssertionError on torch 2.11 (cudagraph trees' TLS)."""
    from viewneti_backend.render_shape import RenderShape
    from viewneti_backend.training import TrainConfig

    compiled, _ = engines
    cam = Camera(orbit_pose(100.0, 25.0, 3.6), 40.0, 48, 48)  # a size no other test compiles
    reference = compiled.render([cam.with_size(64, 64)], seed=0, steps=10, guidance=2.0)[0]
    out: dict = {}

    def on_thread(name, fn):
        def run():
            try:
                out[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                out[name] = exc

        t = threading.Thread(target=run, name=name)
        t.start()
        t.join(600)

    on_thread("compiler", lambda: compiled.compile_shape(RenderShape(1, 48, 48)))
    assert not isinstance(out["compiler"], BaseException), repr(out["compiler"])
    assert RenderShape(1, 48, 48) in compiled.ready_shapes
    worker_calls = lambda: (  # noqa: E731
        compiled.render([cam], seed=1, steps=10, guidance=2.0)[0],
        compiled.invert([reference], [cam], "thread_probe", steps=3, config=TrainConfig(width=48, height=48)),
        compiled.render([cam], "thread_probe", seed=1, steps=10, guidance=2.0)[0],
    )
    on_thread("worker", worker_calls)
    assert not isinstance(out["worker"], BaseException), repr(out["worker"])
    before, entry, after = out["worker"]
    assert entry["name"] == "thread_probe" and before.size == after.size == (48, 48)
    assert np.asarray(after).std() > 1.0


def test_compiled_engine_prefers_cudnn_attention_on_hopper(engines):
    """compile_base_model puts cuDNN attention first on sm90+ (faster kernels under CUDA graphs); the
    eager engine was loaded first, so the order it ran with was torch's own."""
    from torch.nn.attention import SDPBackend

    order = torch._C._get_sdp_priority_order()
    if torch.cuda.get_device_capability() >= (9, 0):
        assert order[0] == SDPBackend.CUDNN_ATTENTION.value, order
    else:
        assert order[0] != SDPBackend.CUDNN_ATTENTION.value, order


def test_loss_readback_waits_for_its_own_step_only():
    """ScalarReadback (the training loop's one-step-late loss read) returns once its value is computed,
    while work queued after it is still running: reading it does not drain the stream."""
    from viewneti_backend.transfer import ScalarReadback

    x = torch.arange(10.0, device="cuda")
    readback = ScalarReadback(x.sum())
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU work queued after the loss
    assert readback.value() == 45.0
    assert not torch.cuda.current_stream().query(), (
        "the later work had to be finished: the read synchronised the stream"
    )
    torch.cuda.synchronize()
    assert readback.ready()


def test_a_stoppable_render_is_paced_on_the_gpu_with_the_same_latents(engines):
    """On CUDA a render that can be stopped or reports progress waits for its steps' CUDA events
    (step_pacer; the order of the waits is tested on the CPU with fake events): the latents are bitwise
    those of the same render unpaced, every step is reported once, in order (in lockstep, with the GPU
    idle: no step queued), and a stop still stops."""
    from viewneti_backend.errors import Cancelled

    compiled, _ = engines
    pipe = compiled.pipeline
    _, mapper = compiled.object_mapper(None)
    cams = [Camera(orbit_pose(30.0, 25.0, 3.6), 40.0, 64, 64)]
    plain = pipe(cams, mapper, seed=5, steps=12, guidance=2.0, output="latent")
    reported: list[int] = []
    paced = pipe(
        cams, mapper, seed=5, steps=12, guidance=2.0, output="latent", on_step=lambda k, total: reported.append(k)
    )
    assert torch.equal(plain, paced), f"max |diff| {(plain - paced).abs().max().item()}"
    assert reported == list(range(1, 13))
    idle_when_reported: list[bool] = []  # in lockstep, nothing is left queued when a step is reported
    locked = pipe(
        cams,
        mapper,
        seed=5,
        steps=12,
        guidance=2.0,
        output="latent",
        on_step=lambda k, total: idle_when_reported.append(torch.cuda.current_stream().query()),
        lockstep=lambda: True,
    )
    assert torch.equal(plain, locked), f"max |diff| {(plain - locked).abs().max().item()}"
    assert idle_when_reported == [True] * 12
    checks: list[int] = []

    def stop_at_5() -> bool:
        checks.append(1)
        return len(checks) > 5

    with pytest.raises(Cancelled, match="stopped at step 5 of 12"):
        pipe(cams, mapper, seed=5, steps=12, guidance=2.0, output="latent", should_stop=stop_at_5)


def test_a_render_between_the_steps_of_another_through_the_compiled_graphs(engines):
    """The server serves a live frame between two denoising steps of a sequence's frames: both renders
    replay the compiled UNet (CUDA graph trees; here the same graph, the case where the inner replay
    reuses the outer's memory) and each gives bitwise the latents it gives alone."""
    compiled, _ = engines
    pipe = compiled.pipeline
    _, mapper = compiled.object_mapper(None)
    outer_cams = [Camera(orbit_pose(50.0, 25.0, 3.6), 40.0, 64, 64)]
    inner_cams = [Camera(orbit_pose(140.0, 25.0, 3.6), 40.0, 64, 64)]
    render = functools.partial(pipe, object_mapper=mapper, steps=8, guidance=2.0, output="latent")
    outer_alone, inner_alone = render(outer_cams, seed=2), render(inner_cams, seed=9)
    inner: list[torch.Tensor] = []

    def on_step(step: int, steps: int) -> None:
        if step in (3, 6):
            inner.append(render(inner_cams, seed=9, should_stop=lambda: False))

    outer = render(outer_cams, seed=2, should_stop=lambda: False, on_step=on_step)
    assert len(inner) == 2
    assert torch.equal(outer, outer_alone), f"max |diff| {(outer - outer_alone).abs().max().item()}"
    assert all(torch.equal(x, inner_alone) for x in inner)
