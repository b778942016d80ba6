"""Training the toy prior: the VAE, then the UNet with the text encoder; the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...config_cli import add_options, config_from_args, option
from ..renderer import DEFAULT_FOV_Y_DEG, ELEVATION_RANGE, RADIUS_RANGE
from .data import LatentBuffer, RenderStream, drop_captions, tokenize
from .model import (
    PriorArchitecture,
    autocast_bf16,
    build_components,
    load_prior,
    resolve_device,
    sanity_grid,
    save_prior,
)


@dataclass
class PriorTrainConfig:
    """One prior training run; the fields with ``option`` metadata are the options of
    ``python -m viewneti_backend.toyworld.prior`` (:mod:`...config_cli`)."""

    arch: PriorArchitecture = field(default_factory=PriorArchitecture)
    n_objects: int = field(default=20000, metadata=option("training objects: seeds [0, N)"))
    seed: int = field(default=0, metadata=option("random seed of the run"))
    device: str = field(default="auto", metadata=option("auto, cpu, cuda, cuda:1, ..."))
    supersample: int = 2  # anti-aliased renders
    # camera distribution (see renderer.CameraSampler)
    elevation_range: tuple[float, float] = ELEVATION_RANGE
    radius_range: tuple[float, float] = RADIUS_RANGE
    fov_y_deg: float = DEFAULT_FOV_Y_DEG
    # captions
    p_view: float = 0.3  # fraction of captions with a coarse view phrase
    cfg_drop: float = 0.1  # fraction of empty captions (classifier-free guidance)
    # VAE
    vae_steps: int = field(default=2000, metadata=option("VAE training steps"))
    vae_batch: int = 64
    vae_lr: float = 4e-4
    vae_kl_weight: float = 1e-6
    vae_object_weight: float = 2.0  # extra loss weight on object pixels (they are a small part of the image)
    vae_max_minutes: float | None = field(
        default=None, metadata=option("stop the VAE's training after this many minutes", flag="--vae-minutes")
    )
    # UNet + text encoder
    unet_steps: int = field(default=8000, metadata=option("UNet + text encoder training steps"))
    unet_batch: int = field(default=256, metadata=option("UNet batch size"))
    unet_lr: float = field(default=3e-4, metadata=option("UNet learning rate"))
    text_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 300
    ema_decay: float = 0.9995
    min_snr_gamma: float | None = 5.0
    unet_max_minutes: float | None = field(
        default=None,
        metadata=option(
            "stop the UNet's training after this many minutes (filling the latent buffer included)",
            flag="--unet-minutes",
        ),
    )
    buffer_size: int = field(
        default=49152,
        metadata=option("renders kept as VAE latents (mean, std); 0 = render every batch on the fly"),
    )
    buffer_refresh: int = field(
        default=16, metadata=option("fresh renders replacing random buffer entries at every step")
    )
    grad_clip: float = 1.0
    log_every: int = 100
    progress: bool = True

    @classmethod
    def tiny(cls) -> PriorTrainConfig:
        """Seconds on a CPU: for tests."""
        return cls(
            arch=PriorArchitecture.tiny(),
            n_objects=16,
            supersample=1,
            vae_steps=3,
            vae_batch=4,
            unet_steps=3,
            unet_batch=4,
            warmup_steps=1,
            log_every=1,
            progress=False,
            buffer_size=8,
            buffer_refresh=2,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _progress(step: int, steps: int, t0: float, budget_s: float | None) -> float:
    """Training progress in [0, 1]: by steps, or by wall time when a time budget is set (whichever is further)."""
    prog = step / max(1, steps)
    if budget_s is not None:
        prog = max(prog, (time.time() - t0) / budget_s)
    return prog


def _lr_lambda(warmup: int, _unused: float = 1.0) -> Callable[[int, float], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% over the training progress."""

    def f(step: int, prog: float) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return f


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.decay = decay
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)  # pyright: ignore[reportPrivateImportUsage]  torch's fused foreach ops are public API, not in its exports

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s.to(p.dtype))


def train_vae(
    vae, stream: RenderStream, cfg: PriorTrainConfig, device: torch.device, log: Callable[[str], None] = print
) -> dict[str, float]:
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    budget = None if cfg.vae_max_minutes is None else 60.0 * cfg.vae_max_minutes
    lr_at = _lr_lambda(min(200, cfg.vae_steps // 10), 1.0)
    t0 = time.time()
    hist: list[torch.Tensor] = []
    bar = tqdm(range(cfg.vae_steps), desc="vae", disable=not cfg.progress, mininterval=5)
    step = 0
    for step in bar:
        prog = _progress(step, cfg.vae_steps, t0, budget)
        if prog >= 1.0:
            log(f"vae: time budget reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * lr_at(step, prog)
        b = stream.next(cfg.vae_batch, with_captions=False)
        x, m = b["image"], b["mask"]
        with autocast_bf16(device):
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample
        rec = rec.float()
        w = 1.0 + cfg.vae_object_weight * m
        l1 = ((rec - x).abs() * w).mean()
        l2 = (((rec - x) ** 2) * w).mean()
        kl = post.kl().float().mean() / z[0].numel()  # per latent element
        loss = l1 + l2 + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        hist.append(l1.detach())
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            recent = float(torch.stack(hist[-cfg.log_every :]).mean())
            msg = f"vae step {step} l1 {recent:.4f} l2 {float(l2.detach()):.4f} kl {float(kl.detach()):.4f} ({time.time() - t0:.0f}s)"
            log(msg)
    else:
        step = cfg.vae_steps
    vae.eval()
    # SD-style latent scaling: unit variance latents
    with torch.no_grad(), autocast_bf16(device):
        zs = torch.cat(
            [
                vae.encode(stream.next(min(256, 4 * cfg.vae_batch), with_captions=False)["image"])
                .latent_dist.sample()
                .float()
                for _ in range(2)
            ]
        )
    scaling = float(1.0 / zs.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scaling)
    res = {
        "vae_steps": step,
        "vae_l1": float(torch.stack(hist[-50:]).mean()),
        "vae_seconds": time.time() - t0,
        "scaling_factor": scaling,
    }
    log(f"vae done: {res}")
    return res


def train_unet(
    components: dict[str, Any],
    stream: RenderStream,
    cfg: PriorTrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    unet, vae, te, tok, noise_sched = (components[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    unet.to(device).train()
    te.to(device).train()
    vae.to(device).eval().requires_grad_(False)
    params = [
        {"params": list(unet.parameters()), "lr": cfg.unet_lr},
        {"params": list(te.parameters()), "lr": cfg.text_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), fused=device.type == "cuda")
    base_lrs = [g["lr"] for g in opt.param_groups]
    budget = None if cfg.unet_max_minutes is None else 60.0 * cfg.unet_max_minutes
    lr_at = _lr_lambda(cfg.warmup_steps, 1.0)
    ema = EMA(list(unet.parameters()) + list(te.parameters()), cfg.ema_decay)
    acp = noise_sched.alphas_cumprod.to(device)
    snr = acp / (1 - acp)
    sf = float(vae.config.scaling_factor)
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    t0 = time.time()
    buffer = None
    if cfg.buffer_size > 0:
        buffer = LatentBuffer(stream, vae, tok, cfg.buffer_size, cfg.buffer_refresh, device)
        log(f"latent buffer of {len(buffer)} renders filled in {time.time() - t0:.0f}s")
    empty_ids = tokenize(tok, [""], device)
    drop_gen = torch.Generator().manual_seed(cfg.seed + 78)
    data_s = 0.0  # host time spent preparing batches (rendering, tokenizing), reported with the loss
    hist: list[torch.Tensor] = []
    bar = tqdm(range(cfg.unet_steps), desc="unet", disable=not cfg.progress, mininterval=5)
    step = 0
    for step in bar:
        prog = _progress(step, cfg.unet_steps, t0, budget)
        if prog >= 1.0:
            log(f"unet: time budget reached at step {step}")
            break
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * lr_at(step, prog)
        t_data = time.perf_counter()
        if buffer is not None:
            b = buffer.next(cfg.unet_batch)
            lat, ids = b["latents"], b["input_ids"]
        else:
            b = stream.next(cfg.unet_batch)
            ids = tokenize(tok, b["caption"], device)
            with torch.no_grad(), autocast_bf16(device):
                lat = vae.encode(b["image"]).latent_dist.sample().float() * sf
        ids = drop_captions(ids, empty_ids, cfg.cfg_drop, drop_gen)
        data_s += time.perf_counter() - t_data
        noise = torch.randn_like(lat)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (lat.shape[0],), device=device)
        a = acp[t].sqrt()[:, None, None, None]
        s1 = (1 - acp[t]).sqrt()[:, None, None, None]
        noisy = a * lat + s1 * noise
        target = a * noise - s1 * lat if v_pred else noise
        with autocast_bf16(device):
            cond = te(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        err = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            sn = snr[t]
            w = torch.clamp(sn, max=cfg.min_snr_gamma) / ((sn + 1) if v_pred else sn)
            loss = (err * w).mean()
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), cfg.grad_clip)
        opt.step()
        ema.update()
        hist.append(err.detach().mean())
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            recent = float(torch.stack(hist[-cfg.log_every :]).mean())
            log(
                f"unet step {step} mse {recent:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s; "
                f"batch preparation {1000 * data_s / (step + 1):.0f} ms/step on the host)"
            )
    else:
        step = cfg.unet_steps
    ema.copy_to()
    unet.eval()
    te.eval()
    res = {"unet_steps": step, "unet_mse": float(torch.stack(hist[-200:]).mean()), "unet_seconds": time.time() - t0}
    log(f"unet done: {res}")
    return res


def train_prior(
    config: PriorTrainConfig,
    out_dir: str | Path,
    *,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the toy prior end to end and save it as a diffusers folder in ``out_dir``.

    ``resume_from``: a saved prior folder; its VAE is kept (``vae_steps`` is ignored) and the UNet and
    text encoder continue training from its (EMA) weights. ``command``: how this run was started,
    recorded in the run's entry of the metrics' ``history``.
    Returns the metrics (also written to ``out_dir/toyworld.json``).
    """
    cfg = config
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(out_dir)
    t0 = time.time()
    prev_history: list = []  # the resumed run's history (below)
    if resume_from is not None:
        pipe = load_prior(resume_from, "cpu", torch.float32, scheduler=None)
        comps = {
            "unet": pipe.unet,
            "vae": pipe.vae,
            "text_encoder": pipe.text_encoder,
            "tokenizer": pipe.tokenizer,
            "scheduler": pipe.scheduler,
        }
        prev = json.loads((Path(resume_from) / "toyworld.json").read_text()).get("metrics", {})
        prev_history = list(prev.get("history", []))
        metrics: dict[str, Any] = {k: v for k, v in prev.items() if k.startswith("vae") or k == "scaling_factor"}
        metrics["resumed_unet_steps"] = prev.get("unet_steps", 0) + prev.get("resumed_unet_steps", 0)
        metrics["total_unet_steps"] = metrics["resumed_unet_steps"]
    else:
        comps = build_components(cfg.arch, out_dir / "tokenizer")
        metrics = {}
    n_params = {k: sum(p.numel() for p in comps[k].parameters()) for k in ("unet", "vae", "text_encoder")}
    log(f"device {device}; parameters {n_params}")
    stream = RenderStream(cfg, device)
    if resume_from is None:
        metrics.update(train_vae(comps["vae"], stream, cfg, device, log))
    metrics.update(train_unet(comps, stream, cfg, device, log))
    metrics["total_unet_steps"] = metrics.get("resumed_unet_steps", 0) + metrics["unet_steps"]
    metrics["parameters"] = n_params
    metrics["total_seconds"] = time.time() - t0
    metrics["device"] = str(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    run = {
        "stage": "unet+text_encoder (resumed)" if resume_from is not None else "vae, then unet+text_encoder",
        "unet_steps": metrics["unet_steps"],
        "unet_batch": cfg.unet_batch,
        "unet_lr": cfg.unet_lr,
        "unet_mse": metrics["unet_mse"],
        "seconds": metrics["total_seconds"],
        "device": metrics["device"],
    }
    if command is not None:
        run["command"] = command
    if resume_from is None:
        run.update(vae_steps=metrics["vae_steps"], vae_l1=metrics["vae_l1"])
    metrics["history"] = (prev_history if resume_from is not None else []) + [run]
    for k in ("unet", "vae", "text_encoder"):
        comps[k].to("cpu")
    save_prior(comps, out_dir, extra={"metrics": metrics, "config": cfg.to_json()})
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m viewneti_backend.toyworld.prior`` (those of the run: :class:`PriorTrainConfig`'s)."""
    ap = argparse.ArgumentParser(description="Train the toy-world prior (a tiny Stable-Diffusion-architecture model).")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--resume", default=None, help="continue UNet/text-encoder training from this prior folder (keeps its VAE)"
    )
    add_options(ap, PriorTrainConfig)
    ap.add_argument("--tiny", action="store_true", help="tiny architecture and steps (tests)")
    ap.add_argument("--grid", default=None, help="write a sanity grid PNG here after training")
    return ap


def main(argv: list[str] | None = None) -> None:
    """``python -m viewneti_backend.toyworld.prior --out DIR [--vae-minutes M --unet-minutes M ...]``:
    the script that trained the shipped prior (see the report / README for the exact command)."""
    a = build_parser().parse_args(argv)
    if a.tiny:  # the tests' run: only the device and seed are taken from the command line
        cfg = dataclasses.replace(PriorTrainConfig.tiny(), device=a.device, seed=a.seed)
    else:
        cfg = config_from_args(PriorTrainConfig, a)
    cfg.progress = False
    command = " ".join(["python -m viewneti_backend.toyworld.prior", *(argv if argv is not None else sys.argv[1:])])
    metrics = train_prior(cfg, a.out, resume_from=a.resume, log=lambda m: print(m, flush=True), command=command)
    print(json.dumps(metrics, indent=1), flush=True)
    if a.grid:
        dev = resolve_device(a.device)
        pipe = load_prior(a.out, dev, torch.float32)
        sanity_grid(pipe, a.grid, steps=25)
        print(f"grid written to {a.grid}", flush=True)
