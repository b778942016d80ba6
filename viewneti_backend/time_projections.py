"""Every resnet's time-embedding projection in one GEMM a step.

Each of the SD 2 UNet's 22 resnets projects the step's time embedding with its own
``SiLU -> time_emb_proj`` (a linear layer on 2 rows for a CFG render), so a denoising step runs ~22
GEMMs of 4-6 us each, ~4 ms of a 30-step view on an H100 (RESULTS.md section 1, "Tiny GEMMs"). They
all read the same input. :func:`fuse_time_embedding_projections` makes the UNet's time embedding
return all the projections at once (SiLU, then one linear layer whose weight is the resnets' weights
stacked), and each resnet's ``time_emb_proj`` take its columns of that: the same dot products, one
kernel. State-dict keys and parameters stay (the stacked copy is a non-persistent buffer).

Only for UNets where the time embedding feeds the resnets alone: no class or added embeddings and
no activation after it (SD 1.x / 2.x); others are left as they are. ``compile_base_model`` applies it
since session 29 (H100, against the build without it in one run: 10.1 / 9.0 ms off a new / same-pose
768x576 view, 1.6 / 1.3 ms off a live frame; ``benchmarks/gpu_render_options.py --sections
separate-time-projections`` times the build without it). :func:`unfuse_time_embedding_projections` undoes
it (the stacked copy does not follow later changes to the resnets' weights).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn


class FusedTimestepEmbedding(TimestepEmbedding):
    """diffusers' ``TimestepEmbedding`` (an instance's class is swapped in place) whose output is every
    resnet's projection of the embedding, side by side."""

    fused_weight: torch.Tensor
    fused_bias: torch.Tensor

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = super().forward(sample, condition)
        return F.linear(F.silu(emb), self.fused_weight, self.fused_bias)


class _ProjectionColumns(nn.Linear):
    """A resnet's ``time_emb_proj`` once fused: its columns of the time embedding's output (its own
    weight and bias stay, for the state dict, and are not used)."""

    start: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  nn.Linear's argument name
        return input[:, self.start : self.start + self.out_features]


def _resnets_with_projections(unet: nn.Module) -> list[Any]:
    return [m for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None]


def can_fuse_time_embedding_projections(unet: nn.Module) -> bool:
    """Whether the UNet's time embedding feeds its resnets only, each through SiLU and a linear layer."""
    config: Any = getattr(unet, "config", None)
    embedding: Any = getattr(unet, "time_embedding", None)
    if config is None or type(embedding) is not TimestepEmbedding or embedding.cond_proj is not None:
        return False
    if any(getattr(unet, name, None) is not None for name in ("class_embedding", "add_embedding", "time_embed_act")):
        return False
    if getattr(config, "addition_embed_type", None) or getattr(config, "class_embed_type", None):
        return False
    resnets = _resnets_with_projections(unet)
    return bool(resnets) and all(
        type(r.time_emb_proj) is nn.Linear
        and not r.skip_time_act
        and isinstance(r.nonlinearity, nn.SiLU)
        and getattr(r, "time_embedding_norm", "default") == "default"
        and r.time_emb_proj.in_features == embedding.linear_2.out_features
        for r in resnets
    )


def fuse_time_embedding_projections(unet: nn.Module) -> int:
    """Fuse the resnets' time-embedding projections into the time embedding (see the module docstring), in
    place; returns how many were fused (0: already fused, or a UNet this does not apply to). Call after
    the UNet has its final device and dtype."""
    if not can_fuse_time_embedding_projections(unet):
        return 0
    embedding: Any = unet.time_embedding
    resnets = _resnets_with_projections(unet)
    with torch.no_grad():
        weight = torch.cat([r.time_emb_proj.weight for r in resnets]).detach().clone()
        bias = torch.cat([r.time_emb_proj.bias for r in resnets]).detach().clone()
    embedding.__class__ = FusedTimestepEmbedding
    embedding.register_buffer("fused_weight", weight, persistent=False)
    embedding.register_buffer("fused_bias", bias, persistent=False)
    start = 0
    for resnet in resnets:
        projection = resnet.time_emb_proj
        projection.__class__ = _ProjectionColumns
        projection.start = start
        start += projection.out_features
        resnet.skip_time_act = True  # the SiLU ran once, before the fused projection
    return len(resnets)


def unfuse_time_embedding_projections(unet: nn.Module) -> int:
    """Undo :func:`fuse_time_embedding_projections` in place: each resnet projects the time embedding
    itself again, with its own (possibly since changed) weights; returns how many were unfused."""
    if not isinstance(getattr(unet, "time_embedding", None), FusedTimestepEmbedding):
        return 0
    embedding: Any = unet.time_embedding  # Any: its class is swapped below
    resnets = [r for r in _resnets_with_projections(unet) if type(r.time_emb_proj) is _ProjectionColumns]
    for resnet in resnets:
        projection: Any = resnet.time_emb_proj
        del projection.start
        projection.__class__ = nn.Linear
        resnet.skip_time_act = False
    del embedding.fused_weight, embedding.fused_bias
    embedding.__class__ = TimestepEmbedding
    return len(resnets)
