"""Random-weight Stable Diffusion 2.1 components with the real configs (times exactly like the real model).

UNet 2.1 (768-v), VAE (SD 2 kl-f8), OpenCLIP-H text encoder as diffusers ships it (23 layers, width
1024), scheduler with v-prediction. The tokenizer is a small offline CLIP BPE; the text encoder keeps
SD 2's 49408-row table, so every matrix has its real size.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from viewneti_backend.base_model import assemble_base_model
from viewneti_backend.testing import TEST_WORDS
from viewneti_backend.toyworld.tokenizer import write_tokenizer

UNET_21: dict[str, Any] = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE_SD2: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    act_fn="silu",
    norm_num_groups=32,
    scaling_factor=0.18215,
)
SCHEDULER_21 = dict(
    _class_name="DDPMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    clip_sample=False,
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    timestep_spacing="leading",
)


TINY = {  # --smoke: same structure, tiny widths, so the script can be checked on a CPU
    "unet": dict(
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=(2, 2, 4, 4),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=64,
    ),
    "vae": dict(block_out_channels=(16, 16, 32, 32), norm_num_groups=8, layers_per_block=1),
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000),
}


def sd21_base_model(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0, tiny: bool = False):
    from diffusers import AutoencoderKL, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = tempfile.mkdtemp(prefix="sd21-tok-")
    write_tokenizer(tok_dir, TEST_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_kw: dict[str, Any] = dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16
    )
    if tiny:
        text_kw.update(TINY["text"])
    te_cfg = CLIPTextConfig(
        **text_kw,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        text_encoder = CLIPTextModel(te_cfg)
        unet = UNet2DConditionModel(**{**UNET_21, **(TINY["unet"] if tiny else {})})
        vae = AutoencoderKL(**{**VAE_SD2, **(TINY["vae"] if tiny else {})})
    # Small random weights keep activations finite through 23 blocks in half precision.
    with torch.no_grad():
        for m in (text_encoder, unet, vae):
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    return assemble_base_model(
        "sd21-random", tokenizer, text_encoder, unet, vae, SCHEDULER_21, torch.device(device), dtype
    )


DDPM_KEYS = (
    "beta_start",
    "beta_end",
    "beta_schedule",
    "num_train_timesteps",
    "prediction_type",
    "clip_sample",
    "steps_offset",
    "timestep_spacing",
)


def write_sd21_viewneti_model(folder, *, tiny: bool = False, device: str = "cuda", seed: int = 0):
    """Save random-weight SD 2.1 components as an ordinary diffusers folder, with a random view-mapper
    (anchor-pose-13d) and one object token bundled under ``viewneti/``: what a user's SD 2.1 folder plus
    a trained view-mapper looks like to ``viewneti-server --model FOLDER``. Weights in bf16 (the server's
    CUDA dtype); the mappers in fp32, as trained."""
    import json
    from pathlib import Path

    from viewneti_backend.base_model import load_base_model
    from viewneti_backend.camera_features import make_parameterization
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.training import new_mapper

    folder = Path(folder)
    base = sd21_base_model(
        device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32, seed=seed, tiny=tiny
    )
    tokenizer: Any = base.tokenizer
    tokenizer.save_pretrained(folder / "tokenizer")
    for name in ("text_encoder", "unet", "vae"):
        getattr(base, name).save_pretrained(folder / name, safe_serialization=True)
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    scheduler: Any = DDPMScheduler.from_config({k: v for k, v in SCHEDULER_21.items() if k in DDPM_KEYS})
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    del base
    # mappers for the model as it loads back (its fingerprint is what the engine checks)
    loaded = load_base_model(folder, device=device)
    cams = [Camera(orbit_pose(az, el, 4.0), 40.0, 768, 576) for az in range(0, 360, 30) for el in (10, 30)]
    view = new_mapper(loaded, "view", make_parameterization("anchor-pose-13d").fit(cams))
    view.save_pretrained(folder / "viewneti" / "view_mapper")
    new_mapper(loaded, "object").save_pretrained(folder / "viewneti" / "objects" / "bench_object")
    del loaded
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder
