"""GraphedUNet (viewneti_backend/unet_graphs.py): which calls run plain, which record, which replay.

The bookkeeping is checked on the CPU with a stand-in recorder that counts; the real CUDA-graph
recording is checked against the plain UNet at the end (CUDA only, marked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from viewneti_backend.unet_graphs import GraphedUNet


class CountingUNet(nn.Module):
    """A UNet-shaped function: (sample, t, encoder_hidden_states) -> (sample * t + mean(ehs),)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True, **kwargs):
        self.calls += 1
        out = sample * timestep * self.scale + encoder_hidden_states.mean()
        return {"sample": out} if return_dict else (out,)


class FakeStep:
    """Stands in for a recorded graph: replays by calling the UNet, counts replays."""

    def __init__(self, unet, fail: bool) -> None:
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.unet, self.replays = unet, 0

    def __call__(self, sample, timestep, encoder_hidden_states):
        self.replays += 1
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class CpuGraphedUNet(GraphedUNet):
    """GraphedUNet with recording allowed on the CPU through FakeStep."""

    def __init__(self, unet, max_graphs: int = 2, fail: bool = False) -> None:
        super().__init__(unet, max_graphs)
        self.fail, self.records = fail, 0

    def _graphable(self, sample):
        return True

    def _record(self, sample, timestep, encoder_hidden_states):
        self.records += 1
        return FakeStep(self.unet, self.fail)


def inputs(h: int = 4, batch: int = 2):
    return torch.randn(batch, 4, h, h), torch.tensor(3.0), torch.randn(batch, 8, 16)


@torch.no_grad()
def test_first_call_plain_second_records_then_replays_with_the_same_results():
    unet = CountingUNet()
    graphed = CpuGraphedUNet(unet)
    for i in range(4):
        x, t, ehs = inputs()
        want = unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
        got = graphed(x, t, encoder_hidden_states=ehs, return_dict=False)
        assert isinstance(got, tuple) and torch.equal(got[0], want)
        assert graphed.records == (0 if i == 0 else 1)  # recorded once, at the second call
    assert graphed.recorded == 1
    step = next(iter(graphed._graphs.values()))
    assert isinstance(step, FakeStep) and step.replays == 3


@torch.no_grad()
def test_at_most_max_graphs_are_kept_and_an_evicted_shape_warms_up_again():
    graphed = CpuGraphedUNet(CountingUNet(), max_graphs=2)
    for h in (4, 6, 8):
        for _ in range(2):
            graphed(*inputs(h)[:2], encoder_hidden_states=inputs(h)[2], return_dict=False)
    assert graphed.recorded == 2 and graphed.records == 3
    shapes = [key[0] for key in graphed._graphs]
    assert shapes == [(2, 4, 6, 6), (2, 4, 8, 8)]  # the least recently used (4x4) went first
    x, t, ehs = inputs(4)
    graphed(x, t, encoder_hidden_states=ehs, return_dict=False)  # plain again: its warm-up
    assert graphed.records == 3
    graphed(x, t, encoder_hidden_states=ehs, return_dict=False)
    assert graphed.records == 4 and graphed.recorded == 2


@torch.no_grad()
def test_a_shape_whose_recording_fails_runs_plain_from_then_on():
    unet = CountingUNet()
    graphed = CpuGraphedUNet(unet, fail=True)
    x, t, ehs = inputs()
    want = unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
    for _ in range(4):
        assert torch.equal(graphed(x, t, encoder_hidden_states=ehs, return_dict=False)[0], want)
    assert graphed.records == 1 and graphed.recorded == 0
    assert "stream is capturing" in next(iter(graphed.failed.values()))


def test_gradients_other_arguments_and_cpu_inputs_run_plain():
    unet = CountingUNet()
    graphed = CpuGraphedUNet(unet)
    x, t, ehs = inputs()
    for _ in range(3):  # gradients on: a training step, never recorded
        out = graphed(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
        out.sum().backward()
    assert graphed.records == 0 and unet.scale.grad is not None
    with torch.no_grad():
        for _ in range(3):
            assert "sample" in graphed(x, t, encoder_hidden_states=ehs)  # return_dict=True: plain
            graphed(x, t, encoder_hidden_states=ehs, return_dict=False, cross_attention_kwargs={})
        assert graphed.records == 0
        real = GraphedUNet(unet)  # the real class records CUDA inputs only
        for _ in range(3):
            real(x, t, encoder_hidden_states=ehs, return_dict=False)
        assert real.recorded == 0 and not real.failed


def test_a_render_out_of_gpu_memory_drops_the_recorded_graphs(monkeypatch):
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine
    from viewneti_backend.pipeline import ViewNeTIPipeline

    engine = Engine.load(device="cpu", compile="off")
    graphed = CpuGraphedUNet(CountingUNet())
    engine.base.eager["unet"] = graphed
    with torch.no_grad():
        for _ in range(2):
            graphed(*inputs()[:2], encoder_hidden_states=inputs()[2], return_dict=False)
    assert graphed.recorded == 1

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ViewNeTIPipeline, "__call__", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        engine.render([Camera(orbit_pose(0.0, 25.0, 3.6), 40.0, 64, 64)], steps=1)
    assert graphed.recorded == 0 and not graphed.recording  # their memory is free for the next request
    monkeypatch.undo()
    with torch.no_grad():
        for _ in range(3):
            graphed(*inputs()[:2], encoder_hidden_states=inputs()[2], return_dict=False)
    assert graphed.recorded == 0 and graphed.records == 1  # plain from now on: no record, no new OOM


def test_an_uncompiled_engine_renders_through_the_uncompiled_modules(eager_flags):
    """On CUDA those hold the graph-replayed UNet (Engine.load); on the CPU they are the plain ones."""
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine

    engine = Engine.load(device="cpu", compile="off")
    assert "unet" not in engine.base.eager  # the CPU has no CUDA graphs: the plain UNet
    timings: dict = {}
    images = engine.render([Camera(orbit_pose(0.0, 25.0, 3.6), 40.0, 64, 64)], steps=1, timings=timings)
    assert len(images) == 1 and eager_flags == [True]
    assert timings["eager"] == 0.0  # "eager" reports a compiled engine's fallback, not a choice of --compile off


def test_first_use_work_done_ahead_warms_each_shape_and_text_batch(monkeypatch):
    """Engine.prime_first_use (the server runs it before it reports ready, on CUDA): one new pose's
    encodings at each step count, through the mappers of the default object and the view as a render
    computes them (the text encoder at that batch), and the uncompiled UNet once (plain: the warm-up
    GraphedUNet needs before it records) and decoder once at each shape, so a user's first render at a
    warm-up shape records at its first step instead of paying a plain first call."""
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine
    from viewneti_backend.render_shape import RenderShape

    engine = Engine.load(device="cpu", compile="off")
    assert not engine.primes_first_use  # the CPU has no first-use cost worth paying ahead
    graphed = CpuGraphedUNet(engine.base.unet)
    engine.base.eager["unet"] = graphed
    text_rows: list[tuple[int, int]] = []  # (prompts, placeholder tokens injected) per text-encoder call
    encode = engine.base.text.encode

    def counting_encode(ids, injections=None):
        text_rows.append((len(ids), len(injections or {})))
        return encode(ids, injections)

    monkeypatch.setattr(engine.base.text, "encode", counting_encode)
    decoded: list[tuple] = []
    decoder = engine.base.vae.decoder
    monkeypatch.setattr(
        decoder, "forward", lambda z, *a, f=decoder.forward, **k: decoded.append(tuple(z.shape)) or f(z, *a, **k)
    )
    seconds = engine.prime_first_use(
        [RenderShape(1, 64, 64), RenderShape(3, 64, 48, False), RenderShape(1, 64, 64)], (2, 3, 2)
    )
    assert seconds > 0.0
    n_layers = engine.base.num_layers
    # each step count once with both tokens injected (object and view), then the unconditional prompt
    # (computed once, kept for every render)
    assert text_rows == [(2 * n_layers, 2), (3 * n_layers, 2), (1, 0)]
    assert graphed.records == 0 and engine.base.unet.training is False
    f, c = engine.base.vae_scale_factor, engine.base.latent_channels
    # latents [batch, C, h, w]; CFG doubles the UNet's batch
    assert {key[0] for key in graphed._warmed} == {(2, c, 64 // f, 64 // f), (3, c, 48 // f, 64 // f)}
    assert decoded == [(1, c, 64 // f, 64 // f), (3, c, 48 // f, 64 // f)]
    assert engine.pipeline.cached_encodings == 0  # nothing user-visible cached
    engine.render([Camera(orbit_pose(0.0, 25.0, 3.6), 40.0, 64, 64)], steps=2, guidance=2.0)
    assert graphed.records == 1 and graphed.recorded == 1  # its first step recorded: the warm-up was done ahead


def test_priming_a_shape_warms_only_shapes_that_still_render_uncompiled(monkeypatch):
    """Engine.prime_shapes (the server's worker runs it for a shape a client asked to compile, on
    CUDA): the uncompiled UNet's plain call and the decoder once at each shape that renders uncompiled,
    none at a shape whose compiled graphs are ready; a background compile waits meanwhile (idle cleared)."""
    from viewneti_backend.engine import Engine
    from viewneti_backend.render_shape import RenderShape

    engine = Engine.load(device="cpu", compile="off")
    graphed = CpuGraphedUNet(engine.base.unet)
    engine.base.eager["unet"] = graphed
    compiled_already = RenderShape(1, 64, 48)
    monkeypatch.setattr(engine, "runs_uncompiled", lambda shape: shape != compiled_already)
    idle_during: list[bool] = []
    decoder = engine.base.vae.decoder
    monkeypatch.setattr(
        decoder,
        "forward",
        lambda z, *a, f=decoder.forward, **k: idle_during.append(engine.idle.is_set()) or f(z, *a, **k),
    )
    seconds = engine.prime_shapes([RenderShape(2, 64, 64), compiled_already, RenderShape(2, 64, 64)])
    assert seconds > 0.0 and engine.idle.is_set()
    f, c = engine.base.vae_scale_factor, engine.base.latent_channels
    assert {key[0] for key in graphed._warmed} == {(4, c, 64 // f, 64 // f)}  # 2 views, CFG doubles the batch
    assert idle_during == [False]  # one decode, at the one uncompiled shape, with the compile held back
    assert graphed.records == 0 and engine.pipeline.cached_encodings == 0


@pytest.mark.parametrize("case", ["no object, no view-mapper", "object that cannot load"])
def test_first_use_work_without_a_usable_object_or_view_mapper(monkeypatch, case):
    """A fresh SD 2 user has no object yet, a plain diffusers model no view-mapper, and a library may
    hold an object that no longer loads: the encodings are still computed at each step count, with
    whatever mappers there are (the text encoder's first use at that batch is what there is to pay), and
    the UNet is still warmed."""
    from viewneti_backend.engine import Engine
    from viewneti_backend.errors import InputError
    from viewneti_backend.render_shape import RenderShape

    engine = Engine.load(device="cpu", compile="off")
    if case == "object that cannot load":

        def broken(name):
            raise InputError("object 'x' was trained on another base model: invert it again")

        monkeypatch.setattr(engine, "object_mapper", broken)
        injected = 1  # the view token
    else:
        monkeypatch.setattr(Engine, "default_object", property(lambda self: None))
        engine.pipeline.view_mapper = None
        injected = 0
    graphed = CpuGraphedUNet(engine.base.unet)
    engine.base.eager["unet"] = graphed
    rows: list[tuple[int, int]] = []
    encode = engine.base.text.encode
    monkeypatch.setattr(
        engine.base.text,
        "encode",
        lambda ids, injections=None: rows.append((len(ids), len(injections or {}))) or encode(ids, injections),
    )
    engine.prime_first_use([RenderShape(1, 64, 64)], (2,))
    assert rows == [(2 * engine.base.num_layers, injected), (1, 0)]
    assert len(graphed._warmed) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_a_render_through_the_replayed_unet_equals_the_plain_render():
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine

    engine = Engine.load(device="cuda", compile=False)  # the toy model, uncompiled
    base, pipeline = engine.base, engine.pipeline
    graphed = base.eager["unet"]
    assert isinstance(graphed, GraphedUNet)  # what Engine.load gives an uncompiled CUDA engine to render with
    _, mapper = engine.object_mapper(None)
    cams = [Camera(orbit_pose(a, 25.0, 3.6), 40.0, 96, 64) for a in (0.0, 120.0)]
    plain = pipeline(cams, mapper, seed=3, steps=10, guidance=2.0, output="latent", eager=False)
    replayed = pipeline(cams, mapper, seed=3, steps=10, guidance=2.0, output="latent", eager=True)
    assert graphed.recorded == 1 and not graphed.failed
    assert torch.equal(plain, replayed), f"max |diff| {(plain - replayed).abs().max().item()}"
    again = pipeline(
        cams, mapper, seed=3, steps=10, guidance=2.0, output="latent", eager=True
    )  # every step replayed, none recorded
    assert graphed.recorded == 1 and torch.equal(again, plain)
