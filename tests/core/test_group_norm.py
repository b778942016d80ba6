"""SplitStatsGroupNorm (viewneti_backend/group_norm.py) computes nn.GroupNorm's function: hand-worked
values, random channels-last inputs in float32 and bfloat16, inputs whose mean dwarfs their spread,
the compiled form, and the in-place switch of a model's group norms."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from viewneti_backend import group_norm
from viewneti_backend.group_norm import SplitStatsGroupNorm, split_stats_group_norm, use_split_stats_group_norm


def channels_last(shape, scale=1.0, offset=0.0, dtype=torch.float32, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale + offset
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def test_hand_worked_values():
    # one image, 4 channels in 2 groups, 1x2 pixels. Group 0 holds channels 0-1: values 1, 3, 5, 7
    # (mean 4, variance 5); group 1 holds channels 2-3: 2, 2, 2, 6 (mean 3, variance 3).
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]], [[2.0, 2.0]], [[2.0, 6.0]]]]).contiguous(
        memory_format=torch.channels_last
    )
    weight = torch.tensor([1.0, 2.0, 1.0, 1.0])
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    out = split_stats_group_norm(x, 2, weight, bias, eps=0.0)
    s5, s3 = 5**0.5, 3**0.5
    expected = torch.tensor(
        [[[[-3 / s5, -1 / s5]], [[2 * 1 / s5, 2 * 3 / s5]], [[-1 / s3, -1 / s3]], [[10 - 1 / s3, 10 + 3 / s3]]]]
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,groups", [((2, 64, 9, 12), 32), ((1, 32, 24, 32), 8), ((3, 30, 5, 7), 3)])
def test_matches_group_norm_in_float32_and_keeps_channels_last(shape, groups):
    x = channels_last(shape)
    norm = nn.GroupNorm(groups, shape[1])
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    out = split_stats_group_norm(x, groups, norm.weight, norm.bias, norm.eps)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=1e-5)


def test_matches_group_norm_in_bfloat16_to_its_rounding():
    x = channels_last((2, 64, 9, 12), dtype=torch.bfloat16)
    norm = nn.GroupNorm(32, 64).to(torch.bfloat16)
    reference = nn.functional.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
    out = split_stats_group_norm(x, 32, norm.weight, norm.bias, norm.eps)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits: outputs of size ~3 round by up to 2**-7 * 2
    assert (out.float() - reference).abs().max() <= 2**-6


def test_a_mean_far_above_the_spread_keeps_float32_accuracy():
    # the variance comes from sums of squares: unshifted, at mean 100 and spread 1 they lose ~4 of
    # float32's 7 digits (outputs off by 5e-3 here); shifted by the first pixel's mean they do not
    x = channels_last((2, 64, 9, 12), scale=1.0, offset=100.0)
    out = split_stats_group_norm(x, 32, None, None, 1e-5)
    reference = nn.functional.group_norm(x.double(), 32, None, None, 1e-5).float()
    assert (out - reference).abs().max() < 1e-4


def test_other_layouts_and_ranks_take_group_norms_own_path():
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_()
    split = SplitStatsGroupNorm(4, 8)
    split.load_state_dict(norm.state_dict())
    for x in (torch.randn(2, 8, 5, 6), torch.randn(2, 8, 7), torch.randn(2, 8, 3, 4, 5)):
        assert torch.equal(split(x), norm(x))
    x = channels_last((2, 8, 5, 6))
    torch.testing.assert_close(split(x), norm(x), rtol=1e-5, atol=1e-5)


def test_switching_a_model_keeps_its_weights_names_and_outputs():
    convs = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
    for conv in convs:  # channels-last weights, so that the convolutions keep that layout
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    model = nn.Sequential(convs[0], nn.GroupNorm(4, 16), nn.SiLU(), convs[1], nn.GroupNorm(2, 8))
    x = channels_last((2, 3, 10, 12))
    before, keys = model(x), list(model.state_dict())
    assert use_split_stats_group_norm(model) == 2
    assert use_split_stats_group_norm(model) == 0  # already switched
    assert list(model.state_dict()) == keys
    assert isinstance(model[1], SplitStatsGroupNorm) and isinstance(model[4], SplitStatsGroupNorm)
    with mock.patch.object(group_norm, "split_stats_group_norm", wraps=split_stats_group_norm) as split:
        after = model(x)
    assert split.call_count == 2  # both norms saw channels-last inputs and took the split path
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_compiled_form_matches_eager():
    norm = SplitStatsGroupNorm(8, 32)
    x = channels_last((2, 32, 6, 8))
    compiled = torch.compile(lambda t: nn.functional.silu(norm(t)), dynamic=False)
    torch.testing.assert_close(compiled(x), nn.functional.silu(norm(x)), rtol=1e-5, atol=1e-5)


def test_channels_that_do_not_split_into_the_groups_are_refused():
    with pytest.raises(ValueError, match="do not split"):
        split_stats_group_norm(channels_last((1, 6, 2, 2)), 4, None, None, 1e-5)
