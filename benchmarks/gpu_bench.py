r"""GPU benchmark at SD 2.1 scale: novel view, live preview, mode-5 inversion, each against a
reference-style path (the official code's structure) in the same run, with the physical floor.

    python -m benchmarks.gpu_bench --out benchmarks/gpu_bench.json --inversion-steps 200 \
        --eager-inversion-steps 50 --reference-inversion-steps 2 --compile reduce-overhead --profile inversion

(every section in 6–9 minutes on an H200: the device tool allows 10 per command).

Random weights with SD 2.1's exact configs (benchmarks/sd21.py) time exactly like the real model.
Reference-style = what ViewNeTI's code does: 480 sequential text-encoder passes per view, two UNet
calls per step (unbatched guidance), fp16 inference; fp32 training with TF32 off, 16 sequential
CLIP passes per micro-batch, 3 x 3 micro-batches per step, gradients into the frozen token table
and the frozen view-mapper. The fast path is the library's own (viewneti_backend.pipeline/training).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    command_line,
    count_flops,
    log,
    output_path,
    peak_memory_gib,
    sync,
    timed,
    timed_each,
    write_json,
)
from benchmarks.sd21 import sd21_base_model
from viewneti_backend.attention import pack_layer_encodings, pack_plain_encoding
from viewneti_backend.augment import AUGMENTATIONS, augment_batch
from viewneti_backend.camera_features import make_parameterization
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.config_cli import add_options
from viewneti_backend.data import Scene
from viewneti_backend.images import images_to_tensor
from viewneti_backend.pipeline import ViewNeTIPipeline, encode_conditions
from viewneti_backend.training import TrainConfig, Trainer, new_mapper

PEAK_TFLOPS = 800.0


def tune_inductor_for_diffusion() -> None:
    """The inductor options diffusers' speed-up guide sets for compiled UNets (process-wide).

    1x1 convolutions as matmuls, Triton kernels tuned by coordinate descent, no epilogue fusion. A
    trial only: at SD 2 scale the compile of one view resolution did not finish in 265 s (98 s
    without), and the two cheap options alone changed the view by ~1 % (RESULTS.md section 1).
    """
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.coordinate_descent_check_all_directions = True
    inductor.epilogue_fusion = False


def _category(name: str) -> str:
    """A kernel's category by its name. Inductor's kernels come first: their names list the ops they fused
    (``triton_per_fused_add_clone_convolution_div_native_group_norm_silu_11`` is a group norm, not a
    convolution; before session 20 such kernels were counted as convolutions)."""
    n = name.lower()
    if n.startswith("triton"):
        return "fused element-wise / norm (inductor)"
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention (SDPA)"
    if any(k in n for k in ("conv", "implicit_convolve", "cudnn", "winograd", "nchw", "nhwc")):
        return "convolution"
    if any(k in n for k in ("gemm", "cutlass", "nvjet", "xmma", "matmul", "sm90", "splitk", "cublas")):
        return "matmul (GEMM)"
    if "norm" in n:
        return "normalisation (eager)"
    if "memcpy" in n or "memset" in n:
        return "memcpy / memset"
    return "element-wise / other (eager)"


def _grad(p: torch.Tensor) -> torch.Tensor:
    if p.grad is None:
        raise RuntimeError("a parameter got no gradient from backward()")
    return p.grad


def profile_gpu(fn, label: str, top: int = 12) -> dict:
    """torch.profiler over fn(): GPU busy fraction, time per kernel category, top kernels."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall_ms = (time.perf_counter() - t0) * 1e3
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    attr = "self_device_time_total" if hasattr(kernels[0], "self_device_time_total") else "self_cuda_time_total"
    busy_ms = sum(getattr(e, attr) for e in kernels) / 1e3
    cats: dict[str, float] = {}
    for e in kernels:
        cats[_category(e.key)] = cats.get(_category(e.key), 0.0) + getattr(e, attr) / 1e3
    ranked = sorted(kernels, key=lambda e: -getattr(e, attr))[:top]
    out = {
        "wall_ms_under_profiler": wall_ms,
        "gpu_busy_ms": busy_ms,
        "gpu_busy_fraction": busy_ms / wall_ms,
        "kernel_launches": int(sum(e.count for e in kernels)),
        "by_category_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"name": e.key[:90], "ms": getattr(e, attr) / 1e3, "calls": e.count} for e in ranked],
        "top_kernels_by_category": {
            cat: [
                {"name": e.key[:120], "ms": getattr(e, attr) / 1e3, "calls": e.count}
                for e in sorted(kernels, key=lambda e: -getattr(e, attr))
                if _category(e.key) == cat
            ][:5]
            for cat in cats
        },
    }
    log(
        f"profile {label}: wall {wall_ms:.0f} ms, GPU busy {busy_ms:.0f} ms ({100 * busy_ms / wall_ms:.0f}%), "
        f"{out['kernel_launches']} kernels"
    )
    for k, v in out["by_category_ms"].items():
        log(f"    {k:40s} {v:8.1f} ms")
    for k in out["top_kernels"]:
        log(f"    {k['ms']:8.1f} ms  x{k['calls']:<5d} {k['name']}")
    return out


def text_encoder_probe(pipe: ViewNeTIPipeline, om, cam: Camera) -> dict:
    """The new-pose text phase alone (every (t, l) encoding of one camera), at the live preview's 8
    and the view's 30 steps, under each SDPA backend order: where do its milliseconds go?"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    orders = {
        "process order (cuDNN first on the compiled path)": None,
        "flash, efficient, math": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "efficient only": [SDPBackend.EFFICIENT_ATTENTION],
    }
    out: dict = {}
    for steps in (8, 30):
        timesteps = torch.linspace(999, 0, steps).long()

        def encode(timesteps=timesteps):
            return pipe.view_encodings([cam], om, timesteps, use_cache=False)

        rows = steps * pipe.base.num_layers
        flops = count_flops(encode)
        row: dict = {"rows": rows, "tflop": flops / 1e12}
        for label, order in orders.items():
            try:
                if order is None:
                    ms = timed(encode, repeats=10)[0] * 1e3
                else:
                    with sdpa_kernel(order, set_priority=True):
                        ms = timed(encode, repeats=10)[0] * 1e3
            except RuntimeError as exc:  # a backend that does not take these inputs
                row[label] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            row[label] = {"ms": ms, "tflop_per_s": flops / 1e12 / (ms / 1e3)}
            log(f"text encoder, {rows} rows, {label}: {ms:.1f} ms ({flops / 1e9 / ms:.0f} TFLOP/s)")
        row["profile"] = profile_gpu(encode, f"text encoder, {rows} rows")
        out[f"{steps}_steps"] = row
    return out


def first_use_probe(
    pipe: ViewNeTIPipeline,
    om,
    sizes: tuple[tuple[int, int], ...] = ((704, 512), (640, 448), (576, 448)),
    text_steps: tuple[int, int] = (29, 31),
    steps: int = 30,
) -> dict:
    """What the first call at a shape nobody used yet costs, against the next two: a server's first request
    at a new size or step count (cuBLAS heuristics, cuDNN attention plans, the UNet's CUDA-graph recording).

    Each SDPA order gets shapes of its own, so that every first call is a real first use: the text phase at
    ``text_steps[i]`` steps and an uncompiled render at ``sizes[i]`` under order i (the process order,
    cuDNN first where the compiled path set it; flash first); ``sizes[2]``: the process order with the
    uncompiled UNet run plain, without its CUDA graphs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from viewneti_backend.unet_graphs import GraphedUNet

    flash_first = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    orders = {"process order": None, "flash, efficient, math": flash_first}
    eager_unet = pipe.base.eager.get("unet")
    out: dict = {}

    def render(width: int, height: int):
        cam = Camera(orbit_pose(37.0, 20.0, 4.0), 40.0, width, height)
        pipe([cam], om, seed=0, steps=steps, guidance=7.5, use_cache=False, eager=True, output="latent")

    cam = Camera(orbit_pose(11.0, 20.0, 4.0), 40.0, *sizes[0])
    for order in orders.values():  # the renders' own text phase (``steps`` x layers rows): used before, not timed
        with sdpa_kernel(order, set_priority=True) if order is not None else contextlib.nullcontext():
            pipe.view_encodings([cam], om, torch.linspace(999, 0, steps).long(), use_cache=False)
    for i, (label, order) in enumerate(orders.items()):
        timesteps = torch.linspace(999, 0, text_steps[i]).long()
        with sdpa_kernel(order, set_priority=True) if order is not None else contextlib.nullcontext():
            text = timed_each(lambda _, t=timesteps: pipe.view_encodings([cam], om, t, use_cache=False), 3, warmup=0)
            views = timed_each(lambda _, size=sizes[i]: render(*size), 3, warmup=0)
        out[label] = {
            "text_rows": text_steps[i] * pipe.base.num_layers,
            "text_ms": [t * 1e3 for t in text],
            "render": f"{sizes[i][0]}x{sizes[i][1]}, {steps} steps, uncompiled",
            "render_ms": [t * 1e3 for t in views],
        }
        log(
            f"first use, {label}: text {[round(t * 1e3) for t in text]} ms, render {[round(t * 1e3) for t in views]} ms"
        )
    if isinstance(eager_unet, GraphedUNet):
        pipe.base.eager["unet"] = eager_unet.unet
        try:
            views = timed_each(lambda _: render(*sizes[2]), 3, warmup=0)
        finally:
            pipe.base.eager["unet"] = eager_unet
        out["process order, UNet without CUDA graphs"] = {
            "render": f"{sizes[2][0]}x{sizes[2][1]}, {steps} steps, uncompiled",
            "render_ms": [t * 1e3 for t in views],
        }
        log(f"first use, plain uncompiled UNet: render {[round(t * 1e3) for t in views]} ms")
    return out


def profile_host(fn, label: str, steps: int, top: int = 25) -> dict:
    """cProfile over fn() (``steps`` optimizer steps): where the host's time per step goes.

    When the GPU idles between kernels, the host is the bottleneck; this names the Python functions
    (ours, diffusers', torch.compile's CUDA-graph replay) that take the time.
    """
    import cProfile
    import pstats

    sync()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    sync()
    prof.disable()
    wall_ms = (time.perf_counter() - t0) * 1e3
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # pyright: ignore[reportAttributeAccessIssue]  typeshed omits pstats.Stats.stats
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}:{name}",
                "calls_per_step": nc / steps,
                "self_ms_per_step": tt * 1e3 / steps,
                "cumulative_ms_per_step": ct * 1e3 / steps,
            }
        )
    by_self = sorted(rows, key=lambda r: -r["self_ms_per_step"])[:top]
    by_cum = sorted(rows, key=lambda r: -r["cumulative_ms_per_step"])[:top]
    log(f"host profile {label}: {wall_ms / steps:.0f} ms/step under cProfile")
    for r in by_self:
        log(
            f"    self {r['self_ms_per_step']:7.2f} ms  cum {r['cumulative_ms_per_step']:7.2f} ms  "
            f"x{r['calls_per_step']:<7.1f} {r['function'][:100]}"
        )
    return {
        "wall_ms_per_step_under_cprofile": wall_ms / steps,
        "top_by_self_time": by_self,
        "top_by_cumulative_time": by_cum,
    }


def profile_timeline(fn, label: str, steps: int, trace_path: Path) -> dict:
    """torch.profiler trace of fn() (``steps`` steps), saved gzipped, and its idle-gap analysis (gpu_timeline.py)."""
    import gzip
    import shutil
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from benchmarks.gpu_timeline import analyse_gaps, load_trace, print_report

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        report = analyse_gaps(load_trace(raw), steps=steps)
        with open(raw, "rb") as src, gzip.open(trace_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    log(f"timeline {label} ({steps} steps; trace {trace_path.name}):")
    print_report(report, log=lambda m: log("    " + m))
    return report


def with_dtype(base, dtype):
    for m in (base.text_encoder, base.unet, base.vae):
        m.to(dtype)
    return dataclasses.replace(base, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Reference-style paths (sequential encodings, unbatched CFG)
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_view(base, view_mapper, object_mapper, camera_param, cam: Camera, steps=30, guidance=7.5, seed=0):
    scheduler = base.sampling_scheduler()
    scheduler.set_timesteps(steps, device=base.device)
    text = base.text
    ids = text.token_ids(f"{text.view_token}. A photo of a {text.object_token}")
    feat = camera_param.features([cam]).to(base.device)
    per_step = []
    for t in scheduler.timesteps:  # 30 x 16 = 480 sequential text-encoder passes
        ks, vs = [], []
        for layer in range(base.num_layers):
            k, v = encode_conditions(
                base, ids, t.view(1), torch.tensor([layer], device=base.device), object_mapper, view_mapper, feat
            )
            ks.append(k)
            vs.append(v)
        per_step.append(pack_layer_encodings(torch.stack(ks, 1), torch.stack(vs, 1)).to(base.dtype))
    uncond = pack_plain_encoding(text.encode_plain([""]), base.num_layers).to(base.dtype)
    pipe = ViewNeTIPipeline(base, None)
    latents = pipe.initial_latents(seed, 1, cam.height, cam.width, float(scheduler.init_noise_sigma))
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(latents, t)
        e_u = base.unet(x, t, encoder_hidden_states=uncond, return_dict=False)[0]
        e_c = base.unet(x, t, encoder_hidden_states=per_step[i], return_dict=False)[0]
        latents = scheduler.step(e_u + guidance * (e_c - e_u), t, latents, return_dict=False)[0]
    return pipe.decode(latents)[0]


def reference_loss(base, object_mapper, view_mapper, latents, noise, t, feats, noise_scheduler):
    """One micro-batch the reference way: 16 sequential CLIP passes (one per layer), then the UNet."""
    text = base.text
    b, n_l = latents.shape[0], base.num_layers
    ids = text.token_ids(f"{text.view_token}. A photo of a {text.object_token}").expand(b, -1)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    target = noise_scheduler.get_velocity(latents, noise, t)
    ks, vs = [], []
    for layer in range(n_l):
        l = torch.full((b,), layer, device=base.device)
        k, v = encode_conditions(base, ids, t, l, object_mapper, view_mapper, feats)
        ks.append(k)
        vs.append(v)
    ehs = pack_layer_encodings(torch.stack(ks, 1), torch.stack(vs, 1))
    pred = base.unet(noisy.to(base.dtype), t, encoder_hidden_states=ehs.to(base.dtype), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


def batched_loss(base, object_mapper, view_mapper, latents, noise, t, feats, noise_scheduler):
    """The same micro-batch the library's way: all (sample, layer) encodings in one CLIP call."""
    text = base.text
    b, n_l = latents.shape[0], base.num_layers
    ids = text.token_ids(f"{text.view_token}. A photo of a {text.object_token}").expand(b * n_l, -1)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    target = noise_scheduler.get_velocity(latents, noise, t)
    t_rep, l_rep = t.repeat_interleave(n_l), torch.arange(n_l, device=base.device).repeat(b)
    k, v = encode_conditions(base, ids, t_rep, l_rep, object_mapper, view_mapper, feats.repeat_interleave(n_l, 0))
    s, d = k.shape[1:]
    ehs = pack_layer_encodings(k.view(b, n_l, s, d), v.view(b, n_l, s, d))
    pred = base.unet(noisy.to(base.dtype), t, encoder_hidden_states=ehs.to(base.dtype), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


def reference_inversion_steps(base, view_mapper, object_mapper, camera_param, image, cam, n_steps, seed=0):
    """n optimizer steps of the reference: fp32, 3 micro-batches of 3, sequential CLIP, wasted grads."""
    table = base.text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)  # the reference keeps the table trainable and restores it after each step
    view_mapper.requires_grad_(True)  # frozen by optimizer exclusion only
    opt = torch.optim.AdamW(object_mapper.parameters(), lr=9e-3, weight_decay=1e-2)
    saved = table.detach().clone()
    gen = torch.Generator().manual_seed(seed)
    ns = base.noise_scheduler()
    img = images_to_tensor([image], cam.width, cam.height).to(base.device)
    feats = camera_param.features([cam]).to(base.device).expand(3, -1)
    for _ in range(n_steps):
        for _ in range(3):
            x = augment_batch(img.expand(3, -1, -1, -1), AUGMENTATIONS[7], gen)
            with torch.no_grad():
                lat = base.vae.encode(x.to(base.dtype)).latent_dist.sample() * base.scaling_factor
            noise = torch.randn(lat.shape, generator=gen).to(base.device)
            t = torch.randint(0, 1000, (3,), generator=gen).to(base.device)
            loss = reference_loss(base, object_mapper, view_mapper, lat.float(), noise, t, feats, ns) / 3
            loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            table.copy_(saved)
        table.grad = None
    table.requires_grad_(False)
    view_mapper.requires_grad_(False)


def time_inversion(base, vm, scene, width, height, steps, warmup_steps=10, augmentation_pool=0):
    """Mode-5 optimizer steps through the library's Trainer (as Engine.invert runs them)."""
    cfg = TrainConfig(
        mode=5,
        steps=warmup_steps,
        batch_size=3,
        grad_accum=3,
        width=width,
        height=height,
        augmentation=7,
        augmentation_pool=augmentation_pool,
    )
    trainer = Trainer(cfg, base, [scene], view_mapper=vm)
    t_a = time.perf_counter()
    trainer.train(progress=False)  # warm-up (and compilation, if the base model is compiled)
    sync()
    warm_s = time.perf_counter() - t_a
    trainer.config.steps = warmup_steps + steps
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t_a = time.perf_counter()
    trainer.train(progress=False)
    sync()
    per_step = (time.perf_counter() - t_a) / steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return trainer, per_step, mem, warm_s


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/gpu_bench.json")
    ap.add_argument(
        "--inversion-steps", type=int, default=200, help="fast-path optimizer steps to time (projected to 3000)"
    )
    ap.add_argument("--reference-inversion-steps", type=int, default=10)
    ap.add_argument(
        "--eager-inversion-steps",
        type=int,
        default=0,
        help="optimizer steps to time on the eager fast path (default: --inversion-steps)",
    )
    ap.add_argument("--live-steps", type=int, default=8, help="DPM-Solver++ steps of the add-on's live preview")
    ap.add_argument(
        "--compile", default="", help="also time a torch.compile'd UNet in this mode (e.g. reduce-overhead)"
    )
    ap.add_argument(
        "--inductor-tuning",
        action="store_true",
        help="a trial: compile with the inductor options diffusers recommends (tune_inductor_for_diffusion); "
        "the library does not set them (RESULTS.md section 1)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny widths and sizes on any device: checks the script, times nothing real",
    )
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: equivalence,view,live,inversion")
    ap.add_argument(
        "--profile",
        nargs="?",
        const="view,inversion",
        default="",
        help="torch.profiler breakdown of these sections: view, inversion (both compiled), inversion-eager; "
        "text: the new-pose text phase alone at 8 and 30 steps under each SDPA backend order; "
        "first-use: the first three calls at shapes not used before (text phase, uncompiled render) per SDPA "
        "order, and without the uncompiled UNet's CUDA graphs; "
        "inversion-host: cProfile of 20 compiled inversion steps; inversion-timeline: the idle gaps between "
        "kernels of 3 compiled steps (gpu_timeline.py), trace saved beside --out (default with no value: view,inversion)",
    )
    pool = ap.add_argument_group(
        "training option", "when set, the compiled inversion is timed once more with this TrainConfig option"
    )
    add_options(pool, TrainConfig, only=["augmentation_pool"])
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    skip = set(args.skip.split(","))
    profiles = set(args.profile.split(","))
    if not args.smoke:
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (use --smoke to check the script on a CPU)"
    W, H, LW, IW, IH = (768, 576, 512, 512, 384) if not args.smoke else (128, 96, 64, 64, 48)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "peak_tflops_assumed": PEAK_TFLOPS,
        "command": command_line(),
    }
    t0 = time.perf_counter()
    base = sd21_base_model(dev.type, torch.float32, tiny=args.smoke)
    report["build_s"] = time.perf_counter() - t0
    cams_all = [Camera(orbit_pose(a, e, 4.0), 40.0, W, H) for a in range(0, 360, 30) for e in (10, 30, 50)]
    camera_param = make_parameterization("anchor-pose-13d").fit(cams_all)
    torch.manual_seed(1)
    vm = new_mapper(base, "view", camera_param).to(dev).eval().requires_grad_(False)
    om = new_mapper(base, "object").to(dev).eval().requires_grad_(False)
    cam = Camera(orbit_pose(35.0, 25.0, 4.0), 40.0, W, H)
    log(f"device: {report['device']}, torch {torch.__version__}, built SD 2.1 random in {report['build_s']:.1f}s")
    results: dict = {}
    report["results"] = results
    out = output_path(args.out)

    def save() -> None:
        """Rewrite the JSON after every section: a run stopped at the device's time limit keeps its numbers."""
        write_json(out, report)

    # ---- 5. equivalence in fp32 (same weights, same seed) --------------------------------------------
    if "equivalence" not in skip:
        pipe32 = ViewNeTIPipeline(base, vm)
        small = cam.with_size(IW, IH)
        fast_img = np.asarray(pipe32([small], om, seed=0, steps=30, guidance=7.5)[0], dtype=np.float64)
        ref_img = np.asarray(reference_view(base, vm, om, camera_param, small, 30, 7.5, 0), dtype=np.float64)
        diff = np.abs(fast_img - ref_img)
        mse = float(((fast_img - ref_img) / 255.0).__pow__(2).mean())
        report["equivalence_image_fp32"] = {
            "max_abs_diff_8bit": float(diff.max()),
            "mean_abs_diff_8bit": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else -10 * math.log10(mse),
        }
        gen = torch.Generator().manual_seed(0)
        ns = base.noise_scheduler()
        lat = torch.randn(3, 4, IH // 8, IW // 8, generator=gen).to(dev)
        noise = torch.randn(3, 4, IH // 8, IW // 8, generator=gen).to(dev)
        t = torch.tensor([10, 500, 990], device=dev)
        feats = camera_param.features([small] * 3).to(dev)
        grads = []
        om.requires_grad_(True)
        for fn in (reference_loss, batched_loss):
            om.zero_grad()
            fn(base, om, vm, lat, noise, t, feats, ns).backward()
            grads.append(torch.cat([_grad(p).flatten() for p in om.parameters()]).clone())
        om.requires_grad_(False)
        rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
        report["equivalence_gradient_fp32"] = {"relative_l2_error": rel}
        log(
            f"equivalence fp32: image max|diff| {diff.max():.1f}/255 (PSNR {report['equivalence_image_fp32']['psnr_db']:.1f} dB); "
            f"gradient rel. error {rel:.2e}"
        )
        del pipe32

    save()

    # ---- 1. view 768x576 -------------------------------------------------------------------------------
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base16 = with_dtype(base, torch.bfloat16)
    base16.unet.to(memory_format=torch.channels_last)
    pipe = ViewNeTIPipeline(base16, vm)
    if "equivalence" not in skip:  # what bf16 frozen parts change in the image (vs the fp32 fast path)
        bf_img = np.asarray(pipe([cam.with_size(IW, IH)], om, seed=0, steps=30, guidance=7.5)[0], dtype=np.float64)
        mse = float((((bf_img - fast_img) / 255.0) ** 2).mean())
        report["bf16_vs_fp32_image"] = {
            "max_abs_diff_8bit": float(np.abs(bf_img - fast_img).max()),
            "mean_abs_diff_8bit": float(np.abs(bf_img - fast_img).mean()),
            "psnr_db": float("inf") if mse == 0 else -10 * math.log10(mse),
        }
        log(
            f"bf16 vs fp32 (fast path, 512x384, 30 steps): PSNR {report['bf16_vs_fp32_image']['psnr_db']:.1f} dB, "
            f"mean |diff| {report['bf16_vs_fp32_image']['mean_abs_diff_8bit']:.2f}/255"
        )

    if "equivalence" not in skip and dev.type == "cuda":  # the compiled path's SDPA order (cuDNN first) vs flash first
        from torch.nn.attention import SDPBackend, sdpa_kernel

        cudnn_first = [
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH,
        ]

        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(2, 4, H // 8, W // 8, device=dev, generator=g, dtype=torch.bfloat16)
        ehs = torch.randn(
            2, 2 * base16.num_layers * 77, base16.text.embedding_dim, device=dev, generator=g, dtype=torch.bfloat16
        )
        tt = torch.tensor([500, 500], device=dev)
        with torch.no_grad():
            with sdpa_kernel(cudnn_first, set_priority=True):
                library = base16.unet(x, tt, encoder_hidden_states=ehs, return_dict=False)[0].float()
                order = [int(b) for b in torch._C._get_sdp_priority_order()]
            with sdpa_kernel(
                [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True
            ):
                flash = base16.unet(x, tt, encoder_hidden_states=ehs, return_dict=False)[0].float()
        report["sdpa_library_order_vs_flash_unet_bf16"] = {
            "sdpa_priority_order": order,
            "relative_l2_error": float((library - flash).norm() / flash.norm()),
            "max_abs_diff": float((library - flash).abs().max()),
            "output_abs_mean": float(flash.abs().mean()),
        }
        log(
            f"UNet bf16 at {W}x{H}, cuDNN attention first (the compiled path's order) vs flash first: {report['sdpa_library_order_vs_flash_unet_bf16']}"
        )

    def fast_new_pose(c=cam, steps=30):
        pipe.clear_cache()
        return pipe([c], om, seed=0, steps=steps, guidance=7.5, object_key="obj")

    def fast_cached(c=cam, steps=30):
        return pipe([c], om, seed=1, steps=steps, guidance=7.5, object_key="obj")

    if "view" not in skip:
        flops = count_flops(lambda: fast_new_pose())
        t_new, _ = timed(fast_new_pose, repeats=3)
        t_cached, _ = timed(fast_cached, repeats=3)
        mem = peak_memory_gib(fast_new_pose)
        timings = {}
        pipe([cam], om, seed=0, steps=30, guidance=7.5, timings=timings)
        results[f"view_{W}x{H}_30steps"] = {
            "fast_new_pose_ms": t_new * 1e3,
            "fast_cached_pose_ms": t_cached * 1e3,
            "phases_ms": timings,
            "tflop": flops / 1e12,
            "floor_ms": flops / (PEAK_TFLOPS * 1e12) * 1e3,
            "peak_mem_gib": mem,
        }
        log(
            f"view fast: new pose {t_new * 1e3:.0f} ms, cached {t_cached * 1e3:.0f} ms, phases {timings}, "
            f"{flops / 1e12:.1f} TFLOP (floor {flops / (PEAK_TFLOPS * 1e9):.0f} ms), peak {mem:.1f} GiB"
        )
        base_ref = with_dtype(base16, torch.float16)
        mem_ref = peak_memory_gib(lambda: reference_view(base_ref, vm, om, camera_param, cam))  # also the warm-up
        t_ref, _ = timed(lambda: reference_view(base_ref, vm, om, camera_param, cam), repeats=2, warmup=0)
        results[f"view_{W}x{H}_30steps"].update(
            reference_ms=t_ref * 1e3,
            reference_peak_mem_gib=mem_ref,
            speedup_new_pose=t_ref / t_new,
            speedup_cached=t_ref / t_cached,
        )
        log(
            f"view reference: {t_ref * 1e3:.0f} ms -> speed-up x{t_ref / t_new:.1f} (new pose), x{t_ref / t_cached:.1f} (cached)"
        )
        base16 = with_dtype(base_ref, torch.bfloat16)
        pipe = ViewNeTIPipeline(base16, vm)

    save()

    # ---- 2. live preview 512x512 ---------------------------------------------------------------------------
    if "live" not in skip:
        live = Camera(orbit_pose(10.0, 20.0, 4.0), 40.0, LW, LW)
        for steps in (args.live_steps,):
            fl = count_flops(lambda steps=steps: fast_new_pose(live, steps))
            t_new, _ = timed(lambda steps=steps: fast_new_pose(live, steps), repeats=5)
            t_c, _ = timed(lambda steps=steps: fast_cached(live, steps), repeats=5)
            mem = peak_memory_gib(lambda steps=steps: fast_new_pose(live, steps))
            results[f"live_{LW}x{LW}_{steps}steps"] = {
                "fast_new_pose_ms": t_new * 1e3,
                "fast_cached_pose_ms": t_c * 1e3,
                "tflop": fl / 1e12,
                "floor_ms": fl / (PEAK_TFLOPS * 1e12) * 1e3,
                "peak_mem_gib": mem,
            }
            log(
                f"live 512x512 {steps} steps: new pose {t_new * 1e3:.0f} ms, cached {t_c * 1e3:.0f} ms, floor {fl / (PEAK_TFLOPS * 1e9):.0f} ms"
            )

    save()

    # ---- 3. inversion (mode 5, 9 images/step at 512x384, augmentation 7) ------------------------------------
    if "inversion" not in skip:
        from PIL import Image

        ref_cam = Camera(orbit_pose(25.0, 20.0, 4.0), 40.0, IW, IH)
        image = Image.fromarray((np.random.default_rng(0).random((IH, IW, 3)) * 255).astype(np.uint8))
        scene = Scene("bench", [image], [ref_cam])
        # The engine's own configuration: the paper's 3 x 3 micro-batches, fused into one 9-image pass.
        trainer, per_step, mem, warm_s = time_inversion(
            base16, vm, scene, IW, IH, args.eager_inversion_steps or args.inversion_steps
        )
        x = images_to_tensor([image] * 9, IW, IH).to(dev)
        lat = torch.randn(9, 4, IH // 8, IW // 8, device=dev)

        def one_fast_step():
            trainer.optimizer.zero_grad()
            with trainer.accelerator.autocast():
                loss = batched_loss(
                    base16,
                    trainer.object_mappers[0],
                    vm,
                    lat,
                    torch.randn_like(lat),
                    torch.randint(0, 1000, (9,), device=dev),
                    camera_param.features([ref_cam] * 9).to(dev),
                    trainer.noise_scheduler,
                )
            loss.backward()
            base16.vae.encode(x.to(base16.dtype))

        fl = count_flops(one_fast_step)
        res = {
            "fast_step_ms": per_step * 1e3,
            "fast_projected_3000_steps_min": per_step * 3000 / 60,
            "tflop_per_step": fl / 1e12,
            "floor_step_ms": fl / (PEAK_TFLOPS * 1e12) * 1e3,
            "peak_mem_gib": mem,
            "final_loss": trainer.losses[-1],
        }
        if "inversion-eager" in profiles and dev.type == "cuda":
            trainer.config.steps = trainer.step + 3
            res["profile_3_steps"] = profile_gpu(lambda: trainer.train(progress=False), "inversion eager, 3 steps")
        log(
            f"inversion fast: {per_step * 1e3:.0f} ms/step -> {per_step * 3000 / 60:.1f} min per 3000 steps; "
            f"{fl / 1e12:.1f} TFLOP/step (floor {fl / (PEAK_TFLOPS * 1e9):.0f} ms), peak {mem:.1f} GiB"
        )
        if dev.type == "cuda":  # the compiled path puts cuDNN attention first: what that does to the eager step
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(
                [
                    SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH,
                ],
                set_priority=True,
            ):
                _, cudnn_step, _, _ = time_inversion(
                    base16, vm, scene, IW, IH, args.eager_inversion_steps or args.inversion_steps
                )
            res["fast_step_ms_cudnn_attention_first"] = cudnn_step * 1e3
            log(f"inversion fast with cuDNN attention first: {cudnn_step * 1e3:.0f} ms/step")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        base32 = with_dtype(base16, torch.float32)
        om_ref = new_mapper(base32, "object").to(dev)
        reference_inversion_steps(base32, vm, om_ref, camera_param, image, ref_cam, 1)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_a = time.perf_counter()
        reference_inversion_steps(base32, vm, om_ref, camera_param, image, ref_cam, args.reference_inversion_steps)
        sync()
        ref_step = (time.perf_counter() - t_a) / args.reference_inversion_steps
        res.update(
            reference_step_ms=ref_step * 1e3,
            reference_projected_3000_steps_min=ref_step * 3000 / 60,
            reference_peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan"),
            speedup_per_step=ref_step / per_step,
        )
        results["inversion_mode5_9x512x384"] = res
        log(
            f"inversion reference: {ref_step * 1e3:.0f} ms/step -> {ref_step * 3000 / 60:.1f} min; speed-up x{ref_step / per_step:.1f}"
        )

    save()

    # ---- torch.compile (CUDA graphs) of the UNet and VAE: same maths, measured on the same work ----------------
    if args.compile and (dev.type == "cuda" or args.smoke):
        from viewneti_backend.base_model import compile_base_model

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        base16 = with_dtype(base16, torch.bfloat16)
        if args.inductor_tuning:
            tune_inductor_for_diffusion()
        compile_base_model(base16, args.compile)  # exactly what Engine.load does on CUDA
        pipe = ViewNeTIPipeline(base16, vm)
        entry = {"mode": args.compile, "inductor_tuning": args.inductor_tuning}
        results["compiled"] = entry
        if "view" not in skip:
            t_a = time.perf_counter()
            fast_cached()  # compile + warm-up at 768x576
            fast_cached()
            warm_s = time.perf_counter() - t_a
            t_new, _ = timed(fast_new_pose, repeats=5, warmup=0)
            t_c, _ = timed(fast_cached, repeats=5, warmup=0)
            phases: dict = {}
            pipe([cam], om, seed=2, steps=30, guidance=7.5, object_key="obj", timings=phases)
            entry.update(
                {
                    "warmup_s": warm_s,
                    "view_new_pose_ms": t_new * 1e3,
                    "view_cached_ms": t_c * 1e3,
                    "view_cached_phases_ms": phases,
                    "view_peak_mem_gib": peak_memory_gib(fast_new_pose),
                }
            )
            log(
                f"compiled ({args.compile}): warm-up {warm_s:.0f}s; view new {t_new * 1e3:.0f} ms, cached {t_c * 1e3:.0f} ms "
                f"(phases {phases})"
            )
            save()
            if "view" in profiles and dev.type == "cuda":
                entry["view_cached_profile"] = profile_gpu(fast_cached, "view 768x576 compiled, cached pose")
                entry["view_new_pose_profile"] = profile_gpu(fast_new_pose, "view 768x576 compiled, new pose")
        if "live" not in skip:
            live = Camera(orbit_pose(10.0, 20.0, 4.0), 40.0, LW, LW)
            fast_cached(live, args.live_steps)
            fast_cached(live, args.live_steps)
            entry["live_new_pose_ms"] = (
                timed(lambda: fast_new_pose(live, args.live_steps), repeats=5, warmup=0)[0] * 1e3
            )
            entry["live_cached_ms"] = timed(lambda: fast_cached(live, args.live_steps), repeats=5, warmup=0)[0] * 1e3
            log(
                f"compiled live {args.live_steps} steps: new {entry['live_new_pose_ms']:.0f} ms, cached {entry['live_cached_ms']:.0f} ms"
            )
            save()
        if "text" in profiles and dev.type == "cuda":
            entry["text_encoder"] = text_encoder_probe(pipe, om, cam)
            save()
        if "first-use" in profiles and dev.type == "cuda":
            entry["first_use"] = first_use_probe(pipe, om)
            save()
        if "inversion" not in skip:
            ref_ms = results["inversion_mode5_9x512x384"]["reference_step_ms"]
            label = "UNet + VAE + CLIP blocks compiled"
            try:
                trainer, per_step, mem, warm_s = time_inversion(base16, vm, scene, IW, IH, args.inversion_steps)
                entry.update(
                    {
                        "inversion_step_ms": per_step * 1e3,
                        "inversion_projected_3000_steps_min": per_step * 3000 / 60,
                        "inversion_warmup_s": warm_s,
                        "inversion_peak_mem_gib": mem,
                        "inversion_speedup_per_step": ref_ms / (per_step * 1e3),
                    }
                )
                log(
                    f"compiled inversion ({label}): {per_step * 1e3:.0f} ms/step -> {per_step * 3000 / 60:.1f} min per 3000 steps "
                    f"(compile + warm-up {warm_s:.0f}s), peak {mem:.1f} GiB, x{ref_ms / (per_step * 1e3):.1f} vs reference"
                )
                save()
                if "inversion" in profiles and dev.type == "cuda":
                    trainer.config.steps = trainer.step + 3
                    entry["inversion_profile_3_steps"] = profile_gpu(
                        lambda: trainer.train(progress=False), f"inversion, {label}, 3 steps"
                    )
                if "inversion-timeline" in profiles and dev.type == "cuda":
                    trainer.config.steps = trainer.step + 3
                    entry["inversion_timeline_3_steps"] = profile_timeline(
                        lambda: trainer.train(progress=False),
                        f"inversion, {label}",
                        3,
                        out.with_name(out.stem + "_inversion_trace.json.gz"),
                    )
                    save()
                if args.augmentation_pool:
                    _, pool_step, pool_mem, pool_warm = time_inversion(
                        base16, vm, scene, IW, IH, args.inversion_steps, augmentation_pool=args.augmentation_pool
                    )
                    entry.update(
                        {
                            "inversion_pool_size": args.augmentation_pool,
                            "inversion_pool_step_ms": pool_step * 1e3,
                            "inversion_pool_projected_3000_steps_min": pool_step * 3000 / 60,
                            "inversion_pool_setup_s": pool_warm,
                            "inversion_pool_peak_mem_gib": pool_mem,
                        }
                    )
                    log(
                        f"compiled inversion with an augmentation pool of {args.augmentation_pool} (changes the maths): "
                        f"{pool_step * 1e3:.0f} ms/step -> {pool_step * 3000 / 60:.1f} min per 3000 steps "
                        f"(pool + warm-up {pool_warm:.0f}s), peak {pool_mem:.1f} GiB"
                    )
                    save()
                if "inversion-host" in profiles:
                    trainer.config.steps = trainer.step + 20
                    entry["inversion_host_profile_20_steps"] = profile_host(
                        lambda: trainer.train(progress=False), f"inversion, {label}", 20
                    )
            except Exception as exc:  # report, keep the rest of the run
                entry["inversion_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"compiled inversion ({label}) FAILED: {entry['inversion_error']}")

    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
