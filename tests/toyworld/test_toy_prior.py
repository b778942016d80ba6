from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from viewneti_backend.toyworld.prior.data import LatentBuffer, RenderStream, drop_captions, tokenize
from viewneti_backend.toyworld.prior.model import load_prior, sample
from viewneti_backend.toyworld.prior.training import PriorTrainConfig, train_prior

WEIGHTS = Path(__file__).resolve().parents[2] / "viewneti_backend" / "toyworld" / "weights" / "prior"


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior")
    metrics = train_prior(PriorTrainConfig.tiny(), out, log=lambda s: None)
    return out, metrics


def test_tiny_training_end_to_end(tiny_prior):
    out, metrics = tiny_prior
    assert metrics["vae_steps"] == 3 and metrics["unet_steps"] == 3
    assert np.isfinite(metrics["unet_mse"]) and np.isfinite(metrics["vae_l1"])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder"):
        assert list((out / sub).glob("*.safetensors")), sub
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "scaled_linear"
    assert sched["beta_start"] == 0.00085 and sched["beta_end"] == 0.012 and sched["num_train_timesteps"] == 1000


def test_loads_as_stable_diffusion_pipeline_and_samples(tiny_prior):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

    out, _ = tiny_prior
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    pipe = load_prior(out)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config["prediction_type"] == "v_prediction"
    ims = sample(pipe, ["a red box", ""], steps=2, guidance=3.0)
    assert ims.shape == (2, 32, 32, 3) and ims.dtype == np.uint8


def test_resume_keeps_the_vae(tiny_prior, tmp_path):
    out, _ = tiny_prior
    m = train_prior(PriorTrainConfig.tiny(), tmp_path / "p2", resume_from=out, log=lambda s: None)
    assert m["resumed_unet_steps"] == 3 and "vae_l1" in m
    a = load_prior(out).vae.state_dict()
    b = load_prior(tmp_path / "p2").vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_script_records_its_command_in_the_history(tmp_path, capsys):
    from viewneti_backend.toyworld.prior.training import main

    main(["--out", str(tmp_path / "p"), "--tiny"])
    history = json.loads((tmp_path / "p" / "toyworld.json").read_text())["metrics"]["history"]
    assert history[-1]["command"] == f"python -m viewneti_backend.toyworld.prior --out {tmp_path / 'p'} --tiny"


def test_latent_buffer_keeps_each_renders_caption_ids(tiny_prior):
    """The pool tokenizes a caption once per render; what it returns is that caption's ids."""
    out, _ = tiny_prior
    pipe = load_prior(out)
    cfg = PriorTrainConfig.tiny()
    dev = torch.device("cpu")
    buf = LatentBuffer(RenderStream(cfg, dev), pipe.vae, pipe.tokenizer, size=6, refresh=2, device=dev, chunk=4)
    assert len(buf) == 6 and buf.ids.shape == (6, 77)
    stream = RenderStream(cfg, dev)  # same seeds: the same first renders and captions
    first = stream.next(4)["caption"] + stream.next(2)["caption"]
    assert torch.equal(buf.ids, tokenize(pipe.tokenizer, first, dev))
    assert all(c for c in first)  # no empty captions inside the pool: the drop happens per draw
    b = buf.next(5)
    assert b["latents"].shape == (5, 4, 16, 16) and b["input_ids"].shape == (5, 77)  # tiny: 32 px, x2 VAE
    rows = {tuple(r.tolist()) for r in buf.ids}
    assert all(tuple(r.tolist()) in rows for r in b["input_ids"])


def test_drop_captions_replaces_rows_with_the_empty_caption(tiny_prior):
    out, _ = tiny_prior
    tok = load_prior(out).tokenizer
    dev = torch.device("cpu")
    ids = tokenize(tok, ["a red box"] * 2000, dev)
    empty = tokenize(tok, [""], dev)
    dropped = drop_captions(ids, empty, 0.1, torch.Generator().manual_seed(0))
    is_empty = (dropped == empty).all(1)
    assert ((dropped == ids).all(1) | is_empty).all()
    assert 0.07 < is_empty.float().mean() < 0.13
    assert not drop_captions(ids, empty, 0.0, torch.Generator()).ne(ids).any()


def test_shipped_prior_is_small_and_loads():
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size <= 26 * 2**20, f"{size / 2**20:.1f} MiB"
    pipe = load_prior(WEIGHTS)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    n_cross = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("attn2"))
    assert n_cross >= 7
    ims = sample(pipe, ["a red box with a blue sphere on its left side"], steps=4)
    assert ims.shape == (1, 64, 64, 3)


def test_shipped_prior_view_phrases_change_the_image():
    from viewneti_backend.toyworld import default_prior_path

    assert default_prior_path() == WEIGHTS
    pipe = load_prior(WEIGHTS)
    base = "a blue box with a red left side and a green sphere on its left side"
    red = lambda im: ((im[..., 0].astype(int) - np.maximum(im[..., 1], im[..., 2]).astype(int)) > 60).mean()  # noqa: E731
    left, back_right = [], []
    for seed in (0, 3):
        ims = sample(
            pipe,
            [
                base + ", seen from the left, from slightly above",
                base + ", seen from the back right, from slightly above",
            ],
            steps=8,
            seed=seed,
        )
        assert np.abs(ims[0].astype(float) - ims[1].astype(float)).mean() > 8.0
        left.append(red(ims[0]))
        back_right.append(red(ims[1]))
    # the red left side is visible from the left and (almost) hidden from the back right
    assert np.mean(left) > 0.03 and np.mean(back_right) < 0.5 * np.mean(left), (left, back_right)


def test_shipped_sampler_starts_from_pure_noise_like_a_rebuilt_prior():
    """The toy renders start at the last training timestep (trailing spacing), so few-step renders
    begin from the noise level they are given; `toyworld train-prior` writes the same schedule."""
    from viewneti_backend.base_model import load_base_model
    from viewneti_backend.toyworld.prior.model import scheduler_config

    shipped = json.loads((WEIGHTS / "scheduler" / "scheduler_config.json").read_text())
    assert {k: shipped[k] for k in scheduler_config()} == scheduler_config()
    base = load_base_model(str(WEIGHTS), device="cpu")
    for steps in (4, 6, 10):
        sched = base.sampling_scheduler()
        sched.set_timesteps(steps)
        assert int(sched.timesteps[0]) == 999 and len(sched.timesteps) == steps
