"""ViewNeTI's training augmentations, in plain torch (no torchvision), on [-1, 1] image batches.

- key 7 (per-scene modes 2/4/5, "RealFusion minus grayscale"): colour jitter 0.04 (p=0.75), Gaussian
  blur k=5 sigma in [0.1, 0.2] (p=0.2), rotation +-10 deg (p=0.75, near-black fill), random resized
  crop with scale [0.70, 1.30] and ratio [3/4, 4/3] (always), with torchvision's semantics: crops
  stay inside the image (up to 10 tries, then the central crop), so it zooms in by up to 1.2x.
- key 5 (mode-3 pretraining): colour jitter 0.04 (p=0.75), blur (p=0.25), crop scale [0.95, 1.05].
Hue jitter is a rotation of the chroma plane in YIQ space (torchvision uses HSV; same intent).
`augment_image` is the readable per-image reference. `augment_batch` gives the same images (to float rounding)
and consumes the CPU generator identically, but is batched so a CUDA training step doesn't stall: it first draws
every image's parameters on the CPU (same draws, same order), then sends them in one pinned transfer and applies
each augmentation to the whole batch at once (each jitter op is a per-image 3x3 colour matrix). The two phases
are also public (`plan_augmentation`, `apply_augmentation`): a training step draws each micro-batch's plan in turn
and augments the images of all of them in one pass.
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
_YIQ_LIST, _YIQ_INV_LIST, _LUMA_LIST = _YIQ.double().tolist(), _YIQ_INV.double().tolist(), _LUMA.double().tolist()


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
    k = torch.exp(-(r**2) / (2 * sigma**2))
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
        sw, sh, cx, cy = draw_crop(cfg, gen, x.shape[2], x.shape[1])
        theta = torch.tensor([[sw, 0.0, cx], [0.0, sh, cy]])
        x = _affine(x, theta, fill=-1.0)
    return x


def draw_crop(
    cfg: AugmentationConfig, gen: torch.Generator, width: int, height: int
) -> tuple[float, float, float, float]:
    """torchvision's ``RandomResizedCrop.get_params``, drawn from ``gen``, as an affine zoom
    (scale x, scale y, centre x, centre y) in ``affine_grid`` coordinates.

    Up to 10 tries of (area fraction in ``crop_scale``, pixel aspect ratio log-uniform in
    ``crop_ratio``); the first crop that fits inside the image is taken at a uniform position,
    otherwise the central crop with its aspect clamped into ``crop_ratio``. So a crop never leaves
    the image (a scale above 1 only makes fitting crops rarer: key 7's [0.70, 1.30] zooms in by up
    to 1.2x, never out) and is stretched to the full output size.
    """
    area = width * height
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(10):
        target = area * _uniform(gen, *cfg.crop_scale)
        ratio = math.exp(_uniform(gen, log_lo, log_hi))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            break
    else:
        in_ratio = width / height
        if in_ratio < cfg.crop_ratio[0]:
            w, h = width, int(round(width / cfg.crop_ratio[0]))
        elif in_ratio > cfg.crop_ratio[1]:
            w, h = int(round(height * cfg.crop_ratio[1])), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return w / width, h / height, (2 * left + w) / width - 1.0, (2 * top + h) / height - 1.0


@dataclass
class _ImagePlan:
    """One image's random draws: what `augment_image` would do to it."""

    jitter: list[tuple[int, float, float]] | None = None  # per round: (op, factor, hue angle in radians)
    sigma: float | None = None  # blur
    rotation: float | None = None  # radians
    crop: tuple[float, float, float, float] | None = None  # sw, sh, cx, cy


def _plan_image(cfg: AugmentationConfig, gen: torch.Generator, width: int, height: int) -> _ImagePlan:
    """Draw from `gen` exactly what `augment_image` draws, in the same order (CPU only)."""
    plan = _ImagePlan()
    if float(torch.rand((), generator=gen)) < cfg.jitter_p:
        s, plan.jitter = cfg.jitter, []
        for op in torch.randperm(4, generator=gen).tolist():
            f = _uniform(gen, 1 - s, 1 + s)
            a = _uniform(gen, -s, s) * 2 * math.pi if op == 3 else 0.0
            plan.jitter.append((op, f, a))
    if float(torch.rand((), generator=gen)) < cfg.blur_p:
        plan.sigma = _uniform(gen, *cfg.blur_sigma)
    if cfg.rotation_p and float(torch.rand((), generator=gen)) < cfg.rotation_p:
        plan.rotation = math.radians(_uniform(gen, -cfg.rotation_deg, cfg.rotation_deg))
    if cfg.crop_scale != (1.0, 1.0):
        plan.crop = draw_crop(cfg, gen, width, height)
    return plan


def _matmul3(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _jitter_round(op: int, f: float, a: float) -> list[float]:
    """One jitter op as x -> M x + (w . channel means) on [0, 1] colours: M (9 floats, row-major) then w (3).

    brightness x*f; contrast (x - mean)*f + mean with mean = luma-weighted mean; saturation (x - gray)*f + gray;
    hue YIQ^-1 R(a) YIQ x: the same maths as `_color_jitter`, written as one per-pixel matrix per image.
    """
    luma = _LUMA_LIST
    if op == 3:
        c, s = math.cos(a), math.sin(a)
        rot = [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]
        m = _matmul3(_YIQ_INV_LIST, _matmul3(rot, _YIQ_LIST))
        return [v for row in m for v in row] + [0.0, 0.0, 0.0]
    m = [[f if i == j else 0.0 for j in range(3)] for i in range(3)]
    if op == 2:
        m = [[m[i][j] + (1 - f) * luma[j] for j in range(3)] for i in range(3)]
    w = [(1 - f) * v for v in luma] if op == 1 else [0.0, 0.0, 0.0]
    return [v for row in m for v in row] + w


def _blur_taps(sigmas: list[float]) -> list[float]:
    """`_blur`'s normalised 5-tap kernels (float32, computed as there), flattened."""
    r = torch.arange(5, dtype=torch.float32) - 2
    k = torch.exp(-(r**2)[None] / torch.tensor([2 * s**2 for s in sigmas], dtype=torch.float32)[:, None])
    return (k / k.sum(1, keepdim=True)).flatten().tolist()


def _affine_batch(x: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """`_affine` on a [N, C, H, W] batch with per-image thetas [N, 2, 3]."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ones = torch.ones(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.add_(valid.neg_().add_(1).mul_(fill))  # warped + (1 - valid) * fill, in place


def _on_subset(x: torch.Tensor, idx: torch.Tensor, fn, inplace: bool) -> torch.Tensor:
    """Apply fn to the images of x listed in idx (image numbers as floats, on x's device); the others keep their
    values. inplace: x is ours to overwrite (not the caller's input)."""
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:  # indices are increasing and distinct: all of them, in order
        return fn(x)
    idx = idx.long()
    y = fn(x.index_select(0, idx))
    return x.index_copy_(0, idx, y) if inplace else x.index_copy(0, idx, y)


@dataclass(frozen=True)
class AugmentationPlan:
    """Every random draw of a batch's augmentation, made on the CPU: applying it needs no generator.

    Plans of several micro-batches concatenate (``AugmentationPlan.concat``), so a training step that
    fuses its micro-batches augments all of their images in one batched pass, with the draws made in
    the micro-batches' own order.
    """

    config: AugmentationConfig
    images: tuple[_ImagePlan, ...]
    width: int
    height: int

    @staticmethod
    def concat(plans: list[AugmentationPlan]) -> AugmentationPlan:
        first = plans[0]
        if any((p.config, p.width, p.height) != (first.config, first.width, first.height) for p in plans):
            raise ValueError("only plans of one augmentation at one image size concatenate")
        return AugmentationPlan(first.config, tuple(i for p in plans for i in p.images), first.width, first.height)


def plan_augmentation(
    cfg: AugmentationConfig, gen: torch.Generator, n: int, width: int, height: int
) -> AugmentationPlan:
    """Draw the augmentation of ``n`` images from ``gen`` (CPU only): what `augment_batch` draws, in its order."""
    return AugmentationPlan(cfg, tuple(_plan_image(cfg, gen, width, height) for _ in range(n)), width, height)


def augment_batch(images: torch.Tensor, cfg: AugmentationConfig | None, gen: torch.Generator) -> torch.Tensor:
    """Augment each image independently, on the images' device (random draws come from the CPU generator).

    Same result as stacking `augment_image` over the batch (to float rounding) and the same generator state after.
    """
    if cfg is None:
        return images
    b, c, h, w = images.shape
    return apply_augmentation(images, plan_augmentation(cfg, gen, b, w, h))


def apply_augmentation(images: torch.Tensor, plan: AugmentationPlan) -> torch.Tensor:
    """Apply a drawn plan to a [N, 3, H, W] batch on its device: batched ops, no host syncs."""
    b, c, h, w = images.shape
    if len(plan.images) != b or (plan.width, plan.height) != (w, h):
        raise ValueError(
            f"a plan for {len(plan.images)} images of {plan.width}x{plan.height} applied to {b} of {w}x{h}"
        )
    cfg, plans = plan.config, plan.images

    # Every per-image parameter in one flat float32 CPU tensor; segment sizes are known here, on the CPU.
    jit = [i for i, p in enumerate(plans) if p.jitter is not None]
    blr = [i for i, p in enumerate(plans) if p.sigma is not None]
    rot = [i for i, p in enumerate(plans) if p.rotation is not None]
    crop = cfg.crop_scale != (1.0, 1.0)
    jitters = [p.jitter for p in plans if p.jitter is not None]  # the plans of `jit`, in order (likewise below)
    contrast_round = [any(j[k][0] == 1 for j in jitters) for k in range(4)]
    flat: list[float] = []
    for rounds in jitters:
        for op, f, a in rounds:
            flat += _jitter_round(op, f, a)
    flat += [float(i) for i in jit]
    flat += _blur_taps([p.sigma for p in plans if p.sigma is not None]) if blr else []
    flat += [float(i) for i in blr]
    for a in [p.rotation for p in plans if p.rotation is not None]:
        flat += [math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a), 0.0]
    flat += [float(i) for i in rot]
    for p in plans if crop else []:
        if p.crop is None:  # _plan_image draws a crop for every image when the config crops
            raise ValueError("an augmentation plan for a cropping config has an image without a crop")
        sw, sh, cx, cy = p.crop
        flat += [sw, 0.0, cx, 0.0, sh, cy]
    sizes = [len(jit) * 48, len(jit), len(blr) * 5, len(blr), len(rot) * 6, len(rot), b * 6 if crop else 0]
    if images.device.type == "cuda":  # made pinned (tensor.pin_memory() spends ~0.3 ms in is_pinned): no sync
        params = torch.tensor(flat, dtype=torch.float32, pin_memory=True).to(images.device, non_blocking=True)
    else:
        params = torch.tensor(flat, dtype=torch.float32).to(images.device)  # a no-op on the CPU
    jm, ji, bk, bi, rt, ri, ct = torch.split(params, sizes)

    # Phase 2: batched on the device; no per-image ops, no host syncs.
    x = images.float()

    def jitter(xs: torch.Tensor) -> torch.Tensor:
        n = xs.shape[0]
        mats = jm.view(n, 4, 12)
        y = (xs + 1).div_(2).reshape(n, c, h * w)
        for k in range(4):
            m = mats[:, k, :9].view(n, 3, 3)
            bias = (mats[:, k, 9:] * y.mean(2)).sum(1).view(n, 1, 1) if contrast_round[k] else None
            y = torch.einsum("bij,bjp->bip", m, y)  # = torch.bmm, which on CPU is ~2.5x slower at this shape
            y = (y if bias is None else y.add_(bias)).clamp_(0, 1)
        return y.mul_(2).sub_(1).view(n, c, h, w)

    def blur(xs: torch.Tensor) -> torch.Tensor:
        n = xs.shape[0]
        k = bk.view(n, 1, 5).expand(n, c, 5).reshape(n * c, 1, 5)
        y = F.pad(xs.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="reflect")
        y = F.conv2d(y, k.view(n * c, 1, 1, 5), groups=n * c)
        y = F.conv2d(y, k.view(n * c, 1, 5, 1), groups=n * c)
        return y.view(n, c, h, w)

    x = _on_subset(x, ji, jitter, inplace=x is not images)
    x = _on_subset(x, bi, blur, inplace=x is not images)
    x = _on_subset(x, ri, lambda xs: _affine_batch(xs, rt.view(-1, 2, 3), -1.0 + 2.0 / 255.0), x is not images)
    if crop:
        x = _affine_batch(x, ct.view(b, 2, 3), fill=-1.0)
    out = x.to(images.dtype)
    return out.clone() if out is images else out
