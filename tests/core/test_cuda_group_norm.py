"""The Triton group-norm statistics on a GPU (viewneti_backend/group_norm_triton.py): the kernel against
its torch reference at SD 2's shapes, the same bytes call after call, and TritonStatsGroupNorm compiled
with CUDA graphs against group norm's own kernel. Needs a CUDA GPU with triton; CI has none, so these
are skipped there with that reason (the CPU tests cover the maths with the reference)."""

from unittest import mock

import pytest
import torch
from torch import nn

from viewneti_backend import group_norm_triton
from viewneti_backend.group_norm import use_group_norm
from viewneti_backend.group_norm_triton import channel_partial_sums, channel_partial_sums_reference, strip_rows

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the Triton kernel runs only there"
)

SHAPES = [(2, 320, 72, 96), (2, 960, 72, 96), (2, 1280, 9, 12), (1, 128, 576, 768), (16, 640, 36, 48)]


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_its_reference_and_repeats_bitwise(shape):
    assert group_norm_triton.triton_available()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=gen) * 2 + 5
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    rows = strip_rows(shape[0], shape[2] * shape[3], shape[1])
    partials, shift = channel_partial_sums(x)
    ref_partials, ref_shift = channel_partial_sums_reference(x, rows)
    torch.testing.assert_close(shift, ref_shift, rtol=0, atol=1e-6)
    scale = ref_partials.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    assert ((partials - ref_partials).abs() / scale).max() < 1e-5
    again, _ = channel_partial_sums(x)
    assert torch.equal(again, partials)  # no atomics: the same order of additions every call


def test_compiled_module_matches_group_norm_under_cuda_graphs():
    torch._dynamo.reset()
    norm = nn.GroupNorm(32, 320).to("cuda", torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    block = nn.Sequential(norm, nn.SiLU())
    x = torch.randn(2, 320, 72, 96, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    expected = nn.functional.silu(
        nn.functional.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
    )
    use_group_norm(block, "triton")
    compiled = torch.compile(block, mode="reduce-overhead", dynamic=False)
    with (
        torch.no_grad(),
        mock.patch.object(
            group_norm_triton, "channel_partial_sums", wraps=group_norm_triton.channel_partial_sums
        ) as kernel,
    ):
        outs = [compiled(x).clone() for _ in range(3)]  # record, then replay the CUDA graph
    assert kernel.call_count >= 1  # traced through the Triton statistics
    assert outs[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(outs[1], outs[2])
    assert (outs[2].float() - expected).abs().max() < 0.05  # bf16 output of values up to ~4
