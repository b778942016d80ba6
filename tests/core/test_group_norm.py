"""SplitStatsGroupNorm (viewneti_backend/group_norm.py) computes nn.GroupNorm's function: hand-worked
values, random channels-last inputs in float32 and bfloat16, inputs whose mean dwarfs their spread, and
gradients; the split form runs only where inductor compiles it; the in-place switch of a model's group
norms, and compile_base_model's switch by VIEWNETI_GROUP_NORM."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from viewneti_backend import group_norm
from viewneti_backend.group_norm import (
    GROUP_NORM_ENV,
    SplitStatsGroupNorm,
    split_group_norm_requested,
    split_stats_group_norm,
    use_native_group_norm,
    use_split_stats_group_norm,
)


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


def test_eager_calls_and_other_layouts_take_group_norms_own_kernel():
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_()
    split = SplitStatsGroupNorm(4, 8)
    split.load_state_dict(norm.state_dict())
    inputs = (channels_last((2, 8, 5, 6)), torch.randn(2, 8, 5, 6), torch.randn(2, 8, 7), torch.randn(2, 8, 3, 4, 5))
    with mock.patch.object(group_norm, "split_stats_group_norm", wraps=split_stats_group_norm) as split_form:
        for x in inputs:
            assert torch.equal(split(x), norm(x))
    assert split_form.call_count == 0
    with mock.patch("torch.compiler.is_compiling", return_value=True):  # as inductor traces it
        with mock.patch.object(group_norm, "split_stats_group_norm", wraps=split_stats_group_norm) as split_form:
            for x in inputs:
                torch.testing.assert_close(split(x), norm(x), rtol=1e-5, atol=1e-5)
    assert split_form.call_count == 1  # the channels-last 4-D input only


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
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        with mock.patch.object(group_norm, "split_stats_group_norm", wraps=split_stats_group_norm) as split:
            after = model(x)
    assert split.call_count == 2  # both norms saw channels-last inputs and took the split path
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert use_native_group_norm(model) == 2 and use_native_group_norm(model) == 0  # and back
    assert [type(m) for m in model.modules() if isinstance(m, nn.GroupNorm)] == [nn.GroupNorm, nn.GroupNorm]
    assert list(model.state_dict()) == keys


def test_compiled_it_is_the_split_form_with_group_norms_values_and_gradients():
    norm = SplitStatsGroupNorm(8, 32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    def run(fn):
        x = channels_last((2, 32, 6, 8)).requires_grad_(True)
        out = nn.functional.silu(fn(x))
        out.square().sum().backward()
        assert x.grad is not None
        return out.detach(), x.grad

    compiled_out, compiled_grad = run(torch.compile(norm, backend=recording_backend, dynamic=False))
    eager_out, eager_grad = run(norm)  # eager: F.group_norm
    targets = " ".join(str(node.target) for gm in graphs for node in gm.graph.nodes)
    assert "group_norm" not in targets and "sum" in targets, targets
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def test_the_environment_switch_and_a_wrong_value(monkeypatch):
    monkeypatch.delenv(GROUP_NORM_ENV, raising=False)
    assert split_group_norm_requested()  # the default: measured faster through the server (RESULTS section 6)
    monkeypatch.setenv(GROUP_NORM_ENV, "")
    assert split_group_norm_requested()
    monkeypatch.setenv(GROUP_NORM_ENV, "native")
    assert not split_group_norm_requested()
    monkeypatch.setenv(GROUP_NORM_ENV, "Split")
    assert split_group_norm_requested()
    monkeypatch.setenv(GROUP_NORM_ENV, "fast")
    with pytest.raises(ValueError, match="VIEWNETI_GROUP_NORM='fast': set it to one of native, split"):
        split_group_norm_requested()


def test_compile_base_model_switches_the_unet_and_vae_unless_told_native(tiny_model_dir, monkeypatch):
    from viewneti_backend.base_model import compile_base_model, load_base_model

    def group_norm_types(base):
        unet = base.eager.get("unet", base.unet)
        modules = [*unet.modules(), *base.eager.get("vae_decoder", base.vae.decoder).modules()]
        return {type(m).__name__ for m in modules if isinstance(m, nn.GroupNorm)}

    monkeypatch.setenv(GROUP_NORM_ENV, "native")
    base = compile_base_model(load_base_model(tiny_model_dir, device="cpu"), text_encoder_for_training=False)
    assert group_norm_types(base) == {"GroupNorm"}
    monkeypatch.delenv(GROUP_NORM_ENV, raising=False)
    base = compile_base_model(load_base_model(tiny_model_dir, device="cpu"), text_encoder_for_training=False)
    assert group_norm_types(base) == {"SplitStatsGroupNorm"}


def test_channels_that_do_not_split_into_the_groups_are_refused():
    with pytest.raises(ValueError, match="do not split"):
        split_stats_group_norm(channels_last((1, 6, 2, 2)), 4, None, None, 1e-5)
