"""ViewNeTI's training augmentations, in plain torch (no torchvision), on [-1, 1] image batches.

- key 7 (per-scene modes 2/4/5, "RealFusion minus grayscale"): colour jitter 0.04 (p=0.75), Gaussian
  blur k=5 sigma in [0.1, 0.2] (p=0.2), rotation +-10 deg (p=0.75, near-black fill), random resized
  crop with scale [0.70, 1.30] and ratio [3/4, 4/3] (always).
- key 5 (mode-3 pretraining): colour jitter 0.04 (p=0.75), blur (p=0.25), crop scale [0.95, 1.05].
Hue jitter is a rotation of the chroma plane in YIQ space (torchvision uses HSV; same intent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationConfig:
    jitter: float = 0.04
    jitter_p: float = 0.75
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 0.2)
    rotation_deg: float = 0.0
    rotation_p: float = 0.0
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


AUGMENTATIONS = {
    7: AugmentationConfig(blur_p=0.2, rotation_deg=10.0, rotation_p=0.75, crop_scale=(0.70, 1.30)),
    5: AugmentationConfig(blur_p=0.25, crop_scale=(0.95, 1.05)),
    0: None,
}

_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _color_jitter(img: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    x = (img + 1) / 2
    for op in torch.randperm(4, generator=gen).tolist():
        f = _uniform(gen, 1 - s, 1 + s)
        if op == 0:  # brightness
            x = x * f
        elif op == 1:  # contrast
            mean = (x * _LUMA.to(x.device)[:, None, None]).sum(0).mean()
            x = (x - mean) * f + mean
        elif op == 2:  # saturation
            gray = (x * _LUMA.to(x.device)[:, None, None]).sum(0, keepdim=True)
            x = (x - gray) * f + gray
        else:  # hue: rotate the IQ chroma plane by up to s * 360 degrees
            a = _uniform(gen, -s, s) * 2 * math.pi
            yiq = torch.einsum("ij,jhw->ihw", _YIQ.to(x.device), x)
            i, q = yiq[1] * math.cos(a) - yiq[2] * math.sin(a), yiq[1] * math.sin(a) + yiq[2] * math.cos(a)
            x = torch.einsum("ij,jhw->ihw", _YIQ_INV.to(x.device), torch.stack([yiq[0], i, q]))
        x = x.clamp(0, 1)
    return x * 2 - 1


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(5, dtype=img.dtype, device=img.device) - 2
    k = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[0]
    x = F.pad(img[None], (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0]


def _affine(img: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    theta = theta.to(img.device, img.dtype)
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    ones = torch.ones(1, 1, *img.shape[1:], dtype=img.dtype, device=img.device)
    warped = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + (1 - valid) * fill)[0]


def augment_image(img: torch.Tensor, cfg: AugmentationConfig | None, gen: torch.Generator) -> torch.Tensor:
    """Augment one [3, H, W] image in [-1, 1]; output has the same size."""
    if cfg is None:
        return img
    x = img.float()
    if float(torch.rand((), generator=gen)) < cfg.jitter_p:
        x = _color_jitter(x, cfg.jitter, gen)
    if float(torch.rand((), generator=gen)) < cfg.blur_p:
        x = _blur(x, _uniform(gen, *cfg.blur_sigma))
    if cfg.rotation_p and float(torch.rand((), generator=gen)) < cfg.rotation_p:
        a = math.radians(_uniform(gen, -cfg.rotation_deg, cfg.rotation_deg))
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        x = _affine(x, theta, fill=-1.0 + 2.0 / 255.0)  # PIL fill=1 on 0..255: near black
    if cfg.crop_scale != (1.0, 1.0):
        area = _uniform(gen, *cfg.crop_scale)
        log_r = _uniform(gen, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
        ratio = math.exp(log_r)
        sw, sh = min(math.sqrt(area * ratio), 1.3), min(math.sqrt(area / ratio), 1.3)
        cx, cy = _uniform(gen, -max(0, 1 - sw), max(0, 1 - sw)), _uniform(gen, -max(0, 1 - sh), max(0, 1 - sh))
        theta = torch.tensor([[sw, 0.0, cx], [0.0, sh, cy]])
        x = _affine(x, theta, fill=-1.0)
    return x


def augment_batch(images: torch.Tensor, cfg: AugmentationConfig | None, gen: torch.Generator) -> torch.Tensor:
    """Augment each image independently, on the images' device (random draws come from the CPU generator)."""
    if cfg is None:
        return images
    return torch.stack([augment_image(im, cfg, gen) for im in images]).to(images.dtype)
