"""Group normalization written for channels-last activations: faster compiled renders (the default).

The UNet and the VAE decoder run channels-last (NHWC memory). There, a group's values are
``C / G`` neighbouring channels repeated at every pixel, and inductor compiles ``F.group_norm`` into
one reduction over that strided set: its group-norm kernels took 47 ms of a cached 768x576 view on an
H100 (120 calls of the largest at 64 us, about a fifth of the memory bandwidth; RESULTS section 1).

:class:`SplitStatsGroupNorm` computes the same function with the statistics written as two plain
sums: first over a group's channels (contiguous in memory), then over the pixels, with the variance
from sums of squares of the values less a shift near the mean. Only the order of the float32
additions changes (the kind of difference any other kernel choice makes). It does so only where
inductor compiles it; run eagerly, and for contiguous (NCHW) inputs or other ranks, it is
``F.group_norm`` (ATen's one kernel, where the split form would be a dozen).

:func:`use_split_stats_group_norm` switches a model's group norms in place (weights and state-dict
keys stay). ``compile_base_model`` does so for the UNet and the VAE by default: through the server on
an H200, views about 2 % faster, live frames 3 %, sequences 6 % (RESULTS section 6). ``VIEWNETI_GROUP_NORM=native`` keeps
inductor's own group norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_ENV = "VIEWNETI_GROUP_NORM"
GROUP_NORM_CHOICES = ("native", "split")
GROUP_NORM_DEFAULT = "split"


def split_stats_group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.group_norm`` for a channels-last 4-D ``x``, statistics as two sums (see the module docstring).

    Returns a tensor of ``x``'s shape, dtype and (channels-last) memory format.
    """
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"group norm: {c} channels do not split into {groups} groups")
    per_group = c // groups
    # [b, h, w, c] is x's memory order, so this view copies nothing
    values = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, per_group).float()
    count = h * w * per_group
    # Sums of the values less a shift near each group's mean (its first pixel's mean), so that the
    # variance, E[d^2] - E[d]^2, loses no digits when the mean is far above the spread.
    shift = values[:, 0].mean(dim=2)  # [b, groups]
    centred = values - shift[:, None, :, None]
    offset = centred.sum(dim=3).sum(dim=1) / count
    rstd = torch.rsqrt((centred.square().sum(dim=3).sum(dim=1) / count - offset.square()).clamp_min(0.0) + eps)
    mean = shift + offset
    y = ((values - mean[:, None, :, None]) * rstd[:, None, :, None]).reshape(b, h, w, c)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).permute(0, 3, 1, 2)


class SplitStatsGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that, when compiled, normalizes channels-last 4-D inputs with
    :func:`split_stats_group_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  nn.GroupNorm's argument name
        if (
            torch.compiler.is_compiling()
            and input.dim() == 4
            and input.shape[1] > 1
            and input.is_contiguous(memory_format=torch.channels_last)
        ):
            return split_stats_group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


def _swap_group_norm_class(model: nn.Module, old: type[nn.GroupNorm], new: type[nn.GroupNorm]) -> int:
    count = 0
    for module in model.modules():
        if type(module) is old:
            module.__class__ = new
            count += 1
    return count


def use_split_stats_group_norm(model: nn.Module) -> int:
    """Make every ``nn.GroupNorm`` of ``model`` a :class:`SplitStatsGroupNorm` in place; returns how many.

    The modules keep their parameters, buffers and names (so checkpoints load as before)."""
    return _swap_group_norm_class(model, nn.GroupNorm, SplitStatsGroupNorm)


def use_native_group_norm(model: nn.Module) -> int:
    """Undo :func:`use_split_stats_group_norm` in place (inductor's own group norm); returns how many."""
    return _swap_group_norm_class(model, SplitStatsGroupNorm, nn.GroupNorm)


def split_group_norm_requested() -> bool:
    """Whether compiled models get the split form: ``VIEWNETI_GROUP_NORM`` unset or ``split``; ``native``: no."""
    import os

    value = os.environ.get(GROUP_NORM_ENV, "").strip().lower() or GROUP_NORM_DEFAULT
    if value not in GROUP_NORM_CHOICES:
        raise ValueError(f"{GROUP_NORM_ENV}={value!r}: set it to one of {', '.join(GROUP_NORM_CHOICES)}, or unset it")
    return value == "split"
