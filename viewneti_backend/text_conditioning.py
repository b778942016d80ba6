"""Text conditioning: placeholder-token injection and the textual bypass on a frozen CLIP text encoder.

For each prompt the mapper's word embedding replaces the placeholder token's input embedding
(before position embeddings); after the last transformer block the bypass is added at the
placeholder position as ``h + alpha * |h| * b / |b|``. The final LayerNorm is applied to both
sequences: the plain one feeds cross-attention *keys*, the bypassed one the *values*.

Every (timestep, layer) pair has its own mapper output and therefore its own encoding; callers
pass all of them at once so the text encoder runs as one batched call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .transfer import to_device

VIEW_TOKEN = "<view>"
OBJECT_TOKEN = "<object>"
VIEW_OBJECT_PROMPT = "{view}. A photo of a {object}"
OBJECT_PROMPT = "A photo of a {object}"

# Prompts for mode 0 (object only, plain textual inversion); written for this project.
OBJECT_TEMPLATES = [
    "a photo of a {object}",
    "a rendering of a {object}",
    "a photo of the {object}",
    "a close-up photo of a {object}",
    "a bright photo of the {object}",
    "a good photo of a {object}",
    "a photo of one {object}",
    "a cropped photo of the {object}",
]


@dataclass
class Injection:
    """Mapper output for one placeholder token, one row per prompt in the batch."""

    word: torch.Tensor  # [N, D], already rescaled to the reference norm
    bypass: torch.Tensor | None  # [N, D] or None for no bypass
    alpha: float


def _text_transformer(text_encoder: nn.Module) -> Any:  # CLIPTextTransformer or CLIPTextModel: duck-typed
    # transformers 5 exposes embeddings/encoder/final_layer_norm on CLIPTextModel itself; 4.x nests them.
    return getattr(text_encoder, "text_model", text_encoder)


class TextConditioner:
    """Owns the tokenizer + frozen text encoder and turns (prompt, injections) into key/value encodings."""

    def __init__(
        self, tokenizer, text_encoder: nn.Module, view_token: str = VIEW_TOKEN, object_token: str = OBJECT_TOKEN
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.view_token, self.object_token = view_token, object_token
        missing = [t for t in (view_token, object_token) if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing)
        self.view_token_id = tokenizer.convert_tokens_to_ids(view_token)
        self.object_token_id = tokenizer.convert_tokens_to_ids(object_token)
        tm = _text_transformer(text_encoder)
        self._table: nn.Embedding = tm.embeddings.token_embedding
        self.max_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
        if self.max_length > tm.embeddings.position_embedding.weight.shape[0]:
            self.max_length = tm.embeddings.position_embedding.weight.shape[0]
        self._cache: dict[str, torch.Tensor] = {}
        self._legacy_causal_mask: bool | None = None
        self._training_encoder: Callable[..., Any] | None = None  # see compile_for_training

    def compile_for_training(self, mode: str = "reduce-overhead") -> None:
        """Use a ``torch.compile``'d copy of the CLIP blocks whenever gradients are on (inversion).

        A training step always encodes the same number of prompts (images x UNet layers), so one
        graph serves every step; renders encode a different number per request and keep the eager
        blocks (compiling them would recompile per batch size). Same maths either way.
        """
        tm = _text_transformer(self.text_encoder)
        self._training_encoder = torch.compile(tm.encoder, mode=mode, fullgraph=False, dynamic=False)

    @property
    def embedding_dim(self) -> int:
        return int(self._table.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self._table.weight.device

    def reference_norm(self, word: str) -> float:
        """|E[word]| for a word that the tokenizer keeps as one token ("view", "object")."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"reference word '{word}' is not a single token in this tokenizer ({ids}); pick another")
        return float(self._table.weight[ids[0]].float().norm())

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids [N, S] on the encoder's device; placeholders are counted here, on the CPU."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )["input_ids"]
        for token_id in (self.view_token_id, self.object_token_id):
            if bool(((ids == token_id).sum(dim=1) > 1).any()):
                raise InputError(
                    f"a prompt contains the placeholder {self.tokenizer.convert_ids_to_tokens(token_id)} more than once"
                )
        return to_device(ids, self.device)

    def token_ids(self, prompt: str) -> torch.Tensor:
        """Cached token ids of one prompt, shape [1, S]."""
        if prompt not in self._cache:
            self._cache[prompt] = self.tokenize([prompt])
        return self._cache[prompt]

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        vocab = self._table.weight.shape[0]
        # Placeholder ids lie past the frozen table (it is never resized): look up row 0, then overwrite.
        return self._table(input_ids.clamp(max=vocab - 1))

    def _transformer(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP blocks on given input embeddings; returns hidden states *before* the final LayerNorm."""
        tm = _text_transformer(self.text_encoder)
        hidden = tm.embeddings(inputs_embeds=inputs_embeds)
        if self._legacy_causal_mask is None:
            self._legacy_causal_mask = "causal_attention_mask" in inspect.signature(tm.encoder.forward).parameters
        encoder = (
            self._training_encoder if self._training_encoder is not None and torch.is_grad_enabled() else tm.encoder
        )
        if not self._legacy_causal_mask and self.sdpa_causal:
            # SDPA's own causal masking, as transformers 5.x's CLIPTextModel does: its kernels skip the masked
            # half instead of reading a mask (the text phase's attention 2.6x faster on an H100, RESULTS.md §1).
            return encoder(inputs_embeds=hidden, attention_mask=None, is_causal=True).last_hidden_state
        # An explicit additive causal mask works across transformers versions and attention implementations
        # (4.x takes it as causal_attention_mask, 5.x as a prepared 4D attention_mask).
        s = hidden.shape[1]
        causal = torch.full((s, s), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype).triu(1)[
            None, None
        ]
        if self._legacy_causal_mask:
            return encoder(inputs_embeds=hidden, causal_attention_mask=causal).last_hidden_state
        return encoder(inputs_embeds=hidden, attention_mask=causal).last_hidden_state

    @property
    def sdpa_causal(self) -> bool:
        """Whether the encoder's attention takes ``is_causal`` (SDPA): other implementations (``eager``)
        ignore it and get the explicit mask."""
        config = getattr(self.text_encoder, "config", None)
        return getattr(config, "_attn_implementation", None) == "sdpa"

    def encode(
        self, input_ids: torch.Tensor, injections: dict[int, Injection] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode N prompts; returns (keys_states, values_states), each [N, S, D] after the final LayerNorm."""
        tm = _text_transformer(self.text_encoder)
        x = self._embed(input_ids)
        injections = injections or {}
        for token_id, inj in injections.items():
            mask = input_ids == token_id
            # Checked on CPU ids only: reading a device tensor here would stall the GPU on every call.
            # Ids on the device come from tokenize(), which already allows each placeholder at most once.
            if input_ids.device.type == "cpu" and not torch.all(mask.sum(dim=1) == 1):
                raise InputError(
                    f"each prompt must contain the placeholder token {self.tokenizer.convert_ids_to_tokens(token_id)} exactly once"
                )
            x = torch.where(mask[..., None], inj.word.to(x.dtype)[:, None, :], x)
        h = self._transformer(x)
        h_bypass = h
        for token_id, inj in injections.items():
            if inj.bypass is None or inj.alpha == 0:
                continue
            mask = (input_ids == token_id)[..., None]
            b = inj.bypass.float()
            direction = (b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12))[:, None, :]
            added = inj.alpha * h.float().norm(dim=-1, keepdim=True) * direction
            h_bypass = h_bypass + torch.where(mask, added, torch.zeros_like(added)).to(h.dtype)
        ln = tm.final_layer_norm
        keys = ln(h)
        values = keys if h_bypass is h else ln(h_bypass)
        return keys, values

    def encode_plain(self, prompts: list[str]) -> torch.Tensor:
        """Ordinary CLIP encoding (what a stock pipeline feeds the UNet), [N, S, D]."""
        keys, _ = self.encode(self.tokenize(prompts))
        return keys
