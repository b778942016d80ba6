"""Per-layer cross-attention: each of the UNet's cross-attention layers gets its own text encoding.

The per-layer encodings travel as one *packed* tensor through the UNet's ordinary
``encoder_hidden_states`` argument, shape ``[B, 2 * L * S, D]``: first the L key encodings
(plain), then the L value encodings (with bypass), each S tokens long. The processor installed on
layer ``l`` slices its own keys and values out of it. No mutable counter, no side channel: the
UNet stays a pure function of its inputs (compile- and gradient-checkpointing-friendly).

A plain ``[B, S, D]`` encoding is also accepted and used for keys and values of every layer, so a
patched UNet still runs stock prompts.

Renders may also pass the layers' keys and values already projected (``to_k`` / ``to_v`` applied):
:func:`project_layer_encodings` computes them for all of a render's steps in one GEMM per layer
before its denoising loop, instead of 2 x L small GEMMs inside every step (RESULTS.md section 1,
"Tiny GEMMs"). That format is ``[B, R, W]`` (``W``: the greatest common divisor of the layers'
widths, :class:`ProjectedLayout`): each layer's keys, then each layer's values, ``S x inner_dim``
values each, back to back, so that a layer's block is one contiguous view.
The same numbers, computed in other batches (rounding only). Renders use it by default (since session 29:
on an H100, 11.6 / 9.7 ms off a new / same-pose 768x576 view, 1.8 / 1.1 ms off a live frame);
``VIEWNETI_KEYS_AHEAD=0`` keeps the projections in the loop, e.g. to save the projected copy's memory
(~0.9 GB for an 8-frame 768x576 sequence batch on SD 2.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .switches import env_switch

SDPA_ENV = "VIEWNETI_SDPA"  # "default": keep torch's SDPA backend order (prefer_cudnn_attention)
KEYS_AHEAD_ENV = "VIEWNETI_KEYS_AHEAD"  # "0": renders project cross-attention keys/values in the loop


def keys_ahead_requested() -> bool:
    """Whether renders pass pre-projected keys/values (``VIEWNETI_KEYS_AHEAD``: unset or ``1`` yes; ``0`` no)."""
    return env_switch(KEYS_AHEAD_ENV)


class PerLayerCrossAttnProcessor:
    """SDPA cross-attention whose keys/values come from this layer's slice of a packed encoding."""

    def __init__(self, layer_index: int, num_layers: int, seq_len: int, layout: ProjectedLayout | None = None):
        self.layer_index, self.num_layers, self.seq_len = layer_index, num_layers, seq_len
        self.layout = layout  # where this layer's pre-projected keys/values sit (None: not supported)

    def projected(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This layer's already projected keys and values [B, S, inner], if the input is in that format."""
        layout = self.layout
        if layout is None or not layout.holds(encoder_hidden_states):
            return None
        flat = encoder_hidden_states.flatten(1)
        key_start, value_start, width = layout.blocks[self.layer_index]
        size = self.seq_len * width
        b = flat.shape[0]
        return (
            flat[:, key_start : key_start + size].view(b, self.seq_len, width),
            flat[:, value_start : value_start + size].view(b, self.seq_len, width),
        )

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
        query = attn.to_q(hidden_states)
        projected = self.projected(encoder_hidden_states)
        if projected is not None:
            key, value = projected
        else:
            keys_states, values_states = self.split(encoder_hidden_states)
            if attn.norm_cross:
                keys_states = attn.norm_encoder_hidden_states(keys_states)
                values_states = attn.norm_encoder_hidden_states(values_states)
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
    sections = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    # a wrapper's prefix (torch.compile's ``_orig_mod.``, say) comes before the section
    at = next((i for i, p in enumerate(parts) if p in sections), None)
    if at is None:
        return (3,) + tuple(int(p) for p in parts if p.isdigit())
    return (sections[parts[at]],) + tuple(int(p) for p in parts[at:] if p.isdigit())


def cross_attention_layer_names(unet: nn.Module) -> list[str]:
    """Names of the cross-attention modules (``attn2``) in the order the forward pass calls them."""
    names = [n for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "set_processor")]
    return sorted(names, key=_section_rank)


class ProjectedLayout:
    """Where each cross-attention layer's projected keys and values sit in the pre-projected format:
    ``blocks[l] = (key_start, value_start, inner_dim)`` in a sample's flattened values."""

    def __init__(self, inner_dims: list[int], seq_len: int):
        self.seq_len = seq_len
        per_sample = seq_len * sum(inner_dims)
        starts = [seq_len * sum(inner_dims[:l]) for l in range(len(inner_dims))]
        self.blocks = [(start, per_sample + start, width) for start, width in zip(starts, inner_dims)]
        self.values = 2 * per_sample  # per sample: all keys, then all values
        self.width = math.gcd(*inner_dims)  # 64 for SD 2 (320, 640, 1280)
        self.rows = self.values // self.width

    def holds(self, encoder_hidden_states: torch.Tensor) -> bool:
        return tuple(encoder_hidden_states.shape[1:]) == (self.rows, self.width)

    @staticmethod
    def of(layers: list[Any], seq_len: int, encoding_width: int) -> ProjectedLayout | None:
        """The layout of these cross-attention layers, or None where keys/values cannot be projected
        ahead: a cross-attention norm (it would run before the projection), keys and values of other
        widths, or a layout the packed encodings' shapes (``encoding_width`` wide) could be taken for."""
        dims = [int(layer.to_k.out_features) for layer in layers]
        if not dims or any(getattr(layer, "norm_cross", None) for layer in layers):
            return None
        if [int(layer.to_v.out_features) for layer in layers] != dims:
            return None
        layout = ProjectedLayout(dims, seq_len)
        if layout.width == encoding_width and layout.rows in (seq_len, 2 * len(dims) * seq_len):
            return None
        return layout


def install_per_layer_processors(unet: nn.Module, seq_len: int) -> int:
    """Install a :class:`PerLayerCrossAttnProcessor` on every cross-attention layer; returns L."""
    layers = cross_attention_layers(unet)
    if not layers:
        raise ValueError("this UNet has no cross-attention layers (attn2): not a Stable-Diffusion-architecture model")
    layout = ProjectedLayout.of(layers, seq_len, int(layers[0].to_k.in_features))
    for index, layer in enumerate(layers):
        layer.set_processor(PerLayerCrossAttnProcessor(index, len(layers), seq_len, layout))
    return len(layers)


def cross_attention_layers(unet: nn.Module) -> list[Any]:
    """The cross-attention modules in the order the forward pass calls them (a compiled UNet's too)."""
    modules: dict[str, Any] = dict(unet.named_modules())  # Any: diffusers Attention layers, duck-typed
    return [modules[name] for name in cross_attention_layer_names(unet)]


def projected_layout(layers: list[Any]) -> ProjectedLayout | None:
    """The pre-projected layout these layers' processors take (None: they take none, or none installed)."""
    processor = layers[0].processor if layers else None
    return processor.layout if isinstance(processor, PerLayerCrossAttnProcessor) else None


def project_layer_encodings(layers: list[Any], packed: torch.Tensor) -> torch.Tensor:
    """Packed per-layer encodings [N, 2*L*S, D] -> the layers' projected keys/values [N, R, W]
    (:class:`ProjectedLayout`).

    One ``to_k`` and one ``to_v`` call per layer (``layers``: :func:`cross_attention_layers`) over all N
    rows (a render's steps x views), with the layers' own linear layers, uncompiled."""
    layout = projected_layout(layers)
    if layout is None:
        raise ValueError("this UNet's cross-attention layers take no pre-projected keys/values")
    n, s, num_layers = packed.shape[0], layout.seq_len, len(layers)
    if packed.shape[1] != 2 * num_layers * s:
        raise ValueError(f"expected packed encodings of {2 * num_layers * s} rows, got {packed.shape[1]}")
    keys, values = [], []
    for index, layer in enumerate(layers):
        keys.append(layer.to_k(packed[:, index * s : (index + 1) * s]).flatten(1))
        values.append(layer.to_v(packed[:, (num_layers + index) * s : (num_layers + index + 1) * s]).flatten(1))
    return torch.cat(keys + values, dim=1).view(n, layout.rows, layout.width)


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
