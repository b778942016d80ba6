"""Shared by the toy-world CPU sweeps: the built-in objects rendered on an orbit and scored against
the renderer's ground truth (masked PSNR / SSIM), so every sweep scores exactly the same way; the
object-area segmentation and the sharpness measure the sweeps report beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from viewneti_backend.config_cli import option


@dataclass
class SweepOptions:
    """Options the toy sweeps share, written once (``add_options(parser, SweepOptions, only=...)``).

    ``guidances`` is a list of scales to sweep, not BenchmarkConfig's one ``guidance``."""

    views: int = field(
        default=8, metadata=option("orbit views per object (elevation 25 deg, radius 3.6, from azimuth 15 deg)")
    )
    guidances: list[float] = field(
        default_factory=lambda: [1.0, 2.0],
        metadata=option("comma-separated classifier-free guidance scales", flag="--guidance"),
    )


def orbit_cameras(views: int, size: int = 64) -> list:
    """``views`` cameras evenly spaced on the benchmark's orbit (elevation 25 deg, radius 3.6), from 15 deg."""
    from viewneti_backend.cameras import Camera, orbit_pose

    return [Camera(orbit_pose(360.0 * k / views + 15.0, 25.0, 3.6), 40.0, size, size) for k in range(views)]


def builtin_ground_truth(engine, cameras, objects: list[str], truth: dict | None = None) -> dict:
    """Renderer ground truth of each built-in object (its toy seed is stored with its token); ``truth``
    is filled in place and reused, so several engines over the same objects render it once."""
    from viewneti_backend.mapper import NeTIMapper
    from viewneti_backend.toyworld.dataset import render_scene

    truth = {} if truth is None else truth
    for name in objects:
        if name not in truth:
            seed = NeTIMapper.from_pretrained(Path(engine.model) / "viewneti" / "objects" / name).config.extra[
                "toy_seed"
            ]
            truth[name] = render_scene(int(seed), cameras)
    return truth


def score_views(images, gt) -> dict:
    """Mean masked PSNR / SSIM of ``images`` against a rendered ground-truth scene (``gt.images``, ``gt.masks``)."""
    import numpy as np

    from viewneti_backend.evaluation import masked_psnr, masked_ssim

    return {
        "psnr": float(np.mean([masked_psnr(p, g, m) for p, g, m in zip(images, gt.images, gt.masks)])),
        "ssim": float(np.mean([masked_ssim(p, g, m) for p, g, m in zip(images, gt.images, gt.masks)])),
    }


def score_builtin_renders(engine, cameras, objects: list[str], truth: dict, seeds: list[int], **render_kwargs):
    """An EvalTable of every object x seed x view rendered by ``engine`` with ``render_kwargs``."""
    from viewneti_backend.evaluation import EvalTable, masked_psnr, masked_ssim

    table = EvalTable()
    for name in objects:
        gt = truth[name]
        for seed in seeds:
            preds = engine.render(cameras, name, seed=seed, **render_kwargs)
            for k, (p, g) in enumerate(zip(preds, gt.images)):
                table.add(name, k, seed, masked_psnr(p, g, gt.masks[k]), masked_ssim(p, g, gt.masks[k]))
    return table


def object_area_mask(image, threshold: float = 0.25):
    """Boolean object mask of a toy render: saturated, not black."""
    import numpy as np

    a = np.asarray(image).astype(np.float32) / 255.0
    hi, lo = a.max(-1), a.min(-1)
    return ((hi - lo) / np.maximum(hi, 1e-3) > threshold) & (hi > 0.08)


def sharpness(image, mask) -> float:
    """Mean absolute Laplacian of the grey image (0..1) over the mask's pixels."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.asarray(image, dtype=np.float32)[..., :3].mean(-1) / 255.0)[None, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="reflect"), kernel)[0, 0].numpy()
    return float(np.abs(lap)[np.asarray(mask) > 0.5].mean())
