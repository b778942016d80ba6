"""The toy prior's training data: random (object, view) renders with captions, made on the fly, and the
pool of VAE latents the UNet trains from."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from ..captions import caption
from ..renderer import CameraSampler, ToyObject, index_packed, orbit_poses_torch, pack_objects, render_packed
from .model import autocast_bf16

if TYPE_CHECKING:
    from .training import PriorTrainConfig


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
        with autocast_bf16(self.device):
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
