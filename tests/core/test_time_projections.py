"""Every resnet's time-embedding projection in one GEMM (viewneti_backend/time_projections.py): the UNet's
output, gradients and state dict unchanged, once only, undone exactly, applied by compile_base_model, and
UNets whose time embedding feeds more than the resnets left alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from viewneti_backend.testing import tiny_unet_config
from viewneti_backend.time_projections import (
    FusedTimestepEmbedding,
    can_fuse_time_embedding_projections,
    fuse_time_embedding_projections,
    unfuse_time_embedding_projections,
)


def tiny_unet(**overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**tiny_unet_config(8, 24), **overrides}).eval()


def test_output_gradients_and_state_dict_stay():
    unet = tiny_unet()
    keys = list(unet.state_dict())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    ehs = torch.randn(2, 5, 24, requires_grad=True)
    before = unet(x, t, encoder_hidden_states=ehs).sample
    (grad_before,) = torch.autograd.grad(before.square().sum(), ehs)
    resnets = sum(1 for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None)
    assert fuse_time_embedding_projections(unet) == resnets == 8  # 1 + 1 down, 2 mid, 2 + 2 up
    assert isinstance(unet.time_embedding, FusedTimestepEmbedding)
    assert fuse_time_embedding_projections(unet) == 0  # already fused
    assert list(unet.state_dict()) == keys  # the stacked weights are not saved
    after = unet(x, t, encoder_hidden_states=ehs).sample
    (grad_after,) = torch.autograd.grad(after.square().sum(), ehs)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_after, grad_before, rtol=1e-5, atol=1e-6)


def test_the_time_embedding_returns_each_resnets_projection_side_by_side():
    unet: Any = tiny_unet()
    resnets: list[Any] = [m for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None]
    t_emb = unet.time_proj(torch.tensor([3.0]))
    emb = unet.time_embedding(t_emb)
    expected = [r.time_emb_proj(nn.functional.silu(emb)) for r in resnets]
    fuse_time_embedding_projections(unet)
    packed = unet.time_embedding(t_emb)
    assert packed.shape == (1, sum(r.time_emb_proj.out_features for r in resnets))
    for resnet, want in zip(resnets, expected):
        assert resnet.skip_time_act
        torch.testing.assert_close(resnet.time_emb_proj(packed), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{"class_embed_type": "timestep"}, {"time_embedding_act_fn": "silu"}, {"resnet_time_scale_shift": "scale_shift"}],
)
def test_unets_whose_time_embedding_feeds_more_are_left_alone(overrides):
    unet = tiny_unet(**overrides)
    assert not can_fuse_time_embedding_projections(unet)
    assert fuse_time_embedding_projections(unet) == 0
    assert not isinstance(unet.time_embedding, FusedTimestepEmbedding)


def test_unfusing_restores_the_modules_and_follows_new_weights():
    unet: Any = tiny_unet()
    x, t, ehs = torch.randn(1, 4, 8, 8), torch.tensor([7]), torch.randn(1, 5, 24)
    before = unet(x, t, encoder_hidden_states=ehs).sample
    assert unfuse_time_embedding_projections(unet) == 0  # nothing to undo
    fused = fuse_time_embedding_projections(unet)
    assert unfuse_time_embedding_projections(unet) == fused == 8
    assert type(unet.time_embedding) is TimestepEmbedding and not hasattr(unet.time_embedding, "fused_weight")
    resnets: list[Any] = [m for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None]
    assert all(type(r.time_emb_proj) is nn.Linear and not r.skip_time_act for r in resnets)
    torch.testing.assert_close(unet(x, t, encoder_hidden_states=ehs).sample, before, rtol=0, atol=0)
    with torch.no_grad():  # the resnets' own weights count again (the fused copy would not follow them)
        resnets[0].time_emb_proj.weight.mul_(3.0)
    assert not torch.allclose(unet(x, t, encoder_hidden_states=ehs).sample, before)
    assert fuse_time_embedding_projections(unet) == 8  # and it fuses again, from the new weights
    fused_weight: Any = getattr(unet.time_embedding, "fused_weight")  # noqa: B009  Any: a buffer added at run time
    assert torch.equal(fused_weight[: resnets[0].time_emb_proj.out_features], resnets[0].time_emb_proj.weight)


def test_compile_base_model_fuses_them(tiny_model_dir):
    from viewneti_backend.base_model import compile_base_model, load_base_model

    base = load_base_model(tiny_model_dir, device="cpu")
    assert type(base.unet.time_embedding) is TimestepEmbedding
    compile_base_model(base, text_encoder_for_training=False)
    assert isinstance(base.eager["unet"].time_embedding, FusedTimestepEmbedding)
