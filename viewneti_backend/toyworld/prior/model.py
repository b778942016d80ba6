"""The toy prior's components: architecture, noise schedule, building, saving, loading and sampling."""

from __future__ import annotations

import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..renderer import DEFAULT_FOV_Y_DEG, ToyObject
from ..tokenizer import load_tokenizer, write_tokenizer

HELDOUT_SEED_START = 1_000_000  # object seeds from here on are never seen by the prior (held-out benchmarks)
PRIOR_FORMAT = "viewneti-toy-prior"


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_bf16(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


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
    from ..captions import describe  # noqa: PLC0415
    from ..renderer import Camera, orbit_pose, render, to_uint8  # noqa: PLC0415

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
