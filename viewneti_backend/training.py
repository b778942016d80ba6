"""Training the mappers (ViewNeTI modes 0, 2, 3, 4, 5) on a frozen backbone, through ``accelerate``.

| mode | trains | data |
|------|--------|------|
| 0 | object-mapper | image folder, object-only templates (textual inversion) |
| 2 | view- + object-mapper from scratch | one scene with cameras |
| 3 | one shared view-mapper + one object-mapper per scene | many scenes (pretraining) |
| 4 | pretrained view-mapper (fine-tuned) + new object-mapper | one scene |
| 5 | new object-mapper; pretrained view-mapper frozen | one scene, 1-3 views (single-image NVS) |

Loss: MSE between the UNet's prediction and its target (noise or velocity, from the scheduler's
``prediction_type``). Frozen parts run in bf16/fp16 on GPU, mappers stay fp32; nothing frozen gets
a gradient. Checkpoints are safetensors + JSON; ``resume`` continues from the saved step.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .attention import pack_layer_encodings
from .augment import AUGMENTATIONS, AugmentationPlan, apply_augmentation, plan_augmentation
from .base_model import Backbone, load_base_model
from .camera_features import (
    DEFAULT_PARAMETERIZATION,
    PARAMETERIZATIONS,
    CameraParameterization,
    make_parameterization,
    parameterization_from_config,
)
from .checkpoints import read_checkpoint, save_mappers, write_checkpoint
from .config_cli import option
from .data import DTU_TRAIN_SIZE, Scene
from .errors import Cancelled, InputError
from .images import images_to_tensor
from .mapper import MapperConfig, NeTIMapper
from .text_conditioning import OBJECT_TEMPLATES, VIEW_OBJECT_PROMPT
from .training_modes import MODES, TRAINING_MODES, TrainingMode
from .transfer import ScalarReadback, to_device

MIXED_PRECISIONS = ("no", "bf16", "fp16")  # accelerate's names for the frozen parts' dtype


def _mode_augmentations() -> str:
    """Each training mode's default augmentation, from the mode table (``--augmentation``'s help says them)."""
    modes: dict[int, list[str]] = {}
    for m in TRAINING_MODES.values():
        modes.setdefault(m.augmentation, []).append(str(m.number))
    return "; ".join(f"{key} in mode{'s' if len(ms) > 1 else ''} {', '.join(ms)}" for key, ms in modes.items())


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's (lr 1e-3 scaled by batch x accumulation -> 9e-3).

    The fields with ``option`` metadata are ``viewneti train``'s options (:mod:`.config_cli`)."""

    mode: int = field(default=5, metadata=option("the paper's training mode (see the description)", choices=MODES))
    steps: int = field(default=3000, metadata=option("optimizer steps (paper: 3000 for modes 2/4/5, 50000 for mode 3)"))
    batch_size: int = field(default=3, metadata=option("images per micro-batch (paper: 3)"))
    grad_accum: int = field(default=3, metadata=option("micro-batches per optimizer step (paper: 3)"))
    lr: float = field(
        default=1e-3,
        metadata=option("base learning rate, scaled by batch x accumulation x processes (paper: 1e-3 -> 9e-3)"),
    )
    scale_lr: bool = field(default=True, metadata=option("use --lr as is"))
    weight_decay: float = field(default=1e-2, metadata=option("AdamW weight decay of the mappers"))
    augmentation: int | None = field(
        default=None,
        metadata=option(
            "0 none (each image is then VAE-encoded once, not every step), or the paper's augmentation "
            f"{' or '.join(str(k) for k in sorted(AUGMENTATIONS) if k)}; default: the mode's ({_mode_augmentations()})",
            choices=sorted(AUGMENTATIONS),
        ),
    )
    width: int | None = field(
        default=None,
        metadata=option(f"training width (default: the model's native size; --dtu-root: {DTU_TRAIN_SIZE[0]})"),
    )
    height: int | None = field(
        default=None,
        metadata=option(f"training height (default: the model's native size; --dtu-root: {DTU_TRAIN_SIZE[1]})"),
    )
    camera_parameterization: str = field(
        default=DEFAULT_PARAMETERIZATION,
        metadata=option(
            "the view-mapper's camera features: the pose relative to the anchor (anchor-pose-13d), with the "
            "camera distance as a feature of its own (anchor-distance-14d: for cameras at several distances), "
            "or DTU's projection matrix (dtu-12d)",
            choices=PARAMETERIZATIONS,
        ),
    )
    save_every: int = field(default=0, metadata=option("checkpoint every N steps (0: only at the end)"))
    seed: int = field(default=0, metadata=option("random seed of the run"))
    mixed_precision: str | None = field(
        default=None,
        metadata=option(
            "dtype of the frozen parts (default: bf16 on CUDA when supported, else no)", choices=MIXED_PRECISIONS
        ),
    )
    log_every: int = 10
    # Run the grad_accum micro-batches of a step as one batch (same gradient: the mean of equal-sized
    # micro-batch means is the batch mean; each keeps its own scene, images, noise and timesteps).
    # Faster on a GPU; needs grad_accum x the activation memory. False = one micro-batch at a time.
    fuse_micro_batches: bool = True
    # 0 (the paper's maths): every step augments its images afresh and VAE-encodes them (at SD 2 scale
    # the encoder is ~24 % of a mode-5 step's FLOPs). N > 0, an option: encode N augmented copies of
    # each scene once, then draw each step's images from that pool (a fresh posterior sample each
    # time). Faster, but a finite sample of the augmentations: it changes the maths, so it is off by
    # default. Memory: N x 2 latents per scene, kept on the device. (With augmentation 0 every image
    # is encoded once anyway, which keeps the maths: then a pool is refused.)
    augmentation_pool: int = field(
        default=0,
        metadata=option(
            "faster, but changes the maths (0: off): VAE-encode N augmented copies of each scene once and "
            "draw every step's images from them, instead of augmenting and encoding afresh each step",
            metavar="N",
        ),
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES} (mode 1 is unused in ViewNeTI), got {self.mode}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise InputError("steps, batch_size and grad_accum must be positive")
        if self.augmentation_pool < 0:
            raise InputError(f"augmentation_pool must be 0 (off) or a number of images, got {self.augmentation_pool}")
        if self.augmentation_pool and self.augmentation == 0:
            raise InputError(
                "augmentation_pool needs augmentation: with augmentation 0 each image is encoded once anyway; "
                "drop --augmentation-pool or pick an augmentation"
            )

    @property
    def spec(self) -> TrainingMode:
        """This run's mode, from :data:`TRAINING_MODES` (checked in ``__post_init__``)."""
        return TRAINING_MODES[self.mode]

    @property
    def uses_view(self) -> bool:
        return self.spec.uses_view

    @property
    def augmentation_key(self) -> int:
        return self.augmentation if self.augmentation is not None else self.spec.augmentation


class TrainableMappers(nn.Module):
    """The mappers of one run; one module so DDP sees them all (per-scene object-mappers in mode 3)."""

    def __init__(self, view: NeTIMapper | None, objects: Sequence[NeTIMapper]):
        super().__init__()
        self.view = view
        self.objects = nn.ModuleList(objects)

    def forward(self, timesteps, layers, camera, scenes: Sequence[tuple[int, int]]):
        """``scenes``: (scene index, rows) per consecutive group of rows; each group uses its scene's object-mapper.

        Neighbouring groups of one scene run as one call (the mapper works row by row): fewer kernels.
        """
        merged: list[list[int]] = []
        for scene, rows in scenes:
            if merged and merged[-1][0] == scene:
                merged[-1][1] += rows
            else:
                merged.append([scene, rows])
        outs, start = [], 0
        for scene, rows in merged:
            outs.append(self.objects[scene](timesteps[start : start + rows], layers[start : start + rows]))
            start += rows
        obj = tuple(torch.cat(parts) for parts in zip(*outs)) if len(outs) > 1 else outs[0]
        view = self.view(timesteps, layers, camera) if self.view is not None and camera is not None else None
        return obj, view


def new_mapper(
    base: Backbone, kind: str, camera_param: CameraParameterization | None = None, token: str | None = None
) -> NeTIMapper:
    is_view = kind == "view"
    if is_view and camera_param is None:
        raise ValueError("a view-mapper needs a camera parameterization (camera_param)")
    cfg = MapperConfig(
        kind=kind,
        token=token or (base.text.view_token if is_view else base.text.object_token),
        embedding_dim=base.text.embedding_dim,
        num_layers=base.num_layers,
        num_train_timesteps=base.num_train_timesteps,
        camera_dim=camera_param.dim if is_view and camera_param is not None else 0,
        camera_parameterization=camera_param.to_config() if is_view and camera_param is not None else None,
        norm_target=base.text.reference_norm("view" if is_view else "object"),
        super_word="view" if is_view else "object",
        base_model=base.name,
        base_model_fingerprint=base.fingerprint,
    )
    return NeTIMapper(cfg)


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    view_mapper: NeTIMapper | None
    object_mappers: dict[str, NeTIMapper]
    losses: list[float] = field(default_factory=list)
    step: int = 0
    output_dir: Path | None = None


_T = TypeVar("_T")


def _all_present(values: list[_T | None], what: str) -> list[_T]:
    """The micro-batches of one step are alike: where the first has a value, every one has."""
    present = [v for v in values if v is not None]
    if len(present) != len(values):
        raise RuntimeError(f"the micro-batches of one step disagree on their {what}")
    return present


@dataclass
class MicroBatch:
    """What one micro-batch trains on; tensors stay on the CPU except ``images``."""

    scene: int
    images: torch.Tensor | None  # [B, 3, H, W] in [-1, 1], not yet augmented, on the training device (None: pooled)
    augmentation: AugmentationPlan | None  # drawn here, applied in ``loss_on`` to all fused micro-batches at once
    feats: torch.Tensor | None  # [B, F] camera features (CPU)
    prompts: list[str]
    noise: torch.Tensor  # [B, C, h, w] (CPU)
    t: torch.Tensor  # [B] timesteps (CPU)
    posterior_noise: torch.Tensor  # [B, C, h, w] the VAE posterior sample's draw (CPU)
    pool_index: torch.Tensor | None = (
        None  # [B] entries of the scene's encoded pool (CPU): its images, or its augmentation pool
    )


class Trainer:
    """Runs one ViewNeTI training mode. Works in-process (engine inversion) and under ``accelerate launch``."""

    def __init__(
        self,
        config: TrainConfig,
        base: Backbone | str,
        scenes: Sequence[Scene],
        *,
        view_mapper: NeTIMapper | str | None = None,
        output_dir: str | Path | None = None,
        device: str | None = None,
        accelerator=None,
        camera_param: CameraParameterization | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = c = config
        spec = c.spec
        if not scenes:
            raise InputError("no training scenes given")
        if not spec.many_scenes and len(scenes) != 1:
            raise InputError(f"mode {c.mode} trains on exactly one scene, got {len(scenes)}: use mode 3 for many")
        if c.uses_view and any(s.cameras is None for s in scenes):
            raise InputError(
                f"mode {c.mode} needs a camera per image: use a transforms.json or DTU scene, or mode 0 for plain images"
            )
        if spec.pretrained_view and view_mapper is None:
            raise InputError(
                f"mode {c.mode} starts from a pretrained view-mapper: pass --view-mapper (a mode-3 result)"
            )
        mp = c.mixed_precision
        if mp is None:
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and device != "cpu" else "no"
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=1 if c.fuse_micro_batches else c.grad_accum,
            mixed_precision=mp,
            cpu=device == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=spec.many_scenes)],
        )
        acc = self.accelerator
        frozen_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, torch.float32)
        self.base = (
            load_base_model(base, device=str(acc.device), dtype=frozen_dtype)
            if isinstance(base, (str, os.PathLike))
            else base
        )
        b = self.base
        self.scenes = list(scenes)
        self.width = c.width or b.native_size
        self.height = c.height or b.native_size
        self.output_dir = Path(output_dir) if output_dir else None

        # Mappers: view (new / pretrained / frozen) and one object-mapper per scene.
        if isinstance(view_mapper, (str, os.PathLike)):
            view_mapper = NeTIMapper.from_pretrained(view_mapper, expect_fingerprint=b.fingerprint)
        if spec.pretrained_view:
            if view_mapper is None:
                raise InputError(f"mode {c.mode} trains with a pretrained view-mapper: pass view_mapper")
            self.camera_param = parameterization_from_config(view_mapper.config.camera_parameterization)
            self.view_mapper = view_mapper.to(acc.device)
        elif c.uses_view:
            all_cams = [cam.with_size(self.width, self.height) for s in self.scenes for cam in s.posed_cameras()]
            # ``camera_param`` lets a caller fit the statistics on a wider population (dtu-12d: all
            # 64 cal18 cameras, as the reference does); otherwise they come from the training cameras.
            self.camera_param = camera_param or make_parameterization(c.camera_parameterization).fit(all_cams)
            self.view_mapper = new_mapper(b, "view", self.camera_param).to(acc.device)
        else:
            self.camera_param, self.view_mapper = None, None
        torch.manual_seed(c.seed)
        self.object_mappers = [new_mapper(b, "object").to(acc.device) for _ in self.scenes]
        train_view = spec.trains_view
        if self.view_mapper is not None:
            self.view_mapper.requires_grad_(train_view)
        self.frozen_view = self.view_mapper if (self.view_mapper is not None and not train_view) else None
        self.mappers = TrainableMappers(self.view_mapper if train_view else None, self.object_mappers)
        params = [p for p in self.mappers.parameters() if p.requires_grad]
        lr = c.lr * (c.batch_size * c.grad_accum * acc.num_processes if c.scale_lr else 1)
        self.optimizer = torch.optim.AdamW(
            params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=c.weight_decay, fused=acc.device.type == "cuda"
        )
        self.mappers, self.optimizer = acc.prepare(self.mappers, self.optimizer)
        self.noise_scheduler = b.noise_scheduler()
        # sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) for every t, on the device once: what the scheduler's
        # add_noise / get_velocity compute per call (same float32 values) in ~19 kernels each.
        acp = self.noise_scheduler.alphas_cumprod.to(acc.device, torch.float32)
        self.noise_coefficients = torch.stack([acp**0.5, (1 - acp) ** 0.5])
        self.augmentation = AUGMENTATIONS.get(c.augmentation_key)
        # Images resized once; each micro-batch draws its augmentation, applied to a fused step's images at once.
        self.scene_tensors = [images_to_tensor(s.images, self.width, self.height).to(acc.device) for s in self.scenes]
        self.scene_features = [
            self.camera_param.features([cam.with_size(self.width, self.height) for cam in s.posed_cameras()])
            if self.camera_param
            else None
            for s in self.scenes
        ]
        self.pools = self._encode_pools()
        self.step = 0
        self.losses: list[float] = []

    @torch.no_grad()
    def _encode_posteriors(self, images: torch.Tensor) -> torch.Tensor:
        """The VAE posterior of each image as [N, 2, C, h, w] float32: mean and std stacked."""
        b = self.base
        posterior = b.vae.encode(images.to(self.accelerator.device, b.dtype)).latent_dist
        return torch.stack([posterior.mean.float(), posterior.std.float()], dim=1)

    def _encode_pools(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per scene: (source image index [N] on the CPU, posteriors [N, 2, C, h, w] on the device), or None.

        Without augmentation every step would encode the same images again, so each image's posterior
        is encoded once here (same maths: every step still draws its own posterior sample, and the
        images are drawn with the same random stream). With ``augmentation_pool`` N, N augmented copies
        are encoded once (an option that changes the maths). Encoded in whole chunks of one training
        step's batch, the shape a compiled VAE was (or will be) captured at.
        """
        c, dev = self.config, self.accelerator.device
        if self.augmentation is not None and not c.augmentation_pool:
            return None  # fresh augmentation every step: the images must be encoded every step
        gen = torch.Generator().manual_seed(c.seed * 1000003 + 17)
        chunk = c.batch_size * (c.grad_accum if c.fuse_micro_batches else 1)
        pools = []
        for tensors in self.scene_tensors:
            if self.augmentation is None:
                source = torch.arange(tensors.shape[0])
            else:
                source = torch.randint(0, tensors.shape[0], (-(-c.augmentation_pool // chunk) * chunk,), generator=gen)
            parts = []
            for start in range(0, source.shape[0], chunk):
                part = source[start : start + chunk]
                whole = torch.cat([part, part[:1].expand(chunk - part.shape[0])])  # a short last chunk is padded
                images = tensors.index_select(0, to_device(whole, dev))
                if self.augmentation is not None:
                    images = apply_augmentation(
                        images, plan_augmentation(self.augmentation, gen, chunk, self.width, self.height)
                    )
                parts.append(self._encode_posteriors(images)[: part.shape[0]])
            pools.append((source, torch.cat(parts)))
        return pools

    # -- micro-batches -----------------------------------------------------------------------------
    def sample_batch(self, gen: torch.Generator, rng: random.Random) -> MicroBatch:
        """One micro-batch: a scene, augmented images, camera features, prompts, noise and timesteps.

        Every random draw comes from CPU generators, so a run is reproducible on any device, and
        nothing here waits for the GPU (transfers are pinned and non-blocking).
        """
        c, dev = self.config, self.accelerator.device
        scene = rng.randrange(len(self.scenes)) if c.spec.many_scenes else 0
        pool_index = None
        if self.pools is not None:  # images come already encoded (and augmented, with a pool), from the scene's pool
            source, _ = self.pools[scene]
            pool_index = torch.randint(0, source.shape[0], (c.batch_size,), generator=gen)
            idx, images, plan = source[pool_index], None, None
        else:
            n = self.scene_tensors[scene].shape[0]
            idx = torch.randint(0, n, (c.batch_size,), generator=gen)
            images = self.scene_tensors[scene].index_select(0, to_device(idx, dev))
            plan = (
                plan_augmentation(self.augmentation, gen, c.batch_size, self.width, self.height)
                if self.augmentation
                else None
            )
        scene_feats = self.scene_features[scene]
        feats = scene_feats[idx] if scene_feats is not None else None
        if c.uses_view:
            prompts = [
                VIEW_OBJECT_PROMPT.format(view=self.base.text.view_token, object=self.base.text.object_token)
            ] * c.batch_size
        else:
            prompts = [
                rng.choice(OBJECT_TEMPLATES).format(object=self.base.text.object_token) for _ in range(c.batch_size)
            ]
        f = self.base.vae_scale_factor
        shape = (c.batch_size, self.base.latent_channels, self.height // f, self.width // f)
        noise = torch.randn(shape, generator=gen)
        t = torch.randint(0, self.noise_scheduler.config["num_train_timesteps"], (c.batch_size,), generator=gen)
        return MicroBatch(scene, images, plan, feats, prompts, noise, t, torch.randn(shape, generator=gen), pool_index)

    def _token_ids(self, prompts: list[str]) -> torch.Tensor:
        if len(set(prompts)) == 1:  # the usual case: one cached tokenisation, expanded
            return self.base.text.token_ids(prompts[0]).expand(len(prompts), -1)
        return self.base.text.tokenize(prompts)

    def loss_on(self, batches: Sequence[MicroBatch]) -> torch.Tensor:
        """Mean loss over one or more micro-batches run as one batch (their mean, if equal-sized)."""
        b, acc = self.base, self.accelerator
        dev = acc.device
        n_l = b.num_layers
        bs = sum(len(mb.t) for mb in batches)
        eps = to_device(torch.cat([mb.posterior_noise for mb in batches]), dev)
        if batches[0].pool_index is not None:  # encoded once: look the posteriors up
            pools, pool_index = self.pools, _all_present([mb.pool_index for mb in batches], "pool indices")
            if pools is None:
                raise RuntimeError("micro-batches index an encoded pool, but this trainer has none")
            posteriors = torch.cat(
                [pools[mb.scene][1].index_select(0, to_device(i, dev)) for mb, i in zip(batches, pool_index)]
            )
        else:
            images = torch.cat(_all_present([mb.images for mb in batches], "images"))
            if batches[0].augmentation is not None:  # one batched augmentation for every fused micro-batch
                plans = _all_present([mb.augmentation for mb in batches], "augmentation plans")
                images = apply_augmentation(images, AugmentationPlan.concat(plans))
            posteriors = self._encode_posteriors(images)
        mean, std = posteriors.unbind(1)
        latents = (mean + std * eps) * b.scaling_factor  # a sample of the VAE posterior, with each image's own draw
        noise = to_device(torch.cat([mb.noise for mb in batches]), dev)
        t = to_device(torch.cat([mb.t for mb in batches]), dev)
        signal_scale, noise_scale = self.noise_coefficients[:, t].view(2, bs, 1, 1, 1).unbind(0)
        noisy = signal_scale * latents + noise_scale * noise  # = noise_scheduler.add_noise
        target = (
            noise if b.prediction_type == "epsilon" else signal_scale * noise - noise_scale * latents
        )  # get_velocity
        t_rep = t.repeat_interleave(n_l)
        l_rep = torch.arange(n_l, device=dev).repeat(bs)
        feats = None
        if batches[0].feats is not None:
            feats = to_device(torch.cat(_all_present([mb.feats for mb in batches], "camera features")), dev)
            feats = feats.repeat_interleave(n_l, dim=0)
        ids = self._token_ids([p for mb in batches for p in mb.prompts]).repeat_interleave(n_l, dim=0)
        groups = [(mb.scene, len(mb.t) * n_l) for mb in batches]
        obj, view = self.mappers(t_rep, l_rep, feats if self.config.spec.trains_view else None, groups)
        from .text_conditioning import Injection

        inj = {b.text.object_token_id: Injection(obj[0], obj[1], self.object_mappers[batches[0].scene].config.alpha)}
        if view is None and self.frozen_view is not None and feats is not None:
            with torch.no_grad():
                view = self.frozen_view(t_rep, l_rep, feats)
        if view is not None:
            if self.view_mapper is None:  # view encodings come from it (trained or frozen)
                raise RuntimeError("view encodings without a view-mapper")
            inj[b.text.view_token_id] = Injection(view[0], view[1], self.view_mapper.config.alpha)
        with acc.autocast():
            keys, values = b.text.encode(ids, inj)
            s, d = keys.shape[1:]
            ehs = pack_layer_encodings(keys.view(bs, n_l, s, d), values.view(bs, n_l, s, d))
            pred = b.unet(noisy.to(b.dtype), t, encoder_hidden_states=ehs.to(b.dtype), return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def evaluate_loss(self, batches: int = 4, seed: int = 1234) -> float:
        """Mean loss on a fixed set of (scene, images, t, noise) without augmentation: a stable progress measure."""
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        (aug, pools), self.augmentation, self.pools = (self.augmentation, self.pools), None, None
        try:
            losses = [float(self.loss_on([self.sample_batch(gen, rng)])) for _ in range(batches)]
        finally:
            self.augmentation, self.pools = aug, pools
        return sum(losses) / len(losses)

    # -- loop ----------------------------------------------------------------------------------------
    def train(
        self,
        *,
        on_step: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = True,
        lockstep: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Run the optimisation to ``config.steps``. ``on_step(step, total, loss)`` sees each step once,
        in order; while ``lockstep()`` is true it sees a step with nothing queued behind it on the GPU, so
        that work done in it (a live render the server serves there) does not first wait for the next
        training step."""
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        self.mappers.train()
        gen = torch.Generator().manual_seed(c.seed * 1000003 + self.step + acc.process_index)
        rng = random.Random(c.seed * 7919 + self.step + acc.process_index)
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            disable=not (progress and acc.is_main_process),
            desc=f"mode {c.mode}",
            unit="step",
        )
        t0, start_step = time.perf_counter(), self.step
        fused = c.fuse_micro_batches
        # A step's loss is read back (the one host-device sync) only after the next step has been
        # queued, and only up to the step it belongs to (ScalarReadback waits for an event recorded
        # after the loss, not for the whole stream): the host prepares step k+2 while the GPU runs
        # step k+1, so the GPU never waits for Python. Callbacks, the progress bar and ``losses``
        # therefore see step k once step k+1 is queued (or training ends); checkpoints flush it first.
        # While ``lockstep()`` is true a step is read back at once instead: the GPU idles while the host
        # prepares the next step, and what ``on_step`` queues runs without waiting for a training step.
        pending: tuple[int, ScalarReadback] | None = None

        def finish(done: tuple[int, ScalarReadback] | None) -> None:
            if done is None:
                return
            step, readback = done
            loss_value = readback.value()
            self.losses.append(loss_value)
            bar.update(1)
            if step % max(1, c.log_every) == 0 or step == c.steps:
                bar.set_postfix(loss=f"{sum(self.losses[-c.log_every :]) / len(self.losses[-c.log_every :]):.4f}")
            if on_step is not None:
                on_step(step, c.steps, loss_value)

        while self.step < c.steps:
            running = torch.zeros((), device=acc.device)
            for _ in range(1 if fused else c.grad_accum):
                if should_stop is not None and should_stop():  # the unreported last step is dropped with the run
                    bar.close()
                    raise Cancelled(f"training stopped at step {self.step} of {c.steps}")
                with acc.accumulate(self.mappers):
                    batches = [self.sample_batch(gen, rng) for _ in range(c.grad_accum if fused else 1)]
                    loss = self.loss_on(batches)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                running += loss.detach() / (1 if fused else c.grad_accum)
            self.step += 1
            finish(pending)
            pending = (self.step, ScalarReadback(running))
            if lockstep is not None and lockstep():
                finish(pending)
                pending = None
            if self.output_dir and c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                finish(pending)
                pending = None
                self.save_checkpoint()
        finish(pending)
        bar.close()
        self.elapsed_s = time.perf_counter() - t0
        self.steps_run = self.step - start_step
        if self.output_dir:
            self.save_checkpoint()
            self.save_final()
        return self.result()

    def result(self) -> TrainResult:
        names = [s.name for s in self.scenes]
        return TrainResult(
            self.view_mapper, dict(zip(names, self.object_mappers)), self.losses, self.step, self.output_dir
        )

    # -- persistence (checkpoints.py) ---------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """``checkpoint-<step>/``: mappers + optimizer (safetensors) + trainer_state.json; written atomically."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process or self.output_dir is None:
            return None
        state = {
            "config": asdict(self.config),
            "losses": self.losses,
            "base_model": self.base.name,
            "base_model_fingerprint": self.base.fingerprint,
        }
        names = [s.name for s in self.scenes]
        return write_checkpoint(
            self.output_dir, self.step, self.view_mapper, names, self.object_mappers, self.optimizer, state
        )

    def save_final(self) -> None:
        if self.accelerator.is_main_process and self.output_dir is not None:
            names = [s.name for s in self.scenes]
            save_mappers(self.output_dir, self.view_mapper, names, self.object_mappers, self.step)

    def resume(self, checkpoint: str | Path) -> int:
        """Load mappers + optimizer from ``checkpoint-<step>/`` (or the latest one in a run folder)."""
        names = [s.name for s in self.scenes]
        state = read_checkpoint(checkpoint, self.view_mapper, names, self.object_mappers, self.optimizer)
        self.step = int(state["step"])
        self.losses = list(state.get("losses", []))
        return self.step
