"""Rendering, persistence and errors through the engine (the server's and CLI's entry point)."""

import functools
import time

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_backend.base_model import load_base_model
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.engine import Engine
from viewneti_backend.errors import Cancelled, IncompatibleModelError, InputError, NotFoundError
from viewneti_backend.mapper import NeTIMapper
from viewneti_backend.progress import Progress
from viewneti_backend.testing import build_tiny_pipeline
from viewneti_backend.training import TrainConfig


def cam(az=0.0, el=20.0, size=64):
    return Camera(orbit_pose(az, el, 4.0), 40.0, size, size)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine.load(str(tiny_model_dir), library_dir=tmp_path_factory.mktemp("library"))


def arr(img):
    return np.asarray(img, dtype=np.int16)


def test_render_size_determinism_and_view_dependence(engine):
    a = engine.render([cam(0)], None, seed=3, steps=6, guidance=7.5)[0]
    b = engine.render([cam(0)], None, seed=3, steps=6, guidance=7.5)[0]
    c = engine.render([cam(120)], None, seed=3, steps=6, guidance=7.5)[0]
    d = engine.render([cam(0)], None, seed=4, steps=6, guidance=7.5)[0]
    assert a.size == (64, 64)
    assert np.array_equal(arr(a), arr(b))
    assert np.abs(arr(a) - arr(c)).max() > 0
    assert np.abs(arr(a) - arr(d)).max() > 0
    wide = engine.render([Camera(orbit_pose(0, 20, 4), 40, 96, 64)], None, seed=3, steps=4)[0]
    assert wide.size == (96, 64)


def test_batch_of_views_matches_single_renders(engine):
    cams = [cam(0), cam(90), cam(180)]
    batch = engine.render(cams, None, seed=1, steps=5)
    for c, img in zip(cams, batch):
        single = engine.render([c], None, seed=1, steps=5)[0]
        assert np.abs(arr(single) - arr(img)).max() <= 2  # same maths; float batching noise only


def test_render_can_be_stopped_at_a_step_boundary(engine):
    calls = []
    with pytest.raises(Cancelled):
        engine.render(
            [cam(0)], None, steps=10, should_stop=lambda: len(calls) >= 3, on_step=lambda i, n: calls.append(i)
        )
    assert calls == [1, 2, 3]


def test_timings_are_reported(engine):
    timings = {}
    t0 = time.perf_counter()
    engine.render([cam(33)], None, steps=3, timings=timings)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert set(timings) >= {"encode", "denoise", "decode"}
    phases = [timings[k] for k in ("encode", "denoise", "decode")]
    assert all(ms > 0 for ms in phases) and sum(phases) <= wall_ms


def test_timings_of_several_sizes_are_summed(engine, monkeypatch):
    """One engine call per size batch: each phase adds up over the batches instead of keeping the last."""
    cls = type(engine.pipeline)
    real = cls.__call__
    fixed = {"encode": 1.5, "denoise": 10.0, "decode": 2.5}

    def call(self, *args, timings=None, **kwargs):
        images = real(self, *args, timings=timings, **kwargs)
        if timings is not None:
            timings.update(fixed)
        return images

    monkeypatch.setattr(cls, "__call__", call)
    timings: dict = {}
    images = engine.render([cam(10), cam(20).with_size(48, 32), cam(30)], None, steps=2, timings=timings)
    assert [im.size for im in images] == [(64, 64), (48, 32), (64, 64)]
    assert timings == {"eager": 0.0, **{k: 2 * v for k, v in fixed.items()}}


@pytest.mark.parametrize("sampler", ["dpmsolver++", "euler", "ddim"])
def test_sampling_loop_never_searches_for_its_timestep(engine, monkeypatch, sampler):
    """The render's scheduler starts at its first step: the timestep search (a GPU sync in the middle of the
    loop on CUDA) is never run, and the latents are bitwise those of a fresh scheduler, which searches."""
    from viewneti_backend.pipeline import ViewNeTIPipeline

    pipe = ViewNeTIPipeline(engine.base, engine.pipeline.view_mapper, sampler=sampler)
    _, mapper = engine.object_mapper(None)
    with_view, c = pipe.view_mapper is not None, cam(10)
    fresh = engine.base.sampling_scheduler(sampler)
    fresh.set_timesteps(5)
    cond = pipe.view_encodings([c], mapper, fresh.timesteps, with_view, use_cache=False).to(engine.base.dtype)
    noise = pipe.initial_latents(2, 1, c.height, c.width, float(fresh.init_noise_sigma))
    searched = pipe.denoise(cond, noise, fresh, 7.5)
    if hasattr(type(fresh), "index_for_timestep"):

        def no_search(self, *args, **kwargs):
            raise AssertionError("the sampling loop searched for its timestep")

        monkeypatch.setattr(type(fresh), "index_for_timestep", no_search)
    else:  # DDIM computes its step from the timestep itself
        assert sampler == "ddim"
    render = functools.partial(pipe, [c], mapper, seed=2, steps=5, guidance=7.5, with_view=with_view)
    first, again = render(output="latent", use_cache=False), render(output="latent", use_cache=False)
    assert torch.equal(pipe.scheduler(5).timesteps, fresh.timesteps)
    assert torch.equal(first, searched) and torch.equal(again, searched)


def test_schedulers_follow_the_scheduler_config_as_it_is_now(engine, monkeypatch):
    """Callers (benchmarks/toy_timestep_spacing.py) change the base model's scheduler config between renders:
    each render's scheduler must use the schedule of that moment."""
    pipe = engine.pipeline
    monkeypatch.setitem(engine.base.scheduler_config, "timestep_spacing", "leading")
    leading = pipe.scheduler(4).timesteps.tolist()
    monkeypatch.setitem(engine.base.scheduler_config, "timestep_spacing", "trailing")
    trailing = pipe.scheduler(4).timesteps.tolist()
    assert leading != trailing and trailing[0] == engine.base.num_train_timesteps - 1


def test_each_render_gets_its_own_scheduler(engine):
    pipe = engine.pipeline
    a, b = pipe.scheduler(4), pipe.scheduler(4)
    assert a is not b and a.timesteps is not b.timesteps
    sample = torch.zeros(1, 4, 8, 8)
    a.step(torch.ones_like(sample), a.timesteps[0], sample)  # advances a's state only
    assert a.step_index == 1 and b.step_index in (None, 0) and b.begin_index == 0
    c = pipe.scheduler(4)  # copied from the same unused template: a's step did not reach it
    assert c.step_index in (None, 0) and c.begin_index == 0 and torch.equal(c.timesteps, b.timesteps)


def test_schedulers_are_built_once_per_step_count_and_copied(engine, monkeypatch):
    from viewneti_backend import pipeline as pipeline_module
    from viewneti_backend.pipeline import ViewNeTIPipeline

    pipe = ViewNeTIPipeline(engine.base, engine.pipeline.view_mapper)
    built = []
    original = type(engine.base).sampling_scheduler
    monkeypatch.setattr(
        type(engine.base), "sampling_scheduler", lambda self, name: built.append(name) or original(self, name)
    )
    first = [pipe.scheduler(4).timesteps.tolist() for _ in range(3)]
    assert len(built) == 1 and first[0] == first[1] == first[2]
    pipe.scheduler(5)
    assert len(built) == 2
    monkeypatch.setattr(pipeline_module, "MAX_SCHEDULER_TEMPLATES", 2)
    pipe.scheduler(6)  # a third step count: the least recently used (4) is dropped
    pipe.scheduler(5)
    assert len(built) == 3
    pipe.scheduler(4)
    assert len(built) == 4


def test_schedulers_asked_from_two_threads_at_once(engine):
    """The server's compile thread (run_graphs) and its worker both ask for schedulers, also while old
    templates are being dropped: every caller gets a scheduler of its step count, none an error."""
    import threading

    from viewneti_backend.pipeline import MAX_SCHEDULER_TEMPLATES, ViewNeTIPipeline

    pipe = ViewNeTIPipeline(engine.base, engine.pipeline.view_mapper)
    errors, counts = [], list(range(1, 3 * MAX_SCHEDULER_TEMPLATES))

    def ask(order):
        try:
            for steps in order * 3:
                assert len(pipe.scheduler(steps).timesteps) == steps
        except Exception as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(counts[::step],)) for step in (1, -1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_invert_saves_a_token_that_renders_and_survives_reload(engine, tiny_model_dir):
    ref = engine.render([cam(30)], None, seed=0, steps=5)[0]
    events = []
    entry = engine.invert([ref], [cam(30)], "my_obj", steps=4, on_progress=events.append, preview_every=2)
    assert entry["name"] == "my_obj" and not entry["builtin"] and entry["steps"] == 4
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.loss is not None and e.loss > 0 and e.eta_s is not None and e.eta_s >= 0 for e in events)
    assert events[1].preview is not None and events[0].preview is None
    img = engine.render([cam(200)], "my_obj", seed=0, steps=5)[0]
    # reload from disk: same token, same image
    fresh = Engine.load(str(tiny_model_dir), library_dir=engine.library.user_dir)
    assert "my_obj" in [o["name"] for o in fresh.list_objects()]
    again = fresh.render([cam(200)], "my_obj", seed=0, steps=5)[0]
    assert np.array_equal(arr(img), arr(again))
    with pytest.raises(InputError, match="already exists"):
        engine.invert([ref], [cam(30)], "my_obj", steps=1)
    engine.delete_object("my_obj")
    assert not engine.has_object("my_obj")


def test_inversion_previews_run_uncompiled_until_their_size_is_compiled(engine, monkeypatch, eager_flags):
    """A compiled engine's preview at a size with no compiled graph must not compile it inside the job."""
    from viewneti_backend.render_shape import RenderShape

    ref = engine.render([cam(30)], None, seed=0, steps=2)[0]
    eager_flags.clear()
    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")  # compiled, with no shape ready yet
    monkeypatch.setattr(engine, "_compiled_training_sizes", set())  # this engine is shared by the module's tests
    engine.invert([ref], [cam(30)], "preview_a", steps=2, preview_every=1, on_progress=lambda p: None)
    assert eager_flags == [True, True]
    width, height = engine.training_size(ref)
    monkeypatch.setattr(engine, "ready_shapes", {RenderShape(1, width, height, engine.sampling.guidance != 1.0)})
    engine.invert([ref], [cam(30)], "preview_b", steps=2, preview_every=1, on_progress=lambda p: None)
    assert eager_flags == [True, True, False, False]  # compiled now: the compiled graphs
    for name in ("preview_a", "preview_b"):
        engine.delete_object(name)


def test_invert_takes_training_options_from_a_config_without_changing_it(engine, monkeypatch):
    import viewneti_backend.engine as engine_module

    seen = []
    real_trainer = engine_module.Trainer
    monkeypatch.setattr(engine_module, "Trainer", lambda cfg, *a, **k: seen.append(cfg) or real_trainer(cfg, *a, **k))
    options = TrainConfig(augmentation_pool=2, lr=5e-4)
    engine.invert([Image.new("RGB", (64, 64), "red")], [cam(0)], "pooled", steps=2, seed=3, config=options)
    (cfg,) = seen
    assert (cfg.mode, cfg.steps, cfg.seed, cfg.augmentation_pool, cfg.lr) == (5, 2, 3, 2, 5e-4)
    assert (cfg.width, cfg.height) == engine.training_size(Image.new("RGB", (64, 64)))  # from the reference image
    assert options == TrainConfig(augmentation_pool=2, lr=5e-4), "the caller's config must not be modified"
    engine.delete_object("pooled")


def test_cancelled_inversion_writes_nothing(engine):
    ref = Image.new("RGB", (64, 64), "red")
    steps = []
    with pytest.raises(Cancelled):
        engine.invert(
            [ref],
            [cam(0)],
            "never",
            steps=50,
            on_progress=lambda e: steps.append(e.step),
            should_stop=lambda: len(steps) >= 2,
        )
    assert len(steps) == 2
    assert not engine.has_object("never")
    assert not any(p.name.startswith((".never", "never")) for p in engine.library.user_dir.iterdir())


def test_mapper_save_load_gives_identical_renders(engine, tmp_path):
    mapper = engine.library.load("thing_a")
    mapper.save_pretrained(tmp_path / "copy")
    loaded = NeTIMapper.from_pretrained(tmp_path / "copy")
    for k, v in mapper.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k])
    assert loaded.config == mapper.config
    a = engine.pipeline([cam(10)], mapper, seed=2, steps=5)[0]
    b = engine.pipeline([cam(10)], loaded, seed=2, steps=5)[0]
    assert np.array_equal(arr(a), arr(b))


def test_token_from_another_base_model_fails_clearly(tiny_model_dir, tmp_path):
    other = build_tiny_pipeline(tmp_path / "other", seed=7)
    base = load_base_model(other, device="cpu")
    with pytest.raises(IncompatibleModelError, match="trained against base model"):
        NeTIMapper.from_pretrained(
            tiny_model_dir / "viewneti" / "objects" / "thing_a", expect_fingerprint=base.fingerprint
        )


def test_fingerprint_is_stable_across_dtypes(tiny_model_dir, tiny_base):
    bf16 = load_base_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert bf16.fingerprint == tiny_base.fingerprint


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda e: e.render([cam(0)], "nope", steps=2), NotFoundError, "unknown object"),
        (lambda e: e.render([cam(0)], "../etc", steps=2), InputError, "invalid object name"),
        (lambda e: e.render([cam(0), cam(0, size=96)][:1], None, steps=0), InputError, "steps"),
        (lambda e: e.invert([Image.new("RGB", (8, 8))], [], "x", 1), InputError, "one camera per"),
        (lambda e: e.invert([Image.new("RGB", (8, 8))], [cam(0)], "a/b", 1), InputError, "invalid object name"),
        (lambda e: e.delete_object("thing_a"), InputError, "built-in"),
    ],
)
def test_bad_inputs_raise_clear_errors(engine, call, error, message):
    with pytest.raises(error, match=message):
        call(engine)


def test_model_loading_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_base_model(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(InputError, match="not a Stable-Diffusion-architecture"):
        load_base_model(str(tmp_path / "half"), device="cpu")
    with pytest.raises(InputError, match="unknown dtype"):
        load_base_model(str(tmp_path / "half"), device="cpu", dtype="float8")


def test_epsilon_prediction_models_are_supported(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "eps", prediction_type="epsilon")
    base = load_base_model(folder, device="cpu")
    assert base.prediction_type == "epsilon"
    from tests.core.test_training import toy_scene
    from viewneti_backend.training import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(mode=0, steps=2, batch_size=1, grad_accum=1), base, [toy_scene("a", 0)], device="cpu")
    assert trainer.train(progress=False).step == 2


def test_uncompiled_shapes_render_eager_until_compiled(engine, monkeypatch):
    """A compiled engine never blocks a render on a compile: a shape without a compiled graph runs the
    eager modules, is reported once per render to on_uncompiled_shape, and after compile_shape (blank
    conditioning: no mapper, cache or text encoder touched) renders on the compiled path. Here the
    'compiled' modules are the eager ones, so both paths must give the same pixels."""
    from viewneti_backend.render_shape import RenderShape

    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")
    monkeypatch.setattr(engine, "ready_shapes", set())
    seen: list[RenderShape] = []
    monkeypatch.setattr(engine, "on_uncompiled_shape", seen.append)
    c = cam(30)
    timings: dict = {}
    eager_img = engine.render([c], None, seed=3, steps=2, timings=timings)[0]
    assert timings["eager"] == 1.0 and seen == [RenderShape(1, 64, 64, True)]
    engine.pipeline.clear_cache()

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("compile_shape ran the text encoder")

    with monkeypatch.context() as m:
        m.setattr(engine.base.text, "encode", no_text_encoder)
        assert engine.compile_shape(RenderShape(1, 64, 64)) >= 0.0
    assert engine.pipeline.cached_encodings == 0 and engine.ready_shapes == {RenderShape(1, 64, 64)}
    timings = {}
    compiled_img = engine.render([c], None, seed=3, steps=2, timings=timings)[0]
    assert timings["eager"] == 0.0 and len(seen) == 1
    assert np.array_equal(arr(eager_img), arr(compiled_img))
    engine.render([c, cam(60)], None, seed=3, steps=2)  # two views per call: another shape
    assert seen[-1] == RenderShape(2, 64, 64, True)


def test_a_compiled_render_that_raises_is_redone_eager_then_given_up(engine, monkeypatch):
    """A compiled graph that raises inside torch (an H200 run hit an assertion in CUDA-graph trees)
    costs the user no image: the render is redone eager with the same pixels, the failure is counted,
    and after MAX_COMPILED_FAILURES at one shape that shape renders eager for good. Input errors,
    cancellation and eager failures are not retried."""
    from viewneti_backend.engine import MAX_COMPILED_FAILURES
    from viewneti_backend.errors import Cancelled
    from viewneti_backend.render_shape import RenderShape

    shape = RenderShape(1, 64, 64, True)
    c = cam(45)
    reference = engine.render([c], None, seed=5, steps=2)[0]
    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")
    monkeypatch.setattr(engine, "ready_shapes", {shape})
    monkeypatch.setattr(engine, "compiled_failures", {})
    real_call = type(engine.pipeline).__call__
    calls: list[bool] = []

    def flaky(self, *args, eager=False, **kwargs):
        calls.append(eager)
        if not eager:
            raise AssertionError("len(node.tensor_weakrefs) == len(node.stack_traces)")
        return real_call(self, *args, eager=eager, **kwargs)

    monkeypatch.setattr(type(engine.pipeline), "__call__", flaky)
    timings: dict = {}
    img = engine.render([c], None, seed=5, steps=2, timings=timings)[0]
    assert calls == [False, True] and timings["eager"] == 1.0
    assert np.array_equal(arr(img), arr(reference))
    failure = engine.compiled_failures[shape.label()]
    assert failure["count"] == 1 and not failure["gave_up"] and "tensor_weakrefs" in failure["last_error"]
    assert shape in engine.ready_shapes  # one failure: the graphs get another chance
    for _ in range(MAX_COMPILED_FAILURES - 1):
        engine.render([c], None, seed=5, steps=2)
    assert engine.compiled_failures[shape.label()]["gave_up"] and shape not in engine.ready_shapes
    calls.clear()
    engine.render([c], None, seed=5, steps=2)
    assert calls == [True]  # given up: straight to eager

    def cancelled(self, *args, eager=False, **kwargs):
        raise Cancelled("stopped at step 1 of 2")

    monkeypatch.setattr(engine, "ready_shapes", {shape})
    monkeypatch.setattr(type(engine.pipeline), "__call__", cancelled)
    with pytest.raises(Cancelled):
        engine.render([c], None, seed=5, steps=2)


def test_render_shape_parse_and_label():
    from viewneti_backend.errors import InputError
    from viewneti_backend.render_shape import RenderShape

    assert RenderShape.parse("768x576") == RenderShape(1, 768, 576)
    assert RenderShape.parse("768X576x4") == RenderShape(4, 768, 576)
    assert RenderShape(4, 768, 576).label() == "768x576x4" and RenderShape(1, 512, 512).label() == "512x512"
    for shape in (RenderShape(2, 64, 48, cfg=False), RenderShape(1, 512, 512, cfg=False), RenderShape(3, 8, 16)):
        assert RenderShape.parse(shape.label()) == shape  # labels go to the compile helper and back
    for bad in ("512", "axb", "0x64", "64x64x0", "1x2x3x4", "64x64-cfg"):
        with pytest.raises(InputError, match="width x height"):
            RenderShape.parse(bad)


def test_inversion_eta_leaves_out_the_first_step(engine, monkeypatch):
    """Step 1 of an inversion also pays compilation (minutes at SD 2 scale): from step 2 on, the ETA
    comes from the pace of the steps after it, not from the average that includes step 1."""
    import types

    import viewneti_backend.engine as engine_module

    clock = iter([0.0, 100.0] + [100.0 + k for k in range(1, 10)])  # start, step 1 at 100 s, then 1 s a step
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    ref = Image.new("RGB", (64, 64), "blue")
    events = []
    engine.invert([ref], [cam(10)], "eta_probe", steps=5, on_progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert events[0].eta_s == pytest.approx(100.0 * 4)  # only step 1 known: its own time
    assert [e.eta_s for e in events[1:]] == pytest.approx([3.0, 2.0, 1.0, 0.0])  # 1 s a step after step 1
    engine.delete_object("eta_probe")


def test_first_compiled_inversion_at_a_size_says_it_is_compiling(engine, monkeypatch):
    """On a compiled engine, the first inversion at a training size sends one step-0 "compiling" event
    before training (step 1 compiles the training graph: minutes at SD 2 scale on CUDA, no sign of life
    otherwise); later inversions at that size, and every inversion of an eager engine, send none. Nothing
    is compiled on the CPU: only the bookkeeping is under test."""
    ref = Image.new("RGB", (64, 64), "green")
    eager = []
    engine.invert([ref], [cam(5)], "phase_eager", steps=1, on_progress=eager.append)
    engine.delete_object("phase_eager")
    assert [(e.step, e.phase) for e in eager] == [(1, "training")]

    monkeypatch.setattr(engine, "compile_mode", "reduce-overhead")
    assert engine.compiled_training_sizes == frozenset()  # this module's engine compiled no training graph
    first, second, wide = [], [], []
    engine.invert([ref], [cam(5)], "phase_first", steps=2, on_progress=first.append)
    engine.invert([ref], [cam(5)], "phase_second", steps=1, on_progress=second.append)
    engine.invert(
        [Image.new("RGB", (96, 64), "green")],
        [Camera(orbit_pose(5, 20, 4), 40.0, 96, 64)],
        "phase_wide",
        steps=1,
        on_progress=wide.append,
    )
    for name in ("phase_first", "phase_second", "phase_wide"):
        engine.delete_object(name)
    assert first[0] == Progress(step=0, total=2, loss=None, eta_s=None, phase="compiling", preview=None)
    assert [(e.step, e.phase) for e in first[1:]] == [(1, "training"), (2, "training")]
    assert first[1].eta_s is None and first[2].eta_s is not None  # a compiling step 1 says nothing of the pace
    assert second[0].eta_s is not None
    assert [(e.step, e.phase) for e in second] == [(1, "training")]  # this size is compiled already
    assert [(e.step, e.phase) for e in wide] == [(0, "compiling"), (1, "training")]  # a new size compiles
