"""Loading the frozen backbone: any Stable-Diffusion-architecture diffusers model, hub id or local folder.

The embedded toy model and real SD 2 weights go through the same code path
(``from_pretrained`` on each component). The scheduler's ``prediction_type`` (epsilon or v) is
read here and used by training and sampling alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .attention import fuse_self_attention_projections, install_per_layer_processors, prefer_cudnn_attention
from .errors import InputError
from .group_norm import split_group_norm_requested, use_split_stats_group_norm
from .text_conditioning import TextConditioner
from .unet_graphs import GraphedUNet

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device '{device}': use cpu, cuda or cuda:N ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available: use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Frozen parts run in bf16 on CUDA (fp16 if bf16 is unsupported), fp32 on CPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}': use one of float32, float16, bfloat16")
    return DTYPES[dtype]


@dataclass
class Backbone:
    """The frozen parts of a Stable-Diffusion-architecture pipeline, ready for ViewNeTI conditioning."""

    name: str
    tokenizer: object
    # Any: diffusers/transformers models are reached through config attributes and return_dict unions that
    # their annotations do not express (CLIPTextModel, UNet2DConditionModel or its torch.compile wrapper, AutoencoderKL).
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    num_layers: int  # cross-attention layers, in call order
    text: TextConditioner
    fingerprint: str
    # The uncompiled modules ("unet", "vae_decoder") once compile_base_model has wrapped them: renders at a
    # shape that has no compiled graph yet run these instead of blocking on a compile (see engine.py). On a
    # GPU the UNet is a GraphedUNet, which replays its kernels from CUDA graphs (unet_graphs.py); an
    # uncompiled CUDA engine renders through one too (Engine.load).
    eager: dict[str, torch.nn.Module] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def noise_scheduler(self) -> DDPMScheduler:
        from diffusers import DDPMScheduler  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

        # diffusers types from_config/load_config as "X | (X, unused kwargs)"; the tuple comes only with
        # return_unused_kwargs=True, never passed here: the casts in this module state that.
        return cast("DDPMScheduler", DDPMScheduler.from_config(self.scheduler_config))

    def sampling_scheduler(
        self, name: str = "dpmsolver++"
    ) -> DPMSolverMultistepScheduler | DDIMScheduler | EulerDiscreteScheduler:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

        if name in ("dpmsolver++", "dpm++", "dpmsolver"):
            return cast(
                "DPMSolverMultistepScheduler",
                DPMSolverMultistepScheduler.from_config(self.scheduler_config, algorithm_type="dpmsolver++"),
            )
        if name == "ddim":
            return cast("DDIMScheduler", DDIMScheduler.from_config(self.scheduler_config))
        if name == "euler":
            return cast("EulerDiscreteScheduler", EulerDiscreteScheduler.from_config(self.scheduler_config))
        raise InputError(f"unknown sampler '{name}': use dpmsolver++, ddim or euler")


def _is_local(model: str) -> bool:
    return os.path.isdir(model)


def model_fingerprint(text_encoder: Any, unet: Any) -> str:  # Any: as Backbone's fields
    """A short hash that identifies a base model across dtypes/devices (object tokens remember it)."""
    table = text_encoder.get_input_embeddings().weight
    rows = table[: min(256, table.shape[0])].detach().to(torch.bfloat16).float().sum(dim=1).cpu().numpy()
    conv = unet.conv_in.weight.detach().to(torch.bfloat16).float().sum().item()
    payload = {
        "vocab": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "rows": np.round(rows, 1).tolist(),
        "conv_in": round(conv, 1),
        "unet": [int(c) for c in unet.config.block_out_channels],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_base_model(
    model: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> Backbone:
    """Load tokenizer, text encoder, UNet, VAE and scheduler config from a hub id or a local folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from transformers import CLIPTextModel, CLIPTokenizer

    model = str(model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    local = _is_local(model)
    if not local and (model.startswith((".", "/", "~")) or os.sep in model and model.count("/") > 1):
        raise InputError(
            f"model folder '{model}' does not exist: pass a diffusers folder or a hub id such as stabilityai/stable-diffusion-2-1"
        )
    if local:
        missing = [
            s for s in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (Path(model) / s).is_dir()
        ]
        if missing:
            raise InputError(
                f"'{model}' is not a Stable-Diffusion-architecture diffusers folder: missing subfolder(s) {', '.join(missing)}"
            )
    kw: dict[str, Any] = {"local_files_only": local_files_only}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dt, **kw)
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dt, **kw)
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dt, **kw)
        from diffusers import DDPMScheduler  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily

        scheduler_config = dict(cast(dict, DDPMScheduler.load_config(model, subfolder="scheduler", **kw)))
    except (OSError, ValueError) as exc:
        hint = " (offline: HF_HUB_OFFLINE is set, so only cached or local models load)" if local_files_only else ""
        raise InputError(f"cannot load a Stable-Diffusion-architecture model from '{model}'{hint}: {exc}") from None
    if len(tokenizer) < 300:
        raise InputError(f"the tokenizer of '{model}' has only {len(tokenizer)} entries: it did not load correctly")
    name = model if not local else Path(model).resolve().name
    return assemble_base_model(name, tokenizer, text_encoder, unet, vae, scheduler_config, dev, dt)


def assemble_base_model(
    name: str, tokenizer, text_encoder, unet, vae, scheduler_config: dict, device: torch.device, dtype: torch.dtype
) -> Backbone:
    """Freeze the components, move them, and patch the UNet's cross-attention for per-layer encodings."""
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device, dtype=dtype)
    if device.type == "cuda":  # NHWC convolutions: what cuDNN's tensor-core kernels take without transposes
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    seq_len = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))
    num_layers = install_per_layer_processors(unet, seq_len)
    text = TextConditioner(tokenizer, text_encoder)
    if unet.config.cross_attention_dim != text.embedding_dim:
        raise InputError(
            f"'{name}': UNet cross_attention_dim {unet.config.cross_attention_dim} != text width {text.embedding_dim}"
        )
    return Backbone(
        name=name,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config={k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")},
        device=device,
        dtype=dtype,
        num_layers=num_layers,
        text=text,
        fingerprint=model_fingerprint(text_encoder, unet),
    )


def prepare_thread_for_cuda_graph_trees() -> None:
    """Set up this thread's CUDA-graph-tree state, which compiled (``reduce-overhead``) modules need.

    Inductor keeps its CUDA graph trees in thread-local storage that it sets up in the thread that
    imports it (and copies into autograd's threads). torch before 2.13 (2.11 here) asserts when a
    compiled module first runs on any other thread: the server records its render graphs on the
    compiler thread and then runs an inversion's first training step on its worker thread, which
    failed with a bare ``AssertionError``. Newer torch sets the state up on first use by itself; this
    does the same ahead of time for older ones, and nothing where the thread has it already."""
    import threading
    from collections import defaultdict

    from torch._inductor import cudagraph_trees as trees

    if hasattr(trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    initialize = getattr(trees, "_initialize_tls", None)  # torch >= 2.13: what its get_obj does itself
    if initialize is not None:
        initialize(trees.local)
        return
    trees.local.tree_manager_containers = {}
    trees.local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)


def compile_base_model(
    base: Backbone, mode: str = "reduce-overhead", vae: bool = True, text_encoder_for_training: bool = True
) -> Backbone:
    """torch.compile the UNet and the VAE encoder/decoder (CUDA graphs with ``reduce-overhead``),
    after fusing each self-attention layer's q/k/v projections into one matmul and the resnets'
    time-embedding projections into one GEMM a step (``time_projections``).

    Same maths, far fewer kernel launches and fused element-wise work. Each new resolution / batch
    size compiles once (tens of seconds at SD 2 scale): warm up before the first user-facing render.
    For renders the text encoder stays eager: its batch (steps x layers x views) changes with every
    request; training steps, whose batch is fixed, get a compiled copy (``text_encoder_for_training``).
    Training through the compiled UNet (inversion) compiles a forward+backward graph on first use.
    Renders at a shape not compiled yet run the uncompiled UNet, replayed from CUDA graphs on a GPU
    (:class:`.unet_graphs.GraphedUNet`: no compile, same kernels).
    On Hopper-class GPUs SDPA is set to try cuDNN's attention first (see ``prefer_cudnn_attention``):
    its kernels are faster, and under CUDA graphs its higher per-call host cost does not count.
    """
    prefer_cudnn_attention(base.device)
    from .time_projections import fuse_time_embedding_projections  # imports diffusers

    fuse_self_attention_projections(base.unet)
    fuse_time_embedding_projections(base.unet)
    if split_group_norm_requested():  # the default; VIEWNETI_GROUP_NORM=native keeps inductor's (group_norm.py)
        use_split_stats_group_norm(base.unet)
        if vae:
            use_split_stats_group_norm(base.vae)
    import torch._dynamo

    # A server compiles several shapes (sizes x batch) over its life; each is one more cache entry.
    torch._dynamo.config.cache_size_limit = max(int(torch._dynamo.config.cache_size_limit), 64)
    base.eager["unet"] = GraphedUNet(base.unet) if base.device.type == "cuda" else base.unet
    base.unet = torch.compile(base.unet, mode=mode, fullgraph=False, dynamic=False)
    if vae:
        base.eager["vae_decoder"] = base.vae.decoder
        base.vae.decoder = torch.compile(base.vae.decoder, mode=mode, fullgraph=False, dynamic=False)
        base.vae.encoder = torch.compile(base.vae.encoder, mode=mode, fullgraph=False, dynamic=False)
    if text_encoder_for_training:
        base.text.compile_for_training(mode)
    return base
