"""The toy prior: a tiny text-to-image model with Stable Diffusion's architecture, trained on toy renders.

Components (all standard diffusers / transformers classes, saved as a StableDiffusionPipeline folder):
``UNet2DConditionModel`` (cross-attention down/mid/up blocks, linear projections like SD 2),
``AutoencoderKL`` (4 latent channels, x4 down-sampling: 64x64 images <-> 16x16 latents),
``CLIPTextModel`` (CLIP text transformer, 77 positions) with the toy ``CLIPTokenizer`` (tokenizer.py),
and a ``DDPMScheduler`` configured like SD 2.1 (v-prediction, scaled-linear betas 0.00085 -> 0.012,
1000 steps); any diffusers scheduler (DPMSolverMultistep, DDIM, ...) can be built from its config.

Training (:func:`train_prior`): renders are made on the fly (random objects x random views, on the
GPU when there is one), the VAE is trained first (L1 + MSE + a small KL), then the UNet jointly with
the text encoder (v-prediction MSE with min-SNR weighting, 10% empty captions for classifier-free
guidance, EMA weights are the ones saved). bf16 autocast on CUDA.

Object seeds: training objects use seeds ``[0, n_objects)``; seeds from :data:`HELDOUT_SEED_START`
on are never seen by the prior (use them for held-out benchmarks).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .captions import caption
from .renderer import (
    DEFAULT_FOV_Y_DEG,
    CameraSampler,
    ToyObject,
    index_packed,
    orbit_poses_torch,
    pack_objects,
    render_packed,
)
from .tokenizer import load_tokenizer, write_tokenizer

HELDOUT_SEED_START = 1_000_000
PRIOR_FORMAT = "viewneti-toy-prior"


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class PriorArchitecture:
    image_size: int = 64
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)  # len-1 down-samplings: x4
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 16
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 2
    unet_heads: tuple[int, ...] = (2, 4, 4)  # diffusers' "attention_head_dim" (= number of heads)
    unet_norm_groups: int = 32
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512

    @classmethod
    def tiny(cls) -> PriorArchitecture:
        """A very small variant for CPU tests."""
        return cls(
            image_size=32,
            vae_channels=(16, 32),
            vae_norm_groups=8,
            unet_channels=(32, 32),
            unet_layers_per_block=1,
            unet_heads=(2, 2),
            unet_norm_groups=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            text_intermediate=64,
        )


@dataclass
class PriorTrainConfig:
    arch: PriorArchitecture = field(default_factory=PriorArchitecture)
    n_objects: int = 20000  # training objects: seeds [0, n_objects)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    supersample: int = 2  # anti-aliased renders
    # camera distribution (see renderer.CameraSampler)
    elevation_range: tuple[float, float] = (10.0, 50.0)
    radius_range: tuple[float, float] = (3.2, 4.0)
    fov_y_deg: float = DEFAULT_FOV_Y_DEG
    # captions
    p_view: float = 0.3  # fraction of captions with a coarse view phrase
    cfg_drop: float = 0.1  # fraction of empty captions (classifier-free guidance)
    # VAE
    vae_steps: int = 2000
    vae_batch: int = 64
    vae_lr: float = 4e-4
    vae_kl_weight: float = 1e-6
    vae_object_weight: float = 2.0  # extra loss weight on object pixels (they are a small part of the image)
    vae_max_minutes: float | None = None
    # UNet + text encoder
    unet_steps: int = 8000
    unet_batch: int = 256
    unet_lr: float = 3e-4
    text_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 300
    ema_decay: float = 0.9995
    min_snr_gamma: float | None = 5.0
    unet_max_minutes: float | None = None  # includes filling the latent buffer
    buffer_size: int = 49152  # renders kept as VAE latents (mean, std); 0 = render every batch on the fly
    buffer_refresh: int = 16  # fresh renders replacing random buffer entries at every step
    grad_clip: float = 1.0
    log_every: int = 100
    progress: bool = True

    @classmethod
    def tiny(cls) -> PriorTrainConfig:
        """Seconds on a CPU: for tests."""
        return cls(
            arch=PriorArchitecture.tiny(),
            n_objects=16,
            supersample=1,
            vae_steps=3,
            vae_batch=4,
            unet_steps=3,
            unet_batch=4,
            warmup_steps=1,
            log_every=1,
            progress=False,
            buffer_size=8,
            buffer_refresh=2,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------
def scheduler_config() -> dict[str, Any]:
    """SD 2.1's noise schedule (v-prediction), sampled with ``"trailing"`` timesteps.

    Training only uses the betas; the spacing decides where a few-step render starts. SD 2's
    ``"leading"`` starts a 10-step render at t = 901, so pure noise is denoised as if it were partly
    image; ``"trailing"`` starts at t = 999. On the toy model it scores higher at every step count
    (seen objects: +0.3 dB at 10 steps, +1.1 dB at 4) and 4 trailing steps beat 10 leading ones,
    on held-out inversions too (benchmarks/RESULTS.md §5)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="trailing",
        variance_type="fixed_small",
    )


def build_components(arch: PriorArchitecture, tokenizer_dir: str | Path) -> dict[str, Any]:
    """Fresh (randomly initialised) unet, vae, text_encoder, plus tokenizer and scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: PLC0415  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "vocab.json").exists():
        write_tokenizer(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    nb = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * nb,  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        up_block_types=("UpDecoderBlock2D",) * nb,  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        block_out_channels=tuple(arch.vae_channels),  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=arch.image_size,
        scaling_factor=1.0,
    )
    latent_size = arch.image_size // 2 ** (nb - 1)
    nu = len(arch.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (nu - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (nu - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=tuple(arch.unet_heads),  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        use_linear_projection=True,
        norm_num_groups=arch.unet_norm_groups,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=arch.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler(**scheduler_config())
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_prior(
    components: dict[str, Any],
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a StableDiffusionPipeline folder (safetensors, ``dtype`` storage) loadable offline with from_pretrained."""
    from diffusers import StableDiffusionPipeline  # noqa: PLC0415  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,  # pyright: ignore[reportArgumentType]  diffusers takes None here (optional component)
        feature_extractor=None,  # pyright: ignore[reportArgumentType]  diffusers takes None here (optional component)
        image_encoder=None,  # pyright: ignore[reportArgumentType]  diffusers takes None here (optional component)
        requires_safety_checker=False,
    )
    from diffusers.utils import logging as dlogging  # noqa: PLC0415

    orig = {k: next(components[k].parameters()).dtype for k in ("unet", "vae", "text_encoder")}
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        for k in orig:
            components[k].to(dtype=dtype)
        pipe.save_pretrained(out_dir, safe_serialization=True)
    finally:
        for k, dt in orig.items():
            components[k].to(dtype=dt)
        dlogging.set_verbosity(level)
    # the toy tokenizer files (vocab.json + merges.txt), readable by transformers 4.x and 5.x
    tok_dir = out_dir / "tokenizer"
    for f in tok_dir.glob("*"):
        f.unlink()
    write_tokenizer(tok_dir)
    info = {"format": PRIOR_FORMAT, "heldout_seed_start": HELDOUT_SEED_START, **(extra or {})}
    (out_dir / "toyworld.json").write_text(json.dumps(info, indent=1, default=str))
    return out_dir


def load_prior(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scheduler: str | None = "dpm",
):
    """Load the prior as a ``StableDiffusionPipeline`` (offline). ``scheduler="dpm"`` swaps in a
    DPMSolverMultistepScheduler built from the saved config; ``None`` keeps the saved DDPMScheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline  # noqa: PLC0415  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # diffusers >= 0.36 prefers dtype= (older ones only know torch_dtype)
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    if scheduler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------------------------------------
# Data on the fly
# ------------------------------------------------------------------------------------------------
class RenderStream:
    """Random (object, view) renders with captions; everything on ``device``.

    Captions come without the classifier-free-guidance drop: :func:`drop_captions` applies it to
    token ids at each draw, so a render kept in the :class:`LatentBuffer` is dropped independently
    every time it is drawn."""

    def __init__(self, cfg: PriorTrainConfig, device: torch.device, seed_offset: int = 0):
        self.cfg = cfg
        self.device = device
        self.objects = [ToyObject.from_seed(s) for s in range(cfg.n_objects)]
        self.packed = pack_objects(self.objects, device)
        self.sampler = CameraSampler(
            (*cfg.elevation_range,), (*cfg.radius_range,), cfg.fov_y_deg
        )  # tuples of JSON lists
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + seed_offset)
        self.rng = random.Random(cfg.seed * 1000 + seed_offset)

    def next(self, batch: int, with_captions: bool = True) -> dict[str, Any]:
        idx = torch.randint(0, len(self.objects), (batch,), generator=self.gen)
        p = self.sampler.sample_params(batch, self.gen)
        poses = orbit_poses_torch(p["azimuth"], p["elevation"], p["radius"]).to(self.device)
        size = self.cfg.arch.image_size
        with torch.no_grad():
            rgb, mask = render_packed(
                index_packed(self.packed, idx.to(self.device)),
                poses,
                self.cfg.fov_y_deg,
                size,
                size,
                supersample=self.cfg.supersample,
                chunk=256,
            )
        out: dict[str, Any] = {
            "image": rgb.permute(0, 3, 1, 2) * 2.0 - 1.0,
            "mask": mask[:, None].float(),
            "index": idx,
            **p,
        }
        if with_captions:
            out["caption"] = [
                caption(self.objects[int(i)], float(a), float(e), self.rng, p_view=self.cfg.p_view)
                for i, a, e in zip(idx, p["azimuth"], p["elevation"])
            ]
        return out


def tokenize(tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """Token ids [N, 77] (padded like SD 2) on ``device``."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="np"
    ).input_ids
    return torch.from_numpy(ids).to(device)


def drop_captions(ids: torch.Tensor, empty_ids: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each row of ``ids`` by the empty caption's ids with probability ``p`` (classifier-free guidance)."""
    drop = (torch.rand(ids.shape[0], generator=generator) < p).to(ids.device)
    return torch.where(drop[:, None], empty_ids.to(ids.device), ids)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _progress(step: int, steps: int, t0: float, budget_s: float | None) -> float:
    """Training progress in [0, 1]: by steps, or by wall time when a time budget is set (whichever is further)."""
    prog = step / max(1, steps)
    if budget_s is not None:
        prog = max(prog, (time.time() - t0) / budget_s)
    return prog


def _lr_lambda(warmup: int, _unused: float = 1.0) -> Callable[[int, float], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% over the training progress."""

    def f(step: int, prog: float) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return f


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.decay = decay
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)  # pyright: ignore[reportPrivateImportUsage]  torch's fused foreach ops are public API, not in its exports

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s.to(p.dtype))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def train_vae(
    vae, stream: RenderStream, cfg: PriorTrainConfig, device: torch.device, log: Callable[[str], None] = print
) -> dict[str, float]:
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    budget = None if cfg.vae_max_minutes is None else 60.0 * cfg.vae_max_minutes
    lr_at = _lr_lambda(min(200, cfg.vae_steps // 10), 1.0)
    t0 = time.time()
    hist: list[torch.Tensor] = []
    bar = tqdm(range(cfg.vae_steps), desc="vae", disable=not cfg.progress, mininterval=5)
    step = 0
    for step in bar:
        prog = _progress(step, cfg.vae_steps, t0, budget)
        if prog >= 1.0:
            log(f"vae: time budget reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * lr_at(step, prog)
        b = stream.next(cfg.vae_batch, with_captions=False)
        x, m = b["image"], b["mask"]
        with _autocast(device):
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample
        rec = rec.float()
        w = 1.0 + cfg.vae_object_weight * m
        l1 = ((rec - x).abs() * w).mean()
        l2 = (((rec - x) ** 2) * w).mean()
        kl = post.kl().float().mean() / z[0].numel()  # per latent element
        loss = l1 + l2 + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        hist.append(l1.detach())
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            recent = float(torch.stack(hist[-cfg.log_every :]).mean())
            msg = f"vae step {step} l1 {recent:.4f} l2 {float(l2.detach()):.4f} kl {float(kl.detach()):.4f} ({time.time() - t0:.0f}s)"
            log(msg)
    else:
        step = cfg.vae_steps
    vae.eval()
    # SD-style latent scaling: unit variance latents
    with torch.no_grad(), _autocast(device):
        zs = torch.cat(
            [
                vae.encode(stream.next(min(256, 4 * cfg.vae_batch), with_captions=False)["image"])
                .latent_dist.sample()
                .float()
                for _ in range(2)
            ]
        )
    scaling = float(1.0 / zs.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scaling)
    res = {
        "vae_steps": step,
        "vae_l1": float(torch.stack(hist[-50:]).mean()),
        "vae_seconds": time.time() - t0,
        "scaling_factor": scaling,
    }
    log(f"vae done: {res}")
    return res


class LatentBuffer:
    """A pool of renders stored as VAE posterior (mean, std) latents plus the token ids of one caption
    each; a few entries are replaced by fresh renders at every step. Rendering, VAE encoding and
    tokenizing every batch dominated the step time on a GPU (tokenizing 1024 captions alone took
    ~0.17 s on a CPU core); this keeps the UNet busy while the data stays diverse. Each render's
    caption is drawn once, when it enters the pool, from the same distribution as on the fly."""

    def __init__(
        self, stream: RenderStream, vae, tokenizer, size: int, refresh: int, device: torch.device, chunk: int = 512
    ):
        self.stream, self.vae, self.tokenizer, self.device, self.refresh = stream, vae, tokenizer, device, refresh
        self.sf = float(vae.config.scaling_factor)
        parts = [self._encode(min(chunk, size - start)) for start in range(0, size, chunk)]
        self.mean, self.std, self.ids = (torch.cat(t) for t in zip(*parts))
        self.gen = torch.Generator().manual_seed(stream.cfg.seed + 77)

    @torch.no_grad()
    def _encode(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self.stream.next(n, with_captions=True)
        with _autocast(self.device):
            dist = self.vae.encode(b["image"]).latent_dist
        return (
            dist.mean.to(torch.float16),
            dist.std.to(torch.float16),
            tokenize(self.tokenizer, b["caption"], self.device),
        )

    def __len__(self) -> int:
        return self.mean.shape[0]

    def next(self, batch: int) -> dict[str, torch.Tensor]:
        """``latents`` [batch, 4, h, w] (sampled from each posterior, scaled) and their ``input_ids``
        (without the classifier-free-guidance drop)."""
        if self.refresh:
            slots = torch.randint(0, len(self), (self.refresh,), generator=self.gen).to(self.device)
            self.mean[slots], self.std[slots], self.ids[slots] = self._encode(self.refresh)
        pick = torch.randint(0, len(self), (batch,), generator=self.gen).to(self.device)
        lat = (
            self.mean[pick].float()
            + self.std[pick].float() * torch.randn(batch, *self.mean.shape[1:], device=self.device)
        ) * self.sf
        return {"latents": lat, "input_ids": self.ids[pick]}


def train_unet(
    components: dict[str, Any],
    stream: RenderStream,
    cfg: PriorTrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    unet, vae, te, tok, noise_sched = (components[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    unet.to(device).train()
    te.to(device).train()
    vae.to(device).eval().requires_grad_(False)
    params = [
        {"params": list(unet.parameters()), "lr": cfg.unet_lr},
        {"params": list(te.parameters()), "lr": cfg.text_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), fused=device.type == "cuda")
    base_lrs = [g["lr"] for g in opt.param_groups]
    budget = None if cfg.unet_max_minutes is None else 60.0 * cfg.unet_max_minutes
    lr_at = _lr_lambda(cfg.warmup_steps, 1.0)
    ema = EMA(list(unet.parameters()) + list(te.parameters()), cfg.ema_decay)
    acp = noise_sched.alphas_cumprod.to(device)
    snr = acp / (1 - acp)
    sf = float(vae.config.scaling_factor)
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    t0 = time.time()
    buffer = None
    if cfg.buffer_size > 0:
        buffer = LatentBuffer(stream, vae, tok, cfg.buffer_size, cfg.buffer_refresh, device)
        log(f"latent buffer of {len(buffer)} renders filled in {time.time() - t0:.0f}s")
    empty_ids = tokenize(tok, [""], device)
    drop_gen = torch.Generator().manual_seed(cfg.seed + 78)
    data_s = 0.0  # host time spent preparing batches (rendering, tokenizing), reported with the loss
    hist: list[torch.Tensor] = []
    bar = tqdm(range(cfg.unet_steps), desc="unet", disable=not cfg.progress, mininterval=5)
    step = 0
    for step in bar:
        prog = _progress(step, cfg.unet_steps, t0, budget)
        if prog >= 1.0:
            log(f"unet: time budget reached at step {step}")
            break
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * lr_at(step, prog)
        t_data = time.perf_counter()
        if buffer is not None:
            b = buffer.next(cfg.unet_batch)
            lat, ids = b["latents"], b["input_ids"]
        else:
            b = stream.next(cfg.unet_batch)
            ids = tokenize(tok, b["caption"], device)
            with torch.no_grad(), _autocast(device):
                lat = vae.encode(b["image"]).latent_dist.sample().float() * sf
        ids = drop_captions(ids, empty_ids, cfg.cfg_drop, drop_gen)
        data_s += time.perf_counter() - t_data
        noise = torch.randn_like(lat)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (lat.shape[0],), device=device)
        a = acp[t].sqrt()[:, None, None, None]
        s1 = (1 - acp[t]).sqrt()[:, None, None, None]
        noisy = a * lat + s1 * noise
        target = a * noise - s1 * lat if v_pred else noise
        with _autocast(device):
            cond = te(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        err = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            sn = snr[t]
            w = torch.clamp(sn, max=cfg.min_snr_gamma) / ((sn + 1) if v_pred else sn)
            loss = (err * w).mean()
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), cfg.grad_clip)
        opt.step()
        ema.update()
        hist.append(err.detach().mean())
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            recent = float(torch.stack(hist[-cfg.log_every :]).mean())
            log(
                f"unet step {step} mse {recent:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s; "
                f"batch preparation {1000 * data_s / (step + 1):.0f} ms/step on the host)"
            )
    else:
        step = cfg.unet_steps
    ema.copy_to()
    unet.eval()
    te.eval()
    res = {"unet_steps": step, "unet_mse": float(torch.stack(hist[-200:]).mean()), "unet_seconds": time.time() - t0}
    log(f"unet done: {res}")
    return res


def train_prior(
    config: PriorTrainConfig,
    out_dir: str | Path,
    *,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the toy prior end to end and save it as a diffusers folder in ``out_dir``.

    ``resume_from``: a saved prior folder; its VAE is kept (``vae_steps`` is ignored) and the UNet and
    text encoder continue training from its (EMA) weights. ``command``: how this run was started,
    recorded in the run's entry of the metrics' ``history``.
    Returns the metrics (also written to ``out_dir/toyworld.json``).
    """
    cfg = config
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(out_dir)
    t0 = time.time()
    prev_history: list = []  # the resumed run's history (below)
    if resume_from is not None:
        pipe = load_prior(resume_from, "cpu", torch.float32, scheduler=None)
        comps = {
            "unet": pipe.unet,
            "vae": pipe.vae,
            "text_encoder": pipe.text_encoder,
            "tokenizer": pipe.tokenizer,
            "scheduler": pipe.scheduler,
        }
        prev = json.loads((Path(resume_from) / "toyworld.json").read_text()).get("metrics", {})
        prev_history = list(prev.get("history", []))
        metrics: dict[str, Any] = {k: v for k, v in prev.items() if k.startswith("vae") or k == "scaling_factor"}
        metrics["resumed_unet_steps"] = prev.get("unet_steps", 0) + prev.get("resumed_unet_steps", 0)
        metrics["total_unet_steps"] = metrics["resumed_unet_steps"]
    else:
        comps = build_components(cfg.arch, out_dir / "tokenizer")
        metrics = {}
    n_params = {k: sum(p.numel() for p in comps[k].parameters()) for k in ("unet", "vae", "text_encoder")}
    log(f"device {device}; parameters {n_params}")
    stream = RenderStream(cfg, device)
    if resume_from is None:
        metrics.update(train_vae(comps["vae"], stream, cfg, device, log))
    metrics.update(train_unet(comps, stream, cfg, device, log))
    metrics["total_unet_steps"] = metrics.get("resumed_unet_steps", 0) + metrics["unet_steps"]
    metrics["parameters"] = n_params
    metrics["total_seconds"] = time.time() - t0
    metrics["device"] = str(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    run = {
        "stage": "unet+text_encoder (resumed)" if resume_from is not None else "vae, then unet+text_encoder",
        "unet_steps": metrics["unet_steps"],
        "unet_batch": cfg.unet_batch,
        "unet_lr": cfg.unet_lr,
        "unet_mse": metrics["unet_mse"],
        "seconds": metrics["total_seconds"],
        "device": metrics["device"],
    }
    if command is not None:
        run["command"] = command
    if resume_from is None:
        run.update(vae_steps=metrics["vae_steps"], vae_l1=metrics["vae_l1"])
    metrics["history"] = (prev_history if resume_from is not None else []) + [run]
    for k in ("unet", "vae", "text_encoder"):
        comps[k].to("cpu")
    save_prior(comps, out_dir, extra={"metrics": metrics, "config": cfg.to_json()})
    return metrics


# ------------------------------------------------------------------------------------------------
# Sampling helpers
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(
    pipe, prompts: list[str], *, seed: int = 0, steps: int = 25, guidance: float = 4.0, negative: str | None = None
) -> np.ndarray:
    """Sample images (uint8 [N, H, W, 3]) from the prior, one per prompt, each from ``seed``."""
    gens = [torch.Generator(device="cpu").manual_seed(seed) for _ in prompts]
    out = pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
        output_type="np",
        negative_prompt=[negative] * len(prompts) if negative else None,
    )
    return (np.clip(out.images, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(images: np.ndarray | list[np.ndarray], cols: int) -> np.ndarray:
    images = list(images)
    h, w, c = images[0].shape
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, cc = divmod(i, cols)
        grid[r * h : (r + 1) * h, cc * w : (cc + 1) * w] = im
    return grid


VIEW_COLUMNS = ((0.0, "front"), (90.0, "right"), (180.0, "back"), (270.0, "left"))


def sanity_grid(
    pipe,
    out_png: str | Path | None = None,
    *,
    seeds: list[int] | None = None,
    steps: int = 25,
    guidance: float = 4.0,
    sample_seed: int = 0,
) -> np.ndarray:
    """One row per held-out object: ground-truth renders from the front/right/back/left, then samples for
    its caption without a view phrase and with "seen from the front/right/back/left, from slightly above"."""
    from .captions import describe  # noqa: PLC0415
    from .renderer import Camera, orbit_pose, render, to_uint8  # noqa: PLC0415

    seeds = seeds if seeds is not None else [HELDOUT_SEED_START + i for i in range(6)]
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    tiles = []
    for s in seeds:
        obj = ToyObject.from_seed(s)
        cams = [Camera(orbit_pose(az, 30.0, 3.6), DEFAULT_FOV_Y_DEG, size, size) for az, _ in VIEW_COLUMNS]
        rgb, _ = render(obj, cams, supersample=2)
        text = describe(obj)
        prompts = [text] + [f"{text}, seen from the {name}, from slightly above" for _, name in VIEW_COLUMNS]
        tiles += list(to_uint8(rgb)) + list(sample(pipe, prompts, seed=sample_seed + s, steps=steps, guidance=guidance))
    grid = image_grid(tiles, cols=4 + 1 + len(VIEW_COLUMNS))
    if out_png is not None:
        from PIL import Image  # noqa: PLC0415

        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(out_png)
    return grid


def main(argv: list[str] | None = None) -> None:
    """``python -m viewneti_backend.toyworld.prior --out DIR [--vae-minutes M --unet-minutes M ...]``:
    the script that trained the shipped prior (see the report / README for the exact command)."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description="Train the toy-world prior (a tiny Stable-Diffusion-architecture model).")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--resume", default=None, help="continue UNet/text-encoder training from this prior folder (keeps its VAE)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-objects", type=int, default=PriorTrainConfig.n_objects)
    ap.add_argument("--vae-steps", type=int, default=PriorTrainConfig.vae_steps)
    ap.add_argument("--unet-steps", type=int, default=PriorTrainConfig.unet_steps)
    ap.add_argument("--vae-minutes", type=float, default=None)
    ap.add_argument("--unet-minutes", type=float, default=None)
    ap.add_argument("--unet-batch", type=int, default=PriorTrainConfig.unet_batch)
    ap.add_argument("--buffer-size", type=int, default=PriorTrainConfig.buffer_size)
    ap.add_argument("--buffer-refresh", type=int, default=PriorTrainConfig.buffer_refresh)
    ap.add_argument("--unet-lr", type=float, default=PriorTrainConfig.unet_lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny architecture and steps (tests)")
    ap.add_argument("--grid", default=None, help="write a sanity grid PNG here after training")
    a = ap.parse_args(argv)
    cfg = PriorTrainConfig.tiny() if a.tiny else PriorTrainConfig()
    if not a.tiny:
        cfg.n_objects, cfg.vae_steps, cfg.unet_steps, cfg.unet_batch = (
            a.n_objects,
            a.vae_steps,
            a.unet_steps,
            a.unet_batch,
        )
        cfg.vae_max_minutes, cfg.unet_max_minutes = a.vae_minutes, a.unet_minutes
        cfg.buffer_size, cfg.buffer_refresh, cfg.unet_lr = a.buffer_size, a.buffer_refresh, a.unet_lr
    cfg.device, cfg.seed, cfg.progress = a.device, a.seed, False
    command = " ".join(["python -m viewneti_backend.toyworld.prior", *(argv if argv is not None else sys.argv[1:])])
    metrics = train_prior(cfg, a.out, resume_from=a.resume, log=lambda m: print(m, flush=True), command=command)
    print(json.dumps(metrics, indent=1), flush=True)
    if a.grid:
        dev = _device(a.device)
        pipe = load_prior(a.out, dev, torch.float32)
        sanity_grid(pipe, a.grid, steps=25)
        print(f"grid written to {a.grid}", flush=True)


if __name__ == "__main__":
    main()
