"""Per-layer cross-attention: each of the UNet's cross-attention layers gets its own text encoding.

The per-layer encodings travel as one *packed* tensor through the UNet's ordinary
``encoder_hidden_states`` argument, shape ``[B, 2 * L * S, D]``: first the L key encodings
(plain), then the L value encodings (with bypass), each S tokens long. The processor installed on
layer ``l`` slices its own keys and values out of it. No mutable counter, no side channel: the
UNet stays a pure function of its inputs (compile- and gradient-checkpointing-friendly).

A plain ``[B, S, D]`` encoding is also accepted and used for keys and values of every layer, so a
patched UNet still runs stock prompts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SDPA_ENV = "VIEWNETI_SDPA"  # "default": keep torch's SDPA backend order (prefer_cudnn_attention)


class PerLayerCrossAttnProcessor:
    """SDPA cross-attention whose keys/values come from this layer's slice of a packed encoding."""

    def __init__(self, layer_index: int, num_layers: int, seq_len: int):
        self.layer_index, self.num_layers, self.seq_len = layer_index, num_layers, seq_len

    def split(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, n, l = self.seq_len, encoder_hidden_states.shape[1], self.layer_index
        if n == 2 * self.num_layers * s:
            keys = encoder_hidden_states[:, l * s : (l + 1) * s]
            values = encoder_hidden_states[:, (self.num_layers + l) * s : (self.num_layers + l + 1) * s]
            return keys, values
        return encoder_hidden_states, encoder_hidden_states

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if encoder_hidden_states is None:
            raise RuntimeError("PerLayerCrossAttnProcessor is for cross-attention layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        keys_states, values_states = self.split(encoder_hidden_states)
        if attn.norm_cross:
            keys_states = attn.norm_encoder_hidden_states(keys_states)
            values_states = attn.norm_encoder_hidden_states(values_states)
        query = attn.to_q(hidden_states)
        key = attn.to_k(keys_states)
        value = attn.to_v(values_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch).view(
                batch, attn.heads, -1, key.shape[2]
            )
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _section_rank(name: str) -> tuple:
    """Sort key that follows a UNet2DConditionModel forward: down blocks, mid block, up blocks."""
    parts = name.split(".")
    section = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}.get(parts[0], 3)
    numbers = tuple(int(p) for p in parts if p.isdigit())
    return (section,) + numbers


def cross_attention_layer_names(unet: nn.Module) -> list[str]:
    """Names of the cross-attention modules (``attn2``) in the order the forward pass calls them."""
    names = [n for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "set_processor")]
    return sorted(names, key=_section_rank)


def install_per_layer_processors(unet: nn.Module, seq_len: int) -> int:
    """Install a :class:`PerLayerCrossAttnProcessor` on every cross-attention layer; returns L."""
    names = cross_attention_layer_names(unet)
    if not names:
        raise ValueError("this UNet has no cross-attention layers (attn2): not a Stable-Diffusion-architecture model")
    modules: dict[str, Any] = dict(unet.named_modules())  # Any: diffusers Attention layers, duck-typed (set_processor)
    for index, name in enumerate(names):
        modules[name].set_processor(PerLayerCrossAttnProcessor(index, len(names), seq_len))
    return len(names)


def pack_layer_encodings(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[B, L, S, D] keys and values -> packed [B, 2*L*S, D] for ``encoder_hidden_states``."""
    b, l, s, d = keys.shape
    return torch.cat([keys.reshape(b, l * s, d), values.reshape(b, l * s, d)], dim=1)


def pack_plain_encoding(encoding: torch.Tensor, num_layers: int) -> torch.Tensor:
    """A plain [B, S, D] encoding repeated for every layer, packed like :func:`pack_layer_encodings`."""
    b, s, d = encoding.shape
    rep = encoding[:, None].expand(b, num_layers, s, d)
    return pack_layer_encodings(rep, rep)


def fuse_self_attention_projections(unet: nn.Module) -> int:
    """Merge q/k/v of every self-attention layer (``attn1``) into one matmul; returns how many.

    Same maths (the three weight matrices stacked), one larger GEMM instead of three. The
    per-layer cross-attention layers keep their own processor. The fused weights stay frozen.
    """
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    count = 0
    for name, module in unet.named_modules():
        if (
            name.endswith("attn1")
            and hasattr(module, "fuse_projections")
            and not getattr(module, "fused_projections", False)
        ):
            layer: Any = module  # a diffusers Attention layer, duck-typed by the hasattr checks above
            layer.fuse_projections()
            layer.to_qkv.requires_grad_(False)
            layer.set_processor(FusedAttnProcessor2_0())
            count += 1
    return count


def prefer_cudnn_attention(device: torch.device) -> bool:
    """Put cuDNN's fused attention first in SDPA's backend order on Hopper-class GPUs (sm90+).

    Same attention, another kernel. On an H200 its kernels took 7.6 % less GPU time than
    FlashAttention-2 in the SD 2.1 UNet at a 768x576 view and 5.8 % less in an inversion's
    forward+backward (``benchmarks/gpu_kernel_options.py``), but each call costs more host time, so
    an *eager* inversion step got slower (209 vs 182 ms, ``gpu_bench.py``). Hence it is set by
    ``compile_base_model`` only, where CUDA graphs replay the kernels without that host work. SDPA
    still falls back to flash / memory-efficient / math attention for inputs cuDNN does not take.
    Process-wide (PyTorch keeps one order); returns whether it was set. ``VIEWNETI_SDPA=default``
    opts out.
    """
    import os

    if device.type != "cuda" or os.environ.get(SDPA_ENV, "") == "default":
        return False
    if torch.cuda.get_device_capability(device) < (9, 0) or not torch.backends.cudnn.is_available():
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    global _PROCESS_SDPA_ORDER
    if _PROCESS_SDPA_ORDER is None:
        # The public context manager, entered for the life of the process (the reference keeps it
        # from being collected, which would restore the previous order).
        _PROCESS_SDPA_ORDER = sdpa_kernel(
            [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
            set_priority=True,
        )
        _PROCESS_SDPA_ORDER.__enter__()
    return True


_PROCESS_SDPA_ORDER = None
