"""Write mapper checkpoints in the ViewNeTI authors' format (torch.save of their dict layout), for tests.

Mirrors what their ``CheckpointHandler.save_mapper`` writes, on any mapper dims: ``{"cfg": <RunConfig
as pyrallis encodes it: nested plain dicts>, "mappers": {key: {"state_dict", "encoder",
"placeholder_object_token"}}}``, MLP keys ``net.{0,1,3,4}`` + ``output_layer.0``, and the encoder a
pickled module of class ``models.positional_encoding.FourierPositionalEncodingNDims`` whose ``w``
(B) is a plain tensor attribute (their ``nn.Parameter(w).cuda()`` is not a leaf parameter).
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from viewneti_backend.mapper import NeTIMapper


class FourierPositionalEncodingNDims(nn.Module):
    """Same attributes as the authors' encoder class (pickled by name into their files)."""

    def __init__(self, sigmas: list[float], dim: int = 64, seed: int = 0):
        super().__init__()
        self.sigmas, self.dim, self.normalize = list(sigmas), dim, False
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn((dim // 2, len(sigmas)), generator=gen)
        for i, s in enumerate(sigmas):
            w[:, i] *= s
        self.w = nn.Parameter(w).clone()  # a non-leaf tensor attribute, as theirs after .cuda()


FourierPositionalEncodingNDims.__module__ = "models.positional_encoding"


@contextmanager
def reference_modules():
    """Make ``models.positional_encoding`` importable while torch.save pickles the encoder by name."""
    pkg, mod = types.ModuleType("models"), types.ModuleType("models.positional_encoding")
    mod.FourierPositionalEncodingNDims = FourierPositionalEncodingNDims  # type: ignore[attr-defined]
    pkg.positional_encoding = mod  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("models", "models.positional_encoding")}
    sys.modules["models"], sys.modules["models.positional_encoding"] = pkg, mod
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def reference_cfg(
    *, embedding_dim: int, hidden: int = 64, target_norm_view: float = 1.0, target_norm_object: float = 1.0
) -> dict[str, Any]:
    """The parts of a pyrallis-encoded RunConfig the converter reads (train_m3_88scenes.yaml values)."""
    return {
        "learnable_mode": 3,
        "debug": False,
        "seed": 0,
        "log": {"exp_name": "train", "exp_dir": "results", "save_steps": 5000},
        "data": {
            "train_data_dir": "data/dtu/Rectified",
            "placeholder_object_token": "<object>",
            "super_category_object_token": "object",
            "super_category_view_token": "view",
            "camera_representation": "dtu-12d",
            "dtu_subset": 0,
            "dtu_lighting": 3,
            "augmentation_key": 5,
        },
        "model": {
            "pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1",
            "word_embedding_dim": embedding_dim,
            "arch_mlp_hidden_dims": hidden,
            "use_nested_dropout": False,
            "nested_dropout_prob": 0.5,
            "normalize_object_mapper_output": True,
            "normalize_view_mapper_output": True,
            "target_norm_object": target_norm_object,
            "target_norm_view": target_norm_view,
            "use_positional_encoding_object": 1,
            "use_positional_encoding_view": 1,
            # as pyrallis encodes the PESigmas after ModelConfig.__post_init__ (exp key 2 -> 0.5)
            "pe_sigmas": {
                "sigma_t": 0.03,
                "sigma_l": 2.0,
                "sigma_theta": 2.0,
                "sigma_phi": 2.0,
                "sigma_r": 2.0,
                "sigma_dtu12": 0.5,
            },
            "pe_sigma_exp_key": 2,
            "pe_t_exp_key": 0,
            "pe_l_exp_key": 0,
            "num_pe_time_anchors": 10,
            "output_bypass_object": True,
            "output_bypass_view": True,
            "arch_view_net": 15,
            "arch_view_mix_streams": 0,
            "arch_view_disable_tl": False,
            "original_ti": False,
            "bypass_unconstrained_object": False,
            "bypass_unconstrained_view": False,
            "output_bypass_alpha_view": 5.0,
            "output_bypass_alpha_object": 5.0,
        },
        "eval": {"num_denoising_steps": 30, "validation_seeds": [0, 1]},
        "optim": {"max_train_steps": 50000, "learning_rate": 1e-3, "train_batch_size": 3},
    }


def their_state_dict(mapper: NeTIMapper) -> dict[str, torch.Tensor]:
    """Our mapper's weights under their names (net.6 -> output_layer.0)."""
    out = {}
    for k, v in mapper.state_dict().items():
        out[k.replace("net.6.", "output_layer.0.")] = v.detach().clone()
    return out


def write_reference_file(
    path: Path, cfg: dict[str, Any], entries: dict[Any, tuple[dict[str, torch.Tensor], str, list[float]]]
) -> Path:
    """``entries``: {key: (their state_dict, placeholder token, encoder sigmas)}; key 'dummy_key' = view."""
    with reference_modules():
        mappers = {
            key: {"state_dict": sd, "encoder": FourierPositionalEncodingNDims(sigmas), "placeholder_object_token": tok}
            for key, (sd, tok, sigmas) in entries.items()
        }
        torch.save({"cfg": cfg, "mappers": mappers}, path)
    return path
