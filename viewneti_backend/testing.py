"""Tiny random-weight Stable-Diffusion-architecture pipelines for tests and CPU smoke runs.

They are saved as ordinary diffusers folders and loaded back through the same loader users use,
so tests exercise the real loading path without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from .toyworld.tokenizer import write_tokenizer

TEST_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "view",
    "object",
    "seen",
    "from",
    "left",
    "right",
    "front",
    "back",
    "above",
    "red",
    "green",
    "blue",
    "box",
    "sphere",
    "cube",
    "on",
    "with",
    "rendering",
]


def build_tiny_pipeline(
    folder: str | Path,
    *,
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "v_prediction",
    sample_size: int = 64,
    text_width: int = 32,
    seed: int = 0,
    words: list[str] | None = None,
) -> Path:
    """Save a random-weight SD-architecture pipeline (UNet, VAE, CLIP text encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    write_tokenizer(folder / "tokenizer", words or TEST_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        up_block_types=("UpDecoderBlock2D",) * 3,  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        block_out_channels=(16, 32, 32),  # pyright: ignore[reportArgumentType]  diffusers annotates a one-element tuple for any length
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
    )
    unet = UNet2DConditionModel(**tiny_unet_config(sample_size // 4, text_width))
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    for name, module in (("text_encoder", text_encoder), ("vae", vae), ("unet", unet)):
        module.save_pretrained(folder / name, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": "0.30.0",
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "DDPMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )
    return folder


def build_tiny_viewneti_model(folder: str | Path, *, steps: int = 2, seed: int = 0) -> Path:
    """A tiny random pipeline plus a bundled view-mapper and two built-in objects, trained (mode 3) for a
    few steps on random images: a complete, loadable ViewNeTI model for tests of the engine and server."""
    import numpy as np
    from PIL import Image

    from .base_model import load_base_model
    from .cameras import Camera, orbit_pose
    from .data import Scene
    from .training import TrainConfig, Trainer

    folder = Path(folder)
    build_tiny_pipeline(folder, seed=seed)
    base = load_base_model(folder, device="cpu")
    rng = np.random.default_rng(seed)
    scenes = []
    for name in ("thing_a", "thing_b"):
        images = [Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)) for _ in range(4)]
        scenes.append(Scene(name, images, [Camera(orbit_pose(a, 20, 4), 40, 64, 64) for a in (0, 90, 180, 270)]))
    trainer = Trainer(
        TrainConfig(mode=3, steps=steps, batch_size=2, grad_accum=1, seed=seed), base, scenes, device="cpu"
    )
    result = trainer.train(progress=False)
    if result.view_mapper is None:  # mode 3 trains one
        raise RuntimeError("mode-3 training returned no view-mapper")
    result.view_mapper.save_pretrained(folder / "viewneti" / "view_mapper")
    for name, mapper in result.object_mappers.items():
        mapper.save_pretrained(folder / "viewneti" / "objects" / name)
    return folder


# DTU-like intrinsics of the 1600x1200 Rectified images (fx != fy, off-centre principal point, a
# printed P's residual skew), for synthetic calibrations in tests; nothing is downloaded.
DTU_LIKE_K = ((2892.33, 0.0004, 823.21), (0.0, 2883.18, 619.07), (0.0, 0.0, 1.0))


def synthetic_dtu_projections(
    n: int = 64,
    *,
    centre: tuple[float, float, float] = (30.0, -20.0, 620.0),
    radius: float = 650.0,
    max_polar_deg: float = 45.0,
    seed: int = 0,
    k: tuple = DTU_LIKE_K,
    decimals: int | None = 6,
) -> list:
    """``n`` DTU-like 3x4 projections (OpenCV, mm, +y down): cameras on a spherical cap of ``radius``
    around an object at ``centre`` (in front of the cameras, along +z), looking at it, image-up
    along world -y, with :data:`DTU_LIKE_K`; rounded as DTU prints them (6 decimals; None: exact)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k_mat = np.asarray(k, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    out = []
    rings = max(1, int(round(n**0.5)))
    for i in range(n):
        ring, pos = divmod(i, -(-n // rings))
        polar = np.radians(max_polar_deg * (ring + 0.5) / rings) + rng.normal(0, 0.01)
        az = 2 * np.pi * pos / -(-n // rings) + 0.3 * ring + rng.normal(0, 0.01)
        d = np.array([np.sin(polar) * np.cos(az), np.sin(polar) * np.sin(az), -np.cos(polar)])  # towards cameras
        eye = c + radius * d
        fwd = (c - eye) / np.linalg.norm(c - eye)  # camera +z
        right = np.cross(np.array([0.0, 1.0, 0.0]), fwd)  # image x; world +y is image down
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        rot = np.stack([right, down, fwd])  # world -> camera rows
        p = k_mat @ np.concatenate([rot, (-rot @ eye)[:, None]], axis=1)
        out.append(p if decimals is None else np.array([[float(f"{v:.{decimals}f}") for v in row] for row in p]))
    return out


def write_synthetic_dtu_calibration(folder: str | Path, n: int = 64, **kw) -> Path:
    """Write ``pos_001.txt`` ... as DTU's Calibration/cal18 folder holds them; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(synthetic_dtu_projections(n, **kw)):
        (folder / f"pos_{i + 1:03d}.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in p) + "\n")
    return folder


def build_dtu_view_mapper(model: str | Path, out: str | Path, *, rig: bool = True, seed: int = 0) -> Path:
    """A random-weight dtu-12d view-mapper for ``model`` (statistics and rig from a synthetic cal18):
    what an imported DTU mapper looks like to the engine, for tests of the rig and its warnings."""
    from .base_model import load_base_model
    from .camera_features import Dtu12d
    from .camera_rig import CameraRig
    from .mapper import MapperConfig, NeTIMapper

    base = load_base_model(model, device="cpu")
    projections = synthetic_dtu_projections(64)
    param = Dtu12d.from_projections(projections).to_config()
    if rig:
        param["rig"] = CameraRig.fit(projections).to_dict()
    torch.manual_seed(seed)
    mapper = NeTIMapper(
        MapperConfig(
            kind="view",
            token=base.text.view_token,
            embedding_dim=base.text.embedding_dim,
            num_layers=base.num_layers,
            camera_dim=12,
            camera_parameterization=param,
            norm_target=base.text.reference_norm("view"),
            super_word="view",
            base_model=base.name,
            base_model_fingerprint=base.fingerprint,
        )
    )
    return mapper.save_pretrained(out)


def tiny_unet_config(sample_size: int, cross_attention_dim: int) -> dict[str, Any]:
    """The tiny model's UNet2DConditionModel arguments (SD's block layout at 16-32 channels)."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
