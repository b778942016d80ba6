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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import group_norm_triton

GROUP_NORM_ENV = "VIEWNETI_GROUP_NORM"
GROUP_NORM_CHOICES = ("native", "split", "triton")
# The smallest group norm (values in the tensor) that takes the Triton statistics; smaller ones are
# latency-bound and keep the split form.
TRITON_MIN_VALUES = 0
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
    variance = (centred.square().sum(dim=3).sum(dim=1) / count - offset.square()).clamp_min(0.0)
    return _normalize(x, values, shift + offset, variance, weight, bias, eps)


def partial_sums_group_norm(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    partial_sums: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """``F.group_norm`` for a channels-last 4-D ``x`` from per-strip, per-channel partial sums.

    ``partial_sums(x)`` returns ``(partials [N, S, 2, C], shift [N, C])`` as
    ``group_norm_triton.channel_partial_sums`` does (the Triton kernel on CUDA; its torch reference
    elsewhere). Here the strips are summed, each group's variance is its channels' mean variance plus
    the variance of their means (no difference of large sums), and the tensor is normalized, by ops
    inductor fuses with what follows."""
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"group norm: {c} channels do not split into {groups} groups")
    per_group = c // groups
    partials, shift = partial_sums(x)
    totals = partials.sum(dim=1) / (h * w)  # [b, 2, c]: each channel's mean of x - shift, and of its square
    channel_offset = totals[:, 0]
    channel_variance = (totals[:, 1] - channel_offset.square()).clamp_min(0.0)
    channel_mean = (shift + channel_offset).reshape(b, groups, per_group)
    mean = channel_mean.mean(dim=2)
    between = (channel_mean - mean[:, :, None]).square().mean(dim=2)
    variance = channel_variance.reshape(b, groups, per_group).mean(dim=2) + between
    values = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, per_group).float()
    return _normalize(x, values, mean, variance, weight, bias, eps)


def _normalize(
    x: torch.Tensor,
    values: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Normalize ``values`` [b, pixels, groups, per_group] (x's channels-last view, float32) by each
    group's mean and variance; apply the affine; back to x's dtype and layout."""
    b, c, h, w = x.shape
    rstd = torch.rsqrt(variance + eps)
    y = ((values - mean[:, None, :, None]) * rstd[:, None, :, None]).reshape(b, h, w, c)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).permute(0, 3, 1, 2)


def _channels_last_4d(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


class SplitStatsGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that, when compiled, normalizes channels-last 4-D inputs with
    :func:`split_stats_group_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  nn.GroupNorm's argument name
        if torch.compiler.is_compiling() and _channels_last_4d(input):
            return split_stats_group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class TritonStatsGroupNorm(SplitStatsGroupNorm):
    """:class:`SplitStatsGroupNorm` whose compiled CUDA renders take their statistics from the Triton
    kernel (``group_norm_triton``) for channels-last inputs of at least ``TRITON_MIN_VALUES`` values.

    Only without a gradient (the kernel has no backward: training graphs keep the split form), and
    only where ``triton`` imports (CUDA builds of torch ship it); elsewhere it is the split form."""

    kernel_device_type = "cuda"  # where the kernel runs (tests declare the CPU, with a torch stand-in)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  nn.GroupNorm's argument name
        if (
            torch.compiler.is_compiling()
            and _channels_last_4d(input)
            and input.device.type == self.kernel_device_type
            and not (torch.is_grad_enabled() and input.requires_grad)
            and input.numel() >= TRITON_MIN_VALUES
            and group_norm_triton.triton_available()
        ):
            return partial_sums_group_norm(
                input, self.num_groups, self.weight, self.bias, self.eps, group_norm_triton.channel_partial_sums
            )
        return super().forward(input)


GROUP_NORM_CLASSES: dict[str, type[nn.GroupNorm]] = {
    "native": nn.GroupNorm,
    "split": SplitStatsGroupNorm,
    "triton": TritonStatsGroupNorm,
}


def use_group_norm(model: nn.Module, choice: str) -> int:
    """Make every group norm of ``model`` the class of ``choice`` (a key of ``GROUP_NORM_CLASSES``) in
    place; returns how many changed. The modules keep their parameters, buffers and names (so
    checkpoints load as before)."""
    if choice not in GROUP_NORM_CLASSES:
        raise ValueError(f"group norm {choice!r}: choose one of {', '.join(GROUP_NORM_CLASSES)}")
    new = GROUP_NORM_CLASSES[choice]
    count = 0
    for module in model.modules():
        if type(module) in GROUP_NORM_CLASSES.values() and type(module) is not new:
            module.__class__ = new
            count += 1
    return count


def use_split_stats_group_norm(model: nn.Module) -> int:
    """Make every ``nn.GroupNorm`` of ``model`` a :class:`SplitStatsGroupNorm` in place; returns how many."""
    return use_group_norm(model, "split")


def use_native_group_norm(model: nn.Module) -> int:
    """Make ``model``'s group norms plain ``nn.GroupNorm`` again (inductor's own); returns how many."""
    return use_group_norm(model, "native")


def requested_group_norm() -> str:
    """The group norm compiled models get: ``VIEWNETI_GROUP_NORM`` (one of ``GROUP_NORM_CHOICES``), or
    ``GROUP_NORM_DEFAULT`` when unset."""
    import os

    value = os.environ.get(GROUP_NORM_ENV, "").strip().lower() or GROUP_NORM_DEFAULT
    if value not in GROUP_NORM_CHOICES:
        raise ValueError(f"{GROUP_NORM_ENV}={value!r}: set it to one of {', '.join(GROUP_NORM_CHOICES)}, or unset it")
    return value
