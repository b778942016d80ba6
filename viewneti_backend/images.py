"""PIL images <-> model tensors: the one place that fixes the pixel range ([-1, 1]) and layout
([N, 3, H, W]) the VAE reads and writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def images_to_tensor(images: Sequence[Image.Image], width: int, height: int) -> torch.Tensor:
    """PIL images -> [N, 3, H, W] in [-1, 1] (bicubic resize to the given size)."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BICUBIC)
        arrs.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in [-1, 1] -> 8-bit RGB PIL images (clamped, rounded)."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
