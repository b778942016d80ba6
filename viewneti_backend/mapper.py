"""NeTI-style mappers: (timestep, cross-attention layer[, camera]) -> (word embedding, textual bypass).

One class serves both the view-mapper (with camera features) and the object-mapper (without), with
the architecture of ViewNeTI's final configuration: fixed seeded random Fourier features (64-d),
MLP 64-64-(2*D) with LayerNorm + LeakyReLU. The config fully describes a saved mapper
(``save_pretrained`` / ``from_pretrained``, safetensors + JSON, never pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic_files import replace_directory
from .errors import IncompatibleModelError, InputError

CONFIG_NAME = "mapper_config.json"
WEIGHTS_NAME = "mapper.safetensors"


@dataclass
class MapperConfig:
    """Everything needed to rebuild a mapper bit-for-bit (the Fourier matrix is regenerated from its seed)."""

    kind: str  # "view" or "object"
    token: str  # placeholder token in the prompt, e.g. "<view>" or "<object>"
    embedding_dim: int  # D: the text encoder's width (1024 for SD 2)
    num_layers: int = 16  # cross-attention layers of the UNet (16 for SD 2)
    num_train_timesteps: int = 1000
    camera_dim: int = 0  # 0 for object-mappers
    camera_parameterization: dict[str, Any] | None = None  # name + normalisation statistics
    encoding_dim: int = 64
    hidden_dim: int = 64
    sigma_t: float = 0.03
    sigma_l: float = 2.0
    sigma_camera: float = 0.5
    fourier_seed: int = 0
    alpha: float = 5.0  # bypass strength: h + alpha * |h| * b / |b|
    norm_target: float = 1.0  # |E[super_word]|: the word embedding is rescaled to this norm
    super_word: str = "object"
    base_model: str = ""
    base_model_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return 2 + self.camera_dim

    def sigmas(self) -> list[float]:
        return [self.sigma_t, self.sigma_l] + [self.sigma_camera] * self.camera_dim

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapperConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown mapper config fields {sorted(unknown)}: was it written by a newer version?")
        return cls(**data)


class FourierFeatures(nn.Module):
    """gamma(x) = [sin(Bx), cos(Bx)], B ~ N(0, sigma_j^2) per input column, fixed and seeded.

    B is drawn exactly like the reference (``manual_seed(seed); randn(n, d)`` on the CPU) but from a
    private generator, so building a mapper does not reseed the global RNG. It is a non-persistent
    buffer: not stored, regenerated from the seed.
    """

    B: torch.Tensor  # the buffer registered in __init__

    def __init__(self, sigmas: list[float], out_dim: int = 64, seed: int = 0):
        super().__init__()
        if out_dim % 2:
            raise ValueError("Fourier encoding dimension must be even")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        b = torch.randn(out_dim // 2, len(sigmas), generator=gen)
        b = b * torch.tensor(sigmas, dtype=torch.float32)[None, :]
        self.register_buffer("B", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x.to(self.B.dtype) @ self.B.T
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class NeTIMapper(nn.Module):
    """Maps (t, l[, camera features]) to a word embedding (rescaled) and a bypass vector."""

    def __init__(self, config: MapperConfig):
        super().__init__()
        self.config = config
        self.encoding = FourierFeatures(config.sigmas(), config.encoding_dim, config.fourier_seed)
        h = config.hidden_dim
        self.net = nn.Sequential(
            nn.Linear(config.encoding_dim, h),
            nn.LayerNorm(h),
            nn.LeakyReLU(0.01),
            nn.Linear(h, h),
            nn.LayerNorm(h),
            nn.LeakyReLU(0.01),
            nn.Linear(h, 2 * config.embedding_dim),
        )

    def normalized_inputs(
        self, timesteps: torch.Tensor, layers: torch.Tensor, camera: torch.Tensor | None
    ) -> torch.Tensor:
        """[t/T*2-1, l/L*2-1, camera...] as in the reference (camera features are already in [-1, 1])."""
        c = self.config
        t_n = timesteps.float() / c.num_train_timesteps * 2.0 - 1.0
        l_n = layers.float() / c.num_layers * 2.0 - 1.0
        parts = [t_n[:, None], l_n[:, None]]
        if c.camera_dim:
            if camera is None:
                raise InputError("this is a view-mapper: it needs camera features")
            if camera.shape[-1] != c.camera_dim:
                raise InputError(f"view-mapper expects {c.camera_dim} camera features, got {camera.shape[-1]}")
            parts.append(camera.float())
        return torch.cat(parts, dim=-1)

    def forward(
        self, timesteps: torch.Tensor, layers: torch.Tensor, camera: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalized_inputs(
            timesteps.to(self.B_device), layers.to(self.B_device), None if camera is None else camera.to(self.B_device)
        )
        out = self.net(self.encoding(x))
        word, bypass = out.split(self.config.embedding_dim, dim=-1)
        word = nn.functional.normalize(word, dim=-1) * self.config.norm_target
        return word, bypass

    @property
    def B_device(self) -> torch.device:
        return self.encoding.B.device

    # -- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``mapper_config.json`` + ``mapper.safetensors`` atomically (temp folder + rename)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            replace_directory(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, expect_fingerprint: str | None = None, device: str | torch.device = "cpu"
    ) -> NeTIMapper:
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise InputError(f"{directory} is not a saved mapper: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it")
        config = MapperConfig.from_dict(json.loads(cfg_path.read_text()))
        if expect_fingerprint and config.base_model_fingerprint and config.base_model_fingerprint != expect_fingerprint:
            raise IncompatibleModelError(
                f"{directory} was trained against base model '{config.base_model}' "
                f"(fingerprint {config.base_model_fingerprint[:12]}), but the loaded model has fingerprint "
                f"{expect_fingerprint[:12]}: load the model it was trained with, or re-train it for this one"
            )
        mapper = cls(config)
        mapper.load_state_dict(load_file(str(w_path)))
        return mapper.to(device)
