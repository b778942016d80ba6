"""Rendering: camera poses + an object token -> images, through a frozen SD-architecture model.

The fast path: all (timestep, layer) encodings of a view in one batched text-encoder call, cached
per (object, pose, schedule) and reused across seeds; classifier-free guidance and several views
batched into one UNet call per step; SDPA attention. Same seed -> same image, whether a view is
rendered alone or in a batch (every view starts from the seed's noise).
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from PIL import Image

from .attention import (
    cross_attention_layers,
    keys_ahead_requested,
    pack_layer_encodings,
    pack_plain_encoding,
    project_layer_encodings,
    projected_layout,
)
from .base_model import Backbone
from .camera_features import CameraParameterization, parameterization_from_config
from .cameras import Camera
from .errors import Cancelled, InputError
from .images import to_pil
from .mapper import NeTIMapper
from .phase_clock import PhaseClock
from .progress import RENDER_PHASES
from .render_shape import RenderShape
from .step_pacer import StepPacer
from .text_conditioning import OBJECT_PROMPT, VIEW_OBJECT_PROMPT, Injection
from .transfer import to_device

# Unused schedulers kept to copy from (one per sampler x step count x scheduler config in use; a user
# switches between few: the live and the view step counts).
MAX_SCHEDULER_TEMPLATES = 8


def encode_conditions(
    base: Backbone,
    input_ids: torch.Tensor,
    timesteps: torch.Tensor,
    layers: torch.Tensor,
    object_mapper: NeTIMapper | None,
    view_mapper: NeTIMapper | None = None,
    camera_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched text-encoder pass for N (prompt, t, l[, camera]) rows -> keys, values [N, S, D]."""
    injections: dict[int, Injection] = {}
    if object_mapper is not None:
        word, bypass = object_mapper(timesteps, layers)
        injections[base.text.object_token_id] = Injection(word, bypass, object_mapper.config.alpha)
    if view_mapper is not None:
        word, bypass = view_mapper(timesteps, layers, camera_features)
        injections[base.text.view_token_id] = Injection(word, bypass, view_mapper.config.alpha)
    return base.text.encode(input_ids.to(base.device), injections)


def layer_grid(timesteps: torch.Tensor, num_layers: int, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ordered (repeat, t, l): t and l index tensors of length repeats * T * L."""
    t = timesteps.long().repeat_interleave(num_layers).repeat(repeats)
    l = torch.arange(num_layers, device=timesteps.device).repeat(len(timesteps) * repeats)
    return t, l


class ViewNeTIPipeline:
    """Frozen backbone + a view-mapper + object tokens -> novel views."""

    def __init__(
        self,
        base: Backbone,
        view_mapper: NeTIMapper | None = None,
        *,
        sampler: str = "dpmsolver++",
        cache_size: int = 16,
    ):
        self.base = base
        self.view_mapper = view_mapper.to(base.device).eval() if view_mapper is not None else None
        self.camera_param: CameraParameterization | None = None
        if view_mapper is not None:
            if (
                view_mapper.config.num_layers != base.num_layers
                or view_mapper.config.embedding_dim != base.text.embedding_dim
            ):
                raise InputError(
                    f"view-mapper was built for {view_mapper.config.num_layers} layers x {view_mapper.config.embedding_dim} dims, "
                    f"the model has {base.num_layers} x {base.text.embedding_dim}: use a view-mapper trained for this model"
                )
            self.camera_param = parameterization_from_config(view_mapper.config.camera_parameterization)
        self.sampler = sampler
        self.cache_size = cache_size
        self._schedulers: OrderedDict[tuple, Any] = OrderedDict()  # unused schedulers, copied per render
        self._schedulers_lock = threading.Lock()
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._uncond: torch.Tensor | None = None
        self._uncond_projected: torch.Tensor | None = None
        # Project the cross-attention keys/values of all steps before the denoising loop (attention.py),
        # where the UNet's processors take them (the default; VIEWNETI_KEYS_AHEAD=0: in the loop).
        self._cross_layers = cross_attention_layers(base.unet)
        self.keys_ahead_possible = projected_layout(self._cross_layers) is not None
        self.keys_ahead = keys_ahead_requested() and self.keys_ahead_possible

    # -- conditioning ----------------------------------------------------------------------------
    def _uncond_packed(self) -> torch.Tensor:
        if self._uncond is None:
            with torch.no_grad():
                plain = self.base.text.encode_plain([""])
            self._uncond = pack_plain_encoding(plain, self.base.num_layers)
        return self._uncond

    @torch.no_grad()
    def _uncond_for_steps(self) -> torch.Tensor:
        """The unconditional encoding in the form the UNet gets at each step (see :meth:`_step_conditions`)."""
        uncond = self._uncond_packed().to(self.base.dtype)
        if not self.keys_ahead:
            return uncond
        if self._uncond_projected is None or self._uncond_projected.dtype != self.base.dtype:
            self._uncond_projected = project_layer_encodings(self._cross_layers, uncond)
        return self._uncond_projected

    def _step_conditions(self, cond: torch.Tensor, use_cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the UNet gets at each step: ``cond`` [T, B, ...] and the unconditional encoding (None
        without CFG), as packed encodings, or with :attr:`keys_ahead` as projected keys/values (all the
        steps' in one GEMM per layer; the unconditional one, the same for every render, once)."""
        uncond = self._uncond_for_steps() if use_cfg else None
        if not self.keys_ahead:
            return cond, uncond
        t, b = cond.shape[:2]
        flat = cond.reshape(t * b, *cond.shape[2:]).to(self.base.dtype)
        projected = project_layer_encodings(self._cross_layers, flat)
        return projected.view(t, b, *projected.shape[1:]), uncond

    def prepare(self) -> None:
        """Compute what every render shares (the unconditional encoding) now rather than on first use."""
        self._uncond_for_steps()

    def prompt(self, with_view: bool) -> str:
        t = self.base.text
        return (
            VIEW_OBJECT_PROMPT.format(view=t.view_token, object=t.object_token)
            if with_view
            else OBJECT_PROMPT.format(object=t.object_token)
        )

    def _compute_packed(
        self, cameras: Sequence[Camera], object_mapper: NeTIMapper | None, timesteps: torch.Tensor, with_view: bool
    ) -> torch.Tensor:
        """All T x L encodings of every camera in one text-encoder call -> [B, T, 2*L*S, D]."""
        b, n_t, n_l = len(cameras), len(timesteps), self.base.num_layers
        t, l = layer_grid(timesteps.to(self.base.device), n_l, b)
        ids = self.base.text.token_ids(self.prompt(with_view)).expand(len(t), -1)
        feats = None
        if with_view:
            if self.camera_param is None:  # set together with the view-mapper
                raise InputError("no view-mapper is loaded: load one (--view-mapper) or render without view control")
            feats = to_device(self.camera_param.features(cameras), self.base.device).repeat_interleave(n_t * n_l, dim=0)
        k, v = encode_conditions(self.base, ids, t, l, object_mapper, self.view_mapper if with_view else None, feats)
        s, d = k.shape[1], k.shape[2]
        packed = pack_layer_encodings(k.view(b * n_t, n_l, s, d), v.view(b * n_t, n_l, s, d))
        return packed.view(b, n_t, 2 * n_l * s, d)

    @torch.no_grad()
    def view_encodings(
        self,
        cameras: Sequence[Camera],
        object_mapper: NeTIMapper,
        timesteps: torch.Tensor,
        with_view: bool = True,
        cache_key: str | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Packed per-layer encodings for every camera and step: [T, B, 2*L*S, D].

        Cached per (object, pose, schedule) so live re-renders and other seeds skip the text encoder;
        ``use_cache=False`` for mappers that are still changing (training previews).
        """
        if with_view and self.view_mapper is None:
            raise InputError("no view-mapper is loaded: load one (--view-mapper) or render without view control")
        if not use_cache or cache_key is None:
            return self._compute_packed(cameras, object_mapper, timesteps, with_view).transpose(0, 1)
        tkey = tuple(timesteps.tolist())  # one read of the device tensor, not one per step
        keys = [
            (
                cache_key,
                with_view,
                tkey,
                cam.camera_to_anchor.round(9).tobytes() if with_view else b"",
                cam.intrinsics_key() if with_view else (),
            )
            for cam in cameras
        ]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            first = {k: keys.index(k) for k in todo}
            packed = self._compute_packed([cameras[first[k]] for k in todo], object_mapper, timesteps, with_view)
            for j, key in enumerate(todo):
                self._cache[key] = packed[j]
        out = []
        for key in keys:
            self._cache.move_to_end(key)
            out.append(self._cache[key])
        while len(self._cache) > max(self.cache_size, len(set(keys))):
            self._cache.popitem(last=False)
        return torch.stack(out, dim=1)

    def forget(self, cache_key: str) -> None:
        """Drop cached encodings of one object (it was deleted or re-trained)."""
        for key in [k for k in self._cache if k[0] == cache_key]:
            del self._cache[key]

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cached_encodings(self) -> int:
        """How many (object, pose, schedule) encodings the cache holds now (at most ``cache_size`` after a call)."""
        return len(self._cache)

    # -- sampling ----------------------------------------------------------------------------------
    def initial_latents(self, seed: int, batch: int, height: int, width: int, sigma: float) -> torch.Tensor:
        f, c = self.base.vae_scale_factor, self.base.latent_channels
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(1, c, height // f, width // f, generator=gen, dtype=torch.float32)
        # pinned + non-blocking: a plain copy would wait for the text encoder queued before it
        return to_device((noise.expand(batch, -1, -1, -1) * sigma).contiguous(), self.base.device).to(self.base.dtype)

    def scheduler(self, steps: int) -> Any:
        """A fresh sampling scheduler set to ``steps`` steps, from the base model's scheduler config as it
        is now, told to begin at its first step: its first step then skips the device search for the
        timestep (a GPU sync inside the sampling loop). That search picks the second of two equal first
        timesteps, so the begin index is set only when the first one is alone (the same steps either way).

        Built once per (sampler, steps, config) and copied for each render: a copy of the unused
        scheduler is the same state for about a quarter of the host time (0.28 against 1.09 ms a render on
        a 2-core CPU, RESULTS log, session 21), time a render's GPU would otherwise idle before its first kernel."""
        key = (self.sampler, int(steps), json.dumps(self.base.scheduler_config, sort_keys=True, default=str))
        with self._schedulers_lock:  # the server's compile thread (run_graphs) asks too
            template = self._schedulers.get(key)
            if template is not None:
                self._schedulers.move_to_end(key)
        if template is None:
            template = self.base.sampling_scheduler(self.sampler)
            template.set_timesteps(steps, device=self.base.device)
            timesteps = template.timesteps.tolist()  # at a render's start, before any of its GPU work
            if hasattr(template, "set_begin_index") and timesteps.count(timesteps[0]) == 1:
                template.set_begin_index(0)
            with self._schedulers_lock:
                self._schedulers[key] = template
                while len(self._schedulers) > MAX_SCHEDULER_TEMPLATES:
                    self._schedulers.popitem(last=False)
        return copy.deepcopy(template)  # templates are never stepped: copying one needs no lock

    def _modules(self, eager: bool) -> tuple[Any, Any]:
        """(UNet, VAE decoder) to run: the compiled ones, or with ``eager`` the uncompiled originals."""
        vae = self.base.vae
        if eager:
            return self.base.eager.get("unet", self.base.unet), self.base.eager.get("vae_decoder", vae.decoder)
        return self.base.unet, vae.decoder

    @torch.no_grad()
    def decode_tensor(self, latents: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Latents -> images in [-1, 1]: AutoencoderKL.decode without tiling/slicing, with a chosen decoder."""
        vae = self.base.vae
        z = latents.to(self.base.dtype) / self.base.scaling_factor
        if getattr(vae, "post_quant_conv", None) is not None:
            z = vae.post_quant_conv(z)
        return self._modules(eager)[1](z)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, eager: bool = False) -> list[Image.Image]:
        return to_pil(self.decode_tensor(latents, eager))

    @torch.no_grad()
    def denoise(
        self,
        cond: torch.Tensor,
        latents: torch.Tensor,
        scheduler,
        guidance: float,
        *,
        eager: bool = False,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        lockstep: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """The sampling loop: ``cond`` [T, B, ...] packed encodings, ``latents`` [B, C, h, w] initial noise.

        A loop that can be stopped or reports progress keeps the host at most ``step_pacer.STEPS_AHEAD``
        steps ahead of the GPU (:class:`StepPacer`; none while ``lockstep()`` is true): a stop, or a render
        served from ``on_step``, then waits for that much GPU work at most, and ``on_step(k, steps)`` says
        that the GPU has done step k (the last ones are reported as issued)."""
        unet = self._modules(eager)[0]
        timesteps, steps = scheduler.timesteps, len(scheduler.timesteps)
        use_cfg = guidance != 1.0
        paced = should_stop is not None or on_step is not None
        pacer = StepPacer(self.base.device, lockstep=lockstep) if paced else None
        cond, uncond = self._step_conditions(cond, use_cfg)
        if uncond is not None:
            uncond = uncond.expand(latents.shape[0], -1, -1)
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped at step {i} of {steps}")
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)  # pyright: ignore[reportArgumentType]  DDIMScheduler annotates timestep int; diffusers' own pipelines pass this tensor
            ehs = torch.cat([uncond, cond[i]]) if uncond is not None else cond[i]
            pred = unet(model_in, t, encoder_hidden_states=ehs, return_dict=False)[0]
            if use_cfg:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + guidance * (pred_c - pred_u)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]  # pyright: ignore[reportArgumentType]  as above
            if pacer is not None:
                for k in pacer.issued(i + 1):
                    if on_step is not None:
                        on_step(k, steps)
        if pacer is not None and on_step is not None:
            for k in pacer.rest():
                on_step(k, steps)
        return latents

    def _sync(self) -> None:
        """Wait for the GPU (timings and warm-ups must include its work); nothing to wait for on the CPU."""
        if self.base.device.type == "cuda":
            torch.cuda.synchronize(self.base.device)

    @torch.no_grad()
    def run_graphs(self, shape: RenderShape, steps: int = 2, *, eager: bool = False) -> None:
        """Run the compiled UNet and decoder once at one shape with blank conditioning (compiles that shape);
        with ``eager``, the uncompiled ones (pays that shape's first-use costs: see Engine.prime_first_use).

        The inputs go through the same code as a render (scheduler, noise, CFG concat, decode), so the
        compiled graphs' guards match a real request exactly; no mapper, cache or text encoder is touched,
        which lets a background thread do this while the worker renders."""
        guidance = 2.0 if shape.cfg else 1.0  # any guidance but 1 takes the same (CFG) path
        scheduler = self.scheduler(steps)
        uncond = self._uncond_packed()
        cond = torch.zeros((steps, shape.views, *uncond.shape[1:]), device=self.base.device, dtype=self.base.dtype)
        latents = self.initial_latents(0, shape.views, shape.height, shape.width, float(scheduler.init_noise_sigma))
        latents = self.denoise(cond, latents, scheduler, guidance, eager=eager)
        self.decode_tensor(latents, eager=eager)
        self._sync()

    @torch.no_grad()
    def run_encodings(self, camera: Camera, object_mapper: NeTIMapper | None, steps: int) -> None:
        """Compute one new pose's encodings at ``steps`` steps as a render does (mappers, injection, the
        text encoder at steps x layers prompts), and drop them: nothing is cached."""
        timesteps = self.scheduler(steps).timesteps
        self._compute_packed([camera], object_mapper, timesteps, self.view_mapper is not None)
        self._sync()

    @overload
    def __call__(
        self,
        cameras: Sequence[Camera],
        object_mapper: NeTIMapper,
        *,
        seed: int = 0,
        steps: int = 30,
        guidance: float = 7.5,
        with_view: bool = True,
        object_key: str | None = None,
        use_cache: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        lockstep: Callable[[], bool] | None = None,
        timings: dict | None = None,
        output: Literal["pil"] = "pil",
        eager: bool = False,
    ) -> list[Image.Image]: ...

    @overload
    def __call__(
        self,
        cameras: Sequence[Camera],
        object_mapper: NeTIMapper,
        *,
        seed: int = 0,
        steps: int = 30,
        guidance: float = 7.5,
        with_view: bool = True,
        object_key: str | None = None,
        use_cache: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        lockstep: Callable[[], bool] | None = None,
        timings: dict | None = None,
        output: Literal["latent"],
        eager: bool = False,
    ) -> torch.Tensor: ...

    @torch.no_grad()
    def __call__(
        self,
        cameras: Sequence[Camera],
        object_mapper: NeTIMapper,
        *,
        seed: int = 0,
        steps: int = 30,
        guidance: float = 7.5,
        with_view: bool = True,
        object_key: str | None = None,
        use_cache: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        lockstep: Callable[[], bool] | None = None,
        timings: dict | None = None,
        output: str = "pil",
        eager: bool = False,
    ) -> list[Image.Image] | torch.Tensor:
        """Render ``cameras``: PIL images, or the final latents with ``output="latent"``. ``eager`` runs the
        uncompiled UNet/decoder (a shape that has no compiled graph yet); same maths."""
        if not cameras:
            raise InputError("no cameras given")
        width, height = cameras[0].width, cameras[0].height
        if any((c.width, c.height) != (width, height) for c in cameras):
            raise InputError("all cameras of one render call must have the same width and height")
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        # No waiting for the GPU between phases: the host queues the denoise loop while the text encoder runs.
        clock = PhaseClock(self.base.device)
        scheduler = self.scheduler(steps)
        timesteps = scheduler.timesteps
        cond = self.view_encodings(cameras, object_mapper, timesteps, with_view, object_key, use_cache).to(
            self.base.dtype
        )
        clock.mark()
        latents = self.initial_latents(seed, len(cameras), height, width, float(scheduler.init_noise_sigma))
        latents = self.denoise(
            cond,
            latents,
            scheduler,
            guidance,
            eager=eager,
            should_stop=should_stop,
            on_step=on_step,
            lockstep=lockstep,
        )
        clock.mark()
        if output != "latent" and should_stop is not None and should_stop():  # the VAE decode is not cut
            raise Cancelled(f"stopped after step {steps} of {steps}, before decoding")
        result = latents if output == "latent" else self.decode(latents, eager)  # images: read back to the host
        clock.mark()
        if timings is not None:
            timings.update(zip(RENDER_PHASES, clock.phases_ms(), strict=True))
        return result
