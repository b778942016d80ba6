"""Training modes 0/2/3/4/5: loss falls on a fixed tiny problem, frozen parts stay frozen, resume, accelerate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_backend.cameras import Camera, TransformsFrame, orbit_pose, write_transforms_json
from viewneti_backend.checkpoints import load_optimizer, save_optimizer
from viewneti_backend.data import Scene, load_scene_collection, load_transforms_scene
from viewneti_backend.errors import InputError
from viewneti_backend.mapper import NeTIMapper
from viewneti_backend.training import TrainConfig, Trainer


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None, "no gradient reached this tensor"
    return t.grad


AZIMUTHS = (0, 90, 180, 270)


def toy_scene(name: str, seed: int) -> Scene:
    """A coloured square that moves with the camera azimuth: a fixed, learnable tiny problem."""
    rng = np.random.default_rng(seed)
    base = np.zeros((64, 64, 3), np.uint8)
    base[16:48, 16:48] = rng.integers(0, 255, 3)
    images = [Image.fromarray(np.roll(base, 8 * i, axis=1)) for i in range(len(AZIMUTHS))]
    return Scene(name, images, [Camera(orbit_pose(a, 20, 4), 40, 64, 64) for a in AZIMUTHS])


def write_scene(folder: Path, scene: Scene) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, (img, cam) in enumerate(zip(scene.images, scene.posed_cameras())):
        img.save(folder / "images" / f"{i:03d}.png")
        frames.append(TransformsFrame(f"images/{i:03d}.png", cam))
    write_transforms_json(folder / "transforms.json", frames)
    return folder


def make_trainer(mode, base, model_dir, out=None, steps=20, **kw):
    scenes = [toy_scene("a", 0), toy_scene("b", 1)] if mode == 3 else [toy_scene("a", 0)]
    vm = model_dir / "viewneti" / "view_mapper" if mode in (4, 5) else None
    cfg = TrainConfig(
        **{"mode": mode, "steps": steps, "batch_size": 2, "grad_accum": 1, "augmentation": 0, "lr": 3e-3, **kw}
    )
    return Trainer(cfg, base, scenes, view_mapper=vm, output_dir=out, device="cpu")


@pytest.mark.parametrize("mode", [0, 2, 3, 4, 5])
def test_each_mode_lowers_the_loss(mode, tiny_base, tiny_model_dir):
    trainer = make_trainer(mode, tiny_base, tiny_model_dir)
    before = trainer.evaluate_loss()
    result = trainer.train(progress=False)
    after = trainer.evaluate_loss()
    assert result.step == 20 and len(result.losses) == 20
    assert after < before - 0.005, f"mode {mode}: fixed-problem loss {before:.4f} -> {after:.4f}"


def test_fused_micro_batches_give_the_same_gradient_as_accumulation(tiny_base, tiny_model_dir):
    """Mode 3, three micro-batches from (possibly) different scenes: one fused pass == their mean."""
    trainer = make_trainer(3, tiny_base, tiny_model_dir)
    gen, rng = torch.Generator().manual_seed(5), __import__("random").Random(3)
    batches = [trainer.sample_batch(gen, rng) for _ in range(6)]
    assert len({mb.scene for mb in batches}) == 2, "the draw should cover both scenes"
    params = [p for p in trainer.mappers.parameters() if p.requires_grad]

    def grads(loss_fn):
        for p in params:
            p.grad = None
        loss_fn().backward()
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])

    fused = grads(lambda: trainer.loss_on(batches))
    accumulated = grads(lambda: sum(trainer.loss_on([mb]) for mb in batches) / len(batches))
    assert fused.norm() > 0
    assert torch.allclose(fused, accumulated, rtol=1e-4, atol=1e-7), float((fused - accumulated).abs().max())


def test_fused_micro_batches_with_augmentation_give_the_same_gradient_as_accumulation(tiny_base, tiny_model_dir):
    """Mode 5 with the paper's augmentation: the fused step augments all micro-batches' images in one pass."""
    trainer = make_trainer(5, tiny_base, tiny_model_dir, augmentation=7)
    gen, rng = torch.Generator().manual_seed(2), __import__("random").Random(2)
    batches = [trainer.sample_batch(gen, rng) for _ in range(3)]
    assert all(mb.augmentation is not None for mb in batches)
    params = [p for p in trainer.mappers.parameters() if p.requires_grad]

    def grads(loss_fn):
        for p in params:
            p.grad = None
        loss_fn().backward()
        return torch.cat([_grad(p).flatten() for p in params])

    fused = grads(lambda: trainer.loss_on(batches))
    accumulated = grads(lambda: sum(trainer.loss_on([mb]) for mb in batches) / len(batches))
    assert fused.norm() > 0
    assert torch.allclose(fused, accumulated, rtol=1e-4, atol=1e-7), float((fused - accumulated).abs().max())


def test_noise_coefficients_reproduce_the_schedulers_add_noise_and_velocity(tiny_base, tiny_model_dir):
    trainer = make_trainer(5, tiny_base, tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 500, 999])
    a, b = trainer.noise_coefficients[:, t].view(2, 4, 1, 1, 1).unbind(0)
    assert torch.equal(a * x + b * noise, trainer.noise_scheduler.add_noise(x, noise, t))  # pyright: ignore[reportArgumentType]  diffusers annotates the legacy IntTensor; it takes any integer tensor
    assert torch.equal(a * noise - b * x, trainer.noise_scheduler.get_velocity(x, noise, t))  # pyright: ignore[reportArgumentType]  as above


def test_fused_and_unfused_training_both_run(tiny_base, tiny_model_dir):
    for fuse in (True, False):
        trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=2, fuse_micro_batches=fuse)
        trainer.config.grad_accum = 2
        result = trainer.train(progress=False)
        assert result.step == 2 and all(np.isfinite(result.losses))


def test_mode5_leaves_the_view_mapper_bit_identical(tiny_base, tiny_model_dir):
    original = NeTIMapper.from_pretrained(tiny_model_dir / "viewneti" / "view_mapper").state_dict()
    trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=5)
    assert trainer.view_mapper is not None
    assert all(not p.requires_grad for p in trainer.view_mapper.parameters())
    trainer.train(progress=False)
    for k, v in trainer.view_mapper.state_dict().items():
        assert torch.equal(v.cpu(), original[k]), k
        # no gradient was ever accumulated on the frozen mapper
    assert all(p.grad is None for p in trainer.view_mapper.parameters())
    # the frozen text-encoder table gets no gradient either
    assert tiny_base.text_encoder.get_input_embeddings().weight.grad is None


def test_mode4_trains_the_view_mapper(tiny_base, tiny_model_dir):
    original = NeTIMapper.from_pretrained(tiny_model_dir / "viewneti" / "view_mapper").state_dict()
    trainer = make_trainer(4, tiny_base, tiny_model_dir, steps=3)
    trainer.train(progress=False)
    assert trainer.view_mapper is not None
    assert any(not torch.equal(v.cpu(), original[k]) for k, v in trainer.view_mapper.state_dict().items())


def test_checkpoint_and_resume_continue_from_the_saved_step(tiny_base, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = make_trainer(2, tiny_base, tiny_model_dir, out=out, steps=4, save_every=2)
    first.train(progress=False)
    assert (out / "checkpoint-000002" / "trainer_state.json").is_file()
    assert (out / "checkpoint-000004" / "optimizer.safetensors").is_file()
    assert (out / "view_mapper" / "mapper.safetensors").is_file() and (out / "objects" / "a").is_dir()
    assert not list(out.glob(".*tmp*"))  # no half-written checkpoint left behind

    resumed = make_trainer(2, tiny_base, tiny_model_dir, out=out, steps=6)
    assert resumed.resume(out) == 4  # latest checkpoint in the run folder
    for k, v in resumed.object_mappers[0].state_dict().items():
        assert torch.equal(v, first.object_mappers[0].state_dict()[k])
    result = resumed.train(progress=False)
    assert result.step == 6 and len(result.losses) == 6
    assert result.losses[:4] == first.losses
    state = json.loads((out / "checkpoint-000006" / "trainer_state.json").read_text())
    assert state["step"] == 6
    mid = json.loads((out / "checkpoint-000002" / "trainer_state.json").read_text())
    assert mid["step"] == 2 and mid["losses"] == first.losses[:2], "a checkpoint holds every loss up to its step"


def test_each_step_is_reported_once_in_order_with_its_loss(tiny_base, tiny_model_dir):
    """Losses are read back one step late (so the host never waits for the GPU between steps); every
    step still reaches on_step exactly once, in order, with the loss stored in ``losses``."""
    trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=5)
    seen = []
    trainer.train(progress=False, on_step=lambda step, total, loss: seen.append((step, total, loss)))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5] and {t for _, t, _ in seen} == {5}
    assert [loss for _, _, loss in seen] == trainer.losses and all(np.isfinite(trainer.losses))


@pytest.mark.parametrize(
    "on_steps,order",
    [
        ((), "Q1 Q2 R1 Q3 R2 Q4 R3 R4"),  # one step late: step k reported once step k+1 is queued
        ((2, 3), "Q1 Q2 R1 R2 Q3 R3 Q4 R4"),  # in lockstep after steps 2 and 3 only
        ((1, 2, 3, 4), "Q1 R1 Q2 R2 Q3 R3 Q4 R4"),  # always: nothing queued when a step is reported
    ],
    ids=["never", "steps-2-3", "always"],
)
def test_in_lockstep_a_step_is_reported_before_the_next_is_queued(tiny_base, tiny_model_dir, on_steps, order):
    """While ``lockstep()`` is true (asked after each step is queued), that step is read back and
    reported at once, before the next step's work is queued: what on_step queues (a live render) waits
    for no training step. The losses are those of the run without it."""
    reference = make_trainer(5, tiny_base, tiny_model_dir, steps=4)
    reference.train(progress=False)
    trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=4)
    events: list[str] = []
    loss_on = trainer.loss_on

    def queued(batches):
        events.append(f"Q{trainer.step + 1}")
        return loss_on(batches)

    trainer.loss_on = queued  # type: ignore[method-assign]
    trainer.train(
        progress=False,
        on_step=lambda step, total, loss: events.append(f"R{step}"),
        lockstep=lambda: trainer.step in on_steps,
    )
    assert " ".join(events) == order
    assert trainer.losses == reference.losses


def test_optimizer_state_roundtrips_through_safetensors(tmp_path):
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "o.safetensors")
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    load_optimizer(opt2, tmp_path / "o.safetensors")
    assert opt2.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_bad_training_inputs_fail_clearly(tiny_base, tiny_model_dir):
    with pytest.raises(InputError, match="mode must be one of"):
        TrainConfig(mode=1)
    with pytest.raises(InputError, match="pretrained view-mapper"):
        Trainer(TrainConfig(mode=5, steps=1), tiny_base, [toy_scene("a", 0)], device="cpu")
    with pytest.raises(InputError, match="exactly one scene"):
        Trainer(TrainConfig(mode=2, steps=1), tiny_base, [toy_scene("a", 0), toy_scene("b", 1)], device="cpu")
    no_cams = Scene("x", toy_scene("a", 0).images, None)
    with pytest.raises(InputError, match="camera per image"):
        Trainer(TrainConfig(mode=2, steps=1), tiny_base, [no_cams], device="cpu")


def test_transforms_scene_collection_loads(tmp_path):
    for name, seed in (("s1", 0), ("s2", 1)):
        write_scene(tmp_path / "scenes" / name, toy_scene(name, seed))
    scenes = load_scene_collection(tmp_path / "scenes")
    assert [s.name for s in scenes] == ["s1", "s2"]
    one = load_transforms_scene(tmp_path / "scenes" / "s1", views=[1, 3])
    assert len(one.images) == 2
    np.testing.assert_allclose(one.posed_cameras()[0].camera_to_anchor, orbit_pose(90, 20, 4), atol=1e-9)
    with pytest.raises(InputError, match="do not exist"):
        load_transforms_scene(tmp_path / "scenes" / "s1", views=[9])


def test_mode3_under_accelerate_launch_with_two_cpu_processes(tiny_model_dir, tmp_path):
    for name, seed in (("s1", 0), ("s2", 1), ("s3", 2)):
        write_scene(tmp_path / "scenes" / name, toy_scene(name, seed))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "viewneti_backend.cli",
        "train",
        "--mode",
        "3",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "scenes"),
        "--steps",
        "3",
        "--batch-size",
        "1",
        "--grad-accum",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["scenes"] == ["s1", "s2", "s3"]
    for name in ("s1", "s2", "s3"):
        NeTIMapper.from_pretrained(out / "objects" / name)
    NeTIMapper.from_pretrained(out / "view_mapper")


def test_augmentation_pool_encodes_once_then_trains_from_the_pool(tiny_base, tiny_model_dir):
    """The option: N augmented copies VAE-encoded at the start, none during training; the loss still falls."""
    trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=20, augmentation=7, augmentation_pool=5)
    assert trainer.pools is not None
    source, posteriors = trainer.pools[0]
    mean, std = posteriors.unbind(1)
    assert source.shape[0] == 6 and mean.shape[0] == 6 and std.shape == mean.shape  # 5 rounded up to whole batches of 2
    encode = trainer.base.vae.encode
    calls = []
    trainer.base.vae.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        before = trainer.evaluate_loss()
        calls.clear()
        result = trainer.train(progress=False)
        assert not calls, "training from a pool must not run the VAE encoder"
        after = trainer.evaluate_loss()
    finally:
        trainer.base.vae.encode = encode
    assert result.step == 20 and after < before - 0.005, f"{before:.4f} -> {after:.4f}"


def test_without_augmentation_each_image_is_encoded_once_with_its_camera(tiny_base, tiny_model_dir):
    """Augmentation 0: the images' posteriors are encoded once (a short last chunk padded to the step's batch),
    each pooled image keeps its camera, and training gives the losses of re-encoding every step."""
    trainer = make_trainer(5, tiny_base, tiny_model_dir, steps=3, batch_size=3)  # 4 images: chunks of 3 + 1
    assert trainer.pools is not None
    source, posteriors = trainer.pools[0]
    assert torch.equal(source, torch.arange(4))
    mean, std = posteriors.unbind(1)
    with torch.no_grad():
        posterior = trainer.base.vae.encode(trainer.scene_tensors[0].to(trainer.base.dtype)).latent_dist
    assert torch.allclose(mean, posterior.mean.float(), atol=1e-5) and torch.allclose(
        std, posterior.std.float(), atol=1e-5
    )
    gen, rng = torch.Generator().manual_seed(0), __import__("random").Random(0)
    mb = trainer.sample_batch(gen, rng)
    assert mb.images is None and mb.pool_index is not None
    features = trainer.scene_features[0]
    assert mb.feats is not None and features is not None
    assert torch.equal(mb.feats, features[source[mb.pool_index]]), "each pooled image keeps its camera"

    encode = trainer.base.vae.encode
    calls = []
    trainer.base.vae.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        cached = trainer.train(progress=False).losses
    finally:
        trainer.base.vae.encode = encode
    assert not calls, "training must not run the VAE encoder again"
    fresh = make_trainer(5, tiny_base, tiny_model_dir, steps=3, batch_size=3)
    fresh.pools = None  # the same run, re-encoding the images every step
    np.testing.assert_allclose(cached, fresh.train(progress=False).losses, rtol=1e-5)
    with pytest.raises(InputError, match="augmentation_pool needs augmentation"):
        TrainConfig(augmentation=0, augmentation_pool=4)


def test_augmentation_pool_leaves_the_evaluation_loss_alone_and_refuses_negative_sizes(tiny_base, tiny_model_dir):
    plain = make_trainer(5, tiny_base, tiny_model_dir, augmentation=7)
    pooled = make_trainer(5, tiny_base, tiny_model_dir, augmentation=7, augmentation_pool=4)
    assert pooled.evaluate_loss() == pytest.approx(plain.evaluate_loss(), rel=1e-6)  # same seed: same mappers, no pool
    with pytest.raises(InputError, match="augmentation_pool"):
        TrainConfig(augmentation_pool=-1)


def test_scalar_readback_is_a_snapshot():
    """The training loop's loss read-back holds the value as it was when the step was queued."""
    from viewneti_backend.transfer import ScalarReadback

    t = torch.tensor(2.5)
    readback = ScalarReadback(t)
    t.add_(1.0)  # a later in-place change does not reach the snapshot
    assert readback.ready() and readback.value() == 2.5
