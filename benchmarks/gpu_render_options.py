"""Where a compiled render's GPU time goes, and what FP8 GEMMs would change (a probe for issue 19).

    python -m benchmarks.gpu_render_options --out benchmarks/gpu_render_options.json

The view (768x576, 30 steps) and the live preview (512x512, 8 steps) are rendered as the server does
(SD 2.1-sized random weights, bf16, ``compile_base_model``: CUDA graphs, fused q/k/v and time-embedding
projections, cuDNN attention first; keys/values projected before the loop), then:

* ``timeline``: a profiler trace of one new-pose render of each, split into idle gaps between kernels
  (``gpu_timeline.py``): is the GPU waiting for the host anywhere (syncs between phases, the
  scheduler, the mappers), or is a render its kernels? Plus the kernels by category of a cached view.
* ``fp8-unet``: the same renders with every linear layer of the UNet's transformer blocks computing in
  FP8 (e4m3, per-row activation scales taken on the fly, per-output-channel weight scales; the
  convolutions stay bf16), compiled the same way: time of the denoise phase, and how far its latents
  and image move from the bf16 render's. This **changes the maths**; it is measured to decide whether
  an opt-in FP8 mode is worth building, not used by the library.
* ``fp8-text``: the new-pose text phase (480 and 128 prompts) with the CLIP blocks eager bf16,
  compiled bf16, and compiled with FP8 linears; the keys' relative error against bf16.

* ``nchw``: the same renders with the UNet and the VAE decoder in the default (NCHW) memory layout
  instead of channels-last, compiled the same way (channels-last had been chosen on eager timings).
* ``inductor-options``: the shipped build (CUDA graphs) with inductor options added
  (``--inductor-options``, e.g. ``coordinate_descent_tuning=True``). A cached view spends 85 ms in
  inductor's fused kernels (session 21, H100), 47 ms of it in the UNet's group norms over channels-last
  tensors: the largest (``triton_per_fused_..._native_group_norm_silu_11``, 4 calls a step) takes 64 us a
  call, where reading and writing its tensors (4.4 M bf16 values, two in and two out) takes about 12 us at
  the H100's bandwidth. ``triton.persistent_reductions=False`` made the view slower (session 21).
* ``native-group-norm``: the shipped build with inductor's own group norm instead of the split-sums form
  (``viewneti_backend.group_norm``; the same function, other float32 rounding) that ships since session 22
  (measured then as ``split-group-norm`` against this build as the shipped one: view 359.9 / 313.6
  against 366.3 / 318.7 ms on an H200).
* ``keys-in-loop``: the shipped build with each render's cross-attention keys and values projected inside
  every step (``VIEWNETI_KEYS_AHEAD=0``, ``viewneti_backend.attention``) instead of for all its steps
  before the denoising loop (shipped since session 29, measured then as ``keys-ahead`` against this build
  as the shipped one: H100, view 370.2 / 323.2 against 381.8 / 332.9 ms, live 75.4 / 62.1 against
  77.2 / 63.2 ms): 32 GEMMs of 4-6 us a step (2 x 77 rows each) instead of one GEMM per layer on all the
  steps' rows (RESULTS.md section 1, "Tiny GEMMs").
* ``separate-time-projections``: the shipped build with each resnet projecting the time embedding itself,
  ~22 GEMMs of 4-6 us on 2 rows a step, instead of ``viewneti_backend.time_projections``' one GEMM (shipped
  since session 29, measured then as ``fused-time-projections`` against this build: H100, view 371.0 /
  322.0 against 381.1 / 331.0 ms, live 75.6 / 61.7 against 77.2 / 63.0 ms).
* ``small-gemms``: both of the above at once: the build that shipped before session 29.
* ``max-autotune``: the UNet and the VAE decoder compiled in ``max-autotune`` mode (inductor times Triton
  GEMM/convolution templates against cuBLAS/cuDNN for every shape and keeps the fastest, and tries more
  configurations of its own kernels; CUDA graphs as before). Session 20 (H100): 9 shapes were tuned in
  the ~195 s left of a 10-minute call (5-9 s of timing each, plus compiling), and at 768x576 the UNet
  has 71 distinct GEMM/convolution shapes and the decoder 16: a build needs a call of its own.

  Each runs one job at a time (``--jobs``): compile time, render times against the shipped build
  in the same run, and how far the latents and image move from its (other kernels, same maths: rounding).

* ``cancel``: a new-pose view stopped ``--cancel-after-ms`` into it (as the server cuts a refinement when
  a live request of the same session arrives), then a new-pose live render: the time from the stop to
  that live frame, and the stoppable renders' own times, with the host at most
  ``step_pacer.STEPS_AHEAD`` (2) steps ahead of the GPU against unbounded (the code before session 19),
  alternating.
* ``text-overlap``: how much of a new pose's text phase the GPU could run alongside a render's denoising
  (maths unchanged; the question before moving a render's text encoding for later steps onto a second
  CUDA stream). The text phase of another pose (mappers, injection, the text encoder at steps x layers
  prompts) is queued on a side stream, then a same-pose render on the main one, against the two one
  after the other. In a session 21 trace of a view, 133 ms of the UNet's 364 ms of kernels ran fewer
  blocks than the GPU has SMs (convolutions at 0.7-0.9 of a wave): room another stream's kernels could fill.
* ``sequence-batch``: the view at each of ``--sequence-batches`` frames per UNet call (distinct poses,
  encodings cached, as a sequence's frames after its one text-encoder call): compile time, time per
  frame and peak GPU memory, to choose the engine's ``sequence_batch`` (4 from session 12, 8 since session
  23 on this probe's H100 numbers).

Alone (no model compiled, a minute or less):

* ``group-norm``: SiLU(GroupNorm(x)) at the UNet's and the decoder's shapes of a 768x576 view, eager and
  compiled under several inductor option sets, and the same maths with its statistics written as two
  plain sums, channels-last and contiguous: kernel time (CUDA-graph replay) and bandwidth
  (``--group-norm-builds`` picks some of the builds; session 28 timed a Triton kernel's statistics
  here, commit 44d14a1);
* ``text-attention``: one CLIP block's attention at the text phase's shapes, the explicit additive causal
  mask against ``is_causal``, under each SDPA backend;
* ``text-phase``: the whole new-pose text phase with either mask, under the server's SDPA order.

``--smoke`` runs tiny widths on any device to check the script (times nothing real). Results and the
commands as run: RESULTS.md §1 and the log, sessions 18 to 22.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import command_line, int_list, log, machine, output_path, sync, timed, write_json
from benchmarks.gpu_bench import profile_gpu, profile_timeline
from benchmarks.sd21 import sd21_base_model
from viewneti_backend import step_pacer
from viewneti_backend.base_model import compile_base_model
from viewneti_backend.camera_features import make_parameterization
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.errors import Cancelled
from viewneti_backend.group_norm import split_stats_group_norm, use_native_group_norm
from viewneti_backend.mapper import NeTIMapper
from viewneti_backend.pipeline import ViewNeTIPipeline
from viewneti_backend.text_conditioning import _text_transformer
from viewneti_backend.time_projections import unfuse_time_embedding_projections
from viewneti_backend.training import new_mapper

E4M3_MAX = 448.0


class Fp8Linear(nn.Module):
    """``nn.Linear`` computed as an FP8 (e4m3) GEMM: weights quantised once per output channel,
    activations per row on every call; output and bias in the activation's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / E4M3_MAX  # [out, 1]
        self.weight_fp8: torch.Tensor
        self.weight_scale: torch.Tensor
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias: torch.Tensor | None = linear.bias
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX  # [M, 1]
        x8 = (rows.float() / scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(  # pyright: ignore[reportPrivateImportUsage]  the FP8 GEMM has no public name yet
            x8,
            self.weight_fp8.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=None if self.bias is None else self.bias.to(x.dtype),
            out_dtype=x.dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)


def to_fp8_linears(module: nn.Module, inside: tuple[type, ...] | None = None) -> int:
    """Swap the ``nn.Linear`` layers of ``module`` (only those under a module of a type in ``inside``,
    if given) whose widths FP8 GEMMs take (multiples of 16) for :class:`Fp8Linear`; returns how many."""
    swapped = 0
    scopes = [m for m in module.modules() if inside is None or isinstance(m, inside)]
    for scope in scopes:
        for name, child in list(scope.named_modules()):
            if not name or not isinstance(child, nn.Linear) or child.in_features % 16 or child.out_features % 16:
                continue
            parent = scope.get_submodule(name.rsplit(".", 1)[0]) if "." in name else scope
            setattr(parent, name.rsplit(".", 1)[-1], Fp8Linear(child))
            swapped += 1
    return swapped


def parse_inductor_options(text: str) -> dict[str, Any]:
    """'a.b=False,c=3' -> {'a.b': False, 'c': 3}: inductor config values as torch.compile(options=...) takes them."""
    import torch._inductor.config as inductor_config

    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--inductor-options: '{item}' is not KEY=VALUE")
        if name not in inductor_config.get_config_copy():
            raise SystemExit(f"--inductor-options: inductor has no option '{name}'")
        value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(raw)
        options[name] = value
    return options


def _images_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# What --sections takes: the ones after the bf16 renders, then those that need no render (alone).
SECTIONS = (
    "timeline", "fp8-unet", "fp8-text", "nchw", "inductor-options", "max-autotune", "native-group-norm",
    "keys-in-loop", "separate-time-projections", "small-gemms", "cancel", "text-overlap", "sequence-batch",
    "text-attention", "text-phase", "group-norm",
)  # fmt: skip


def text_overlap_probe(
    pipe: ViewNeTIPipeline,
    om: NeTIMapper,
    cam: Camera,
    other: Camera,
    steps: int,
    repeats: int,
    render: Callable[[Camera, int, bool], object],
) -> dict[str, float]:
    """Median times (ms): ``other``'s text phase alone, ``cam``'s same-pose render alone, and the text phase
    queued on a side CUDA stream just before the render on the main one (on a CPU, one after the other:
    the code path only). ``saved_ms``: what overlapping them gains over running them in turn."""
    timesteps = pipe.scheduler(steps).timesteps
    cuda = pipe.base.device.type == "cuda"

    def render_same_pose() -> None:
        render(cam, steps, False)

    side = torch.cuda.Stream(pipe.base.device) if cuda else None

    def text_phase() -> None:  # not cached: every call computes it, and the render's cache entry stays
        pipe.view_encodings([other], om, timesteps, use_cache=False)

    def overlapped() -> None:
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(pipe.base.device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            text_phase()
        render_same_pose()  # the render's encodings are cached: its text phase is empty
        sync()

    row = {
        "text_phase_ms": timed(text_phase, repeats=repeats)[0] * 1e3,
        "same_pose_ms": timed(render_same_pose, repeats=repeats)[0] * 1e3,  # its warm-up call fills the cache
    }
    row["serial_ms"] = row["text_phase_ms"] + row["same_pose_ms"]
    row["overlapped_ms"] = timed(overlapped, repeats=repeats)[0] * 1e3
    row["saved_ms"] = row["serial_ms"] - row["overlapped_ms"]
    return row


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/gpu_render_options.json")
    ap.add_argument(
        "--sections",
        default="timeline,fp8-unet,fp8-text",
        help=f"comma-separated, from: {', '.join(SECTIONS)}. Those before text-attention run after the bf16 "
        "renders are timed; text-attention, text-phase or group-norm alone need no renders (group-norm also goes "
        "with the others); 'none': the bf16 renders only",
    )
    ap.add_argument("--repeats", type=int, default=5, help="renders per timed row (the median is reported)")
    ap.add_argument(
        "--cancel-after-ms", type=float, default=150.0, help="cancel: when the view is stopped, after its start"
    )
    ap.add_argument(
        "--inductor-options",
        default="coordinate_descent_tuning=True,max_autotune_pointwise=True",
        help="inductor-options: comma-separated inductor config KEY=VALUE (True/False/int/str) added to "
        "reduce-overhead's CUDA graphs",
    )
    ap.add_argument(
        "--jobs",
        default="view,live",
        help="which renders the timed rows, the timeline, FP8 and the builds (nchw, inductor-options, max-autotune, "
        "native-group-norm, separate-time-projections, keys-in-loop, small-gemms) use, "
        "in this order: view (768x576, 30 steps), live (512x512, 8 steps)",
    )
    ap.add_argument(
        "--sequence-batches",
        type=int_list,
        default=[1, 4, 8],
        help="sequence-batch: comma-separated frames per UNet call to time (each new one compiles once)",
    )
    ap.add_argument(
        "--group-norm-builds",
        default="",
        help="group-norm: comma-separated builds to time (eager, split statistics, or the name of "
        "an inductor option set: default, persistent reductions off, multi-kernel, tuned block sizes); empty: all",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny widths on any device: checks the script only")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sections = {name.strip() for name in args.sections.split(",")}
    if unknown := sorted(sections - set(SECTIONS) - {"none"}):
        raise SystemExit(f"no section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}, or none")
    if not args.smoke:
        assert torch.cuda.is_available(), "this probe needs a CUDA GPU (use --smoke to check the script on a CPU)"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    view_wh, live_wh = ((768, 576), (512, 512)) if not args.smoke else ((128, 96), (64, 64))
    out = output_path(args.out)
    report: dict[str, Any] = {"command": command_line(), "machine": machine(), "torch": torch.__version__}

    def save() -> None:
        write_json(out, report)

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if sections == {"text-attention"}:  # needs no model
        report["text_attention"] = text_attention_probe(dev, 64 if args.smoke else 1024, heads=16)
        save()
        return
    if "group-norm" in sections:  # needs no model; first, as it resets dynamo between its builds
        only = parse_group_norm_builds(args.group_norm_builds)
        report["group_norm"] = group_norm_probe(dev, args.smoke, args.repeats, only)
        save()
        if sections == {"group-norm"}:
            return
    if sections == {"text-phase"}:  # the eager text encoder only
        report["text_phase"] = text_phase_probe(dev, args.smoke)
        save()
        return
    base = sd21_base_model(dev, torch.bfloat16, tiny=args.smoke)
    base.unet.to(memory_format=torch.channels_last)
    cams = [Camera(orbit_pose(a, e, 4.0), 40.0, *view_wh) for a in range(0, 360, 30) for e in (10, 30, 50)]
    torch.manual_seed(1)
    vm = new_mapper(base, "view", make_parameterization("anchor-pose-13d").fit(cams)).to(dev).eval()
    om = new_mapper(base, "object").to(dev).eval()
    vm.requires_grad_(False)
    om.requires_grad_(False)
    plain_unet = base.unet
    compile_base_model(base, "reduce-overhead", text_encoder_for_training=False)  # what Engine.load does
    bf16_unet = base.unet
    pipe = ViewNeTIPipeline(base, vm)
    view = Camera(orbit_pose(35.0, 25.0, 4.0), 40.0, *view_wh)
    live = Camera(orbit_pose(10.0, 20.0, 4.0), 40.0, *live_wh)
    all_jobs = {"view": (view, 30), "live": (live, 8)}
    jobs = {job: all_jobs[job] for job in args.jobs.split(",")}

    def render(
        cam: Camera,
        steps: int,
        new_pose: bool,
        timings: dict | None = None,
        output: str = "pil",
        should_stop: Any = None,
    ):
        if new_pose:
            pipe.clear_cache()
        return pipe(  # pyright: ignore[reportCallIssue]  output is one of the overloads' literals
            [cam],
            om,
            seed=0,
            steps=steps,
            guidance=7.5,
            object_key="obj",
            timings=timings,
            output=output,  # pyright: ignore[reportArgumentType]
            should_stop=should_stop,
        )

    def new_and_same_pose_ms(cam: Camera, steps: int) -> dict[str, float]:
        """Median render time at a new pose (encoding cache emptied) and at the same pose."""
        return {
            "new_pose_ms": timed(lambda: render(cam, steps, True), repeats=args.repeats)[0] * 1e3,
            "same_pose_ms": timed(lambda: render(cam, steps, False), repeats=args.repeats)[0] * 1e3,
        }

    def time_renders(label: str) -> dict:
        row: dict = {}
        t0 = time.perf_counter()
        for cam, steps in jobs.values():  # compile + warm-up
            render(cam, steps, False)
            render(cam, steps, False)
        row["warmup_s"] = time.perf_counter() - t0
        for job, (cam, steps) in jobs.items():
            phases: dict = {}
            render(cam, steps, False)  # the previous job's new-pose renders emptied the encoding cache
            render(cam, steps, False, phases)
            row[job] = {**new_and_same_pose_ms(cam, steps), "same_pose_phases_ms": phases}
            log(
                f"{label} {job}: new {row[job]['new_pose_ms']:.1f} ms, same {row[job]['same_pose_ms']:.1f} ms, "
                f"phases { ({k: round(v, 1) for k, v in phases.items()}) }"
            )
        return row

    report["bf16"] = time_renders("bf16")
    save()
    reference = {job: render(cam, steps, False, output="latent") for job, (cam, steps) in jobs.items()}
    reference_img = {job: np.asarray(render(cam, steps, False)[0]) for job, (cam, steps) in jobs.items()}

    if "timeline" in sections and dev == "cuda":
        folder = out.parent
        tl: dict = {}
        for job, (cam, steps) in jobs.items():
            tl[f"{job}_new_pose"] = profile_timeline(
                lambda c=cam, s=steps: render(c, s, True),
                f"{job} new pose",
                1,
                folder / f"render_timeline_{job}.json.gz",
            )
        tl["view_same_pose_kernels"] = profile_gpu(lambda: render(view, 30, False), "view 768x576, same pose")
        report["timeline"] = tl
        save()

    if "cancel" in sections:
        report["cancel"] = cancel_probe(render, view, live, args.cancel_after_ms / 1e3, args.repeats)
        save()

    if "text-overlap" in sections:
        report["text_overlap"] = {}
        for job, (cam, steps) in jobs.items():
            other = Camera(orbit_pose(200.0, 15.0, 4.0), 40.0, cam.width, cam.height)
            row = text_overlap_probe(pipe, om, cam, other, steps, args.repeats, render)
            report["text_overlap"][job] = row
            log(
                f"text overlap {job}: text phase {row['text_phase_ms']:.1f} + same-pose render "
                f"{row['same_pose_ms']:.1f} = {row['serial_ms']:.1f} ms one after the other, "
                f"{row['overlapped_ms']:.1f} ms overlapped (saves {row['saved_ms']:.1f} ms)"
            )
            save()

    if "sequence-batch" in sections:
        frames = [
            Camera(orbit_pose(35.0 + 15 * i, 25.0, 4.0), 40.0, *view_wh) for i in range(max(args.sequence_batches))
        ]
        report["sequence_batch"] = {}  # filled and saved one batch size at a time: a cut run keeps its rows
        sequence_batch_probe(pipe, om, frames, 30, args.sequence_batches, args.repeats, report["sequence_batch"], save)

    compiled_decoder = base.vae.decoder

    def time_against_shipped(
        key: str, label: str, use_variant: Callable[[], None], use_shipped: Callable[[], None]
    ) -> None:
        """Render each job with a variant (``use_variant()`` switches to it, ``use_shipped()`` back): its
        compile time, its render times against the shipped build in the same run, and how far the latents
        and image move from the shipped build's (rounding only). Rows go to ``report[key]``."""
        report.setdefault(key, {})
        try:
            for job, (cam, steps) in jobs.items():
                use_variant()
                row: dict[str, Any] = {}
                t0 = time.perf_counter()
                render(cam, steps, False)  # compile (and autotune), record the CUDA graphs
                render(cam, steps, False)
                row["compile_s"] = time.perf_counter() - t0
                phases: dict = {}
                render(cam, steps, False, phases)
                row.update(new_and_same_pose_ms(cam, steps), same_pose_phases_ms=phases)
                lat = render(cam, steps, False, output="latent")
                row["latents_rel_error_vs_shipped"] = _rel(lat, reference[job])
                row["image_psnr_vs_shipped_db"] = _images_psnr(
                    np.asarray(render(cam, steps, False)[0]), reference_img[job]
                )
                use_shipped()  # the A/B that counts: same run
                row.update({f"shipped_{k}": v for k, v in new_and_same_pose_ms(cam, steps).items()})
                log(
                    f"{label} {job}: compiled in {row['compile_s']:.0f} s; new {row['new_pose_ms']:.1f} / same "
                    f"{row['same_pose_ms']:.1f} ms against shipped {row['shipped_new_pose_ms']:.1f} / "
                    f"{row['shipped_same_pose_ms']:.1f} ms; phases { ({k: round(v, 1) for k, v in phases.items()}) }; "
                    f"latents rel. error {row['latents_rel_error_vs_shipped']:.3g}, "
                    f"PSNR {row['image_psnr_vs_shipped_db']:.1f} dB"
                )
                report[key][job] = row
                save()
        except Exception as exc:  # noqa: BLE001  a probe: record what failed and go on
            report[key]["error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"{label} failed: {report[key]['error']}")
        finally:
            use_shipped()
        save()

    def build_variant(
        key: str,
        label: str,
        mode: str | None,
        options: dict | None = None,
        memory_format: torch.memory_format = torch.channels_last,
        prepare: Callable[[nn.Module], object] | None = None,
        keys_ahead: bool | None = None,
    ) -> None:
        """:func:`time_against_shipped` for another build of the UNet and decoder (same weights, same maths,
        other kernels). ``options``: inductor options instead of a mode. The modules are copies, so that
        dynamo compiles and records them afresh; ``prepare`` changes each copy in place before it is compiled;
        ``keys_ahead``: whether its renders project the keys/values ahead (None: as shipped)."""
        report[key] = {"options": options} if options else {}
        unet: Any = copy.deepcopy(plain_unet)  # Any: Module.to's stubs lack memory_format
        decoder: Any = copy.deepcopy(base.eager["vae_decoder"])
        unet.to(memory_format=memory_format)
        decoder.to(memory_format=memory_format)
        if prepare is not None:
            report[key]["prepared"] = {"unet": prepare(unet), "decoder": prepare(decoder)}
        variant_unet = torch.compile(unet, mode=mode, options=options, fullgraph=False, dynamic=False)
        variant_decoder = torch.compile(decoder, mode=mode, options=options, fullgraph=False, dynamic=False)

        shipped_keys_ahead = pipe.keys_ahead

        def use_variant() -> None:
            base.unet, base.vae.decoder = variant_unet, variant_decoder
            pipe.keys_ahead = shipped_keys_ahead if keys_ahead is None else keys_ahead

        def use_shipped() -> None:
            base.unet, base.vae.decoder = bf16_unet, compiled_decoder
            pipe.keys_ahead = shipped_keys_ahead

        time_against_shipped(key, label, use_variant, use_shipped)

    if "nchw" in sections:
        build_variant("nchw", "NCHW", "reduce-overhead", memory_format=torch.contiguous_format)
    if "inductor-options" in sections:
        # reduce-overhead is {"triton.cudagraphs": True}; these options are added to it
        options = {"triton.cudagraphs": True, **parse_inductor_options(args.inductor_options)}
        build_variant("inductor_options", f"inductor {args.inductor_options}", None, options)
    if "max-autotune" in sections:
        build_variant("max_autotune", "max-autotune", "max-autotune")
    if "native-group-norm" in sections:
        build_variant(
            "native_group_norm", "inductor's own group norms", "reduce-overhead", prepare=use_native_group_norm
        )

    if "separate-time-projections" in sections:
        build_variant(
            "separate_time_projections",
            "time-embedding projections one by one",
            "reduce-overhead",
            prepare=unfuse_time_embedding_projections,
        )
    if "small-gemms" in sections:
        build_variant(
            "small_gemms",
            "keys in the loop and time-embedding projections one by one",
            "reduce-overhead",
            prepare=unfuse_time_embedding_projections,
            keys_ahead=False,
        )
    if "keys-in-loop" in sections:
        # the same compiled UNet, its cross-attention keys/values projected in every step
        # (VIEWNETI_KEYS_AHEAD=0; the UNet compiles one more graph per shape, for that input)
        if pipe.keys_ahead:
            time_against_shipped(
                "keys_in_loop",
                "keys in the loop",
                lambda: setattr(pipe, "keys_ahead", False),
                lambda: setattr(pipe, "keys_ahead", True),
            )
        else:
            report["keys_in_loop"] = {"error": "the shipped renders do not project keys/values ahead here"}
            save()

    if "fp8-unet" in sections:
        from diffusers.models.attention import BasicTransformerBlock

        fp8 = copy.deepcopy(plain_unet)
        report["fp8_unet_linears"] = to_fp8_linears(fp8, (BasicTransformerBlock,))
        base.unet = torch.compile(fp8, mode="reduce-overhead", fullgraph=False, dynamic=False)
        try:
            row = time_renders("fp8 UNet linears")
            for job, (cam, steps) in jobs.items():
                lat = render(cam, steps, False, output="latent")
                row[job]["latents_rel_error_vs_bf16"] = _rel(lat, reference[job])
                row[job]["image_psnr_vs_bf16_db"] = _images_psnr(
                    np.asarray(render(cam, steps, False)[0]), reference_img[job]
                )
                log(
                    f"fp8 {job}: latents rel. error {row[job]['latents_rel_error_vs_bf16']:.3g}, PSNR {row[job]['image_psnr_vs_bf16_db']:.1f} dB"
                )
            report["fp8_unet"] = row
        except Exception as exc:  # noqa: BLE001  a probe: record what failed and go on
            report["fp8_unet"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"fp8 UNet failed: {report['fp8_unet']}")
        finally:
            base.unet = bf16_unet
        save()

    if "fp8-text" in sections:
        tm = _text_transformer(base.text_encoder)
        eager_encoder = tm.encoder
        variants: dict[str, Any] = {"eager bf16": eager_encoder}
        variants["compiled bf16"] = torch.compile(eager_encoder, dynamic=False)
        fp8_encoder = copy.deepcopy(eager_encoder)
        report["fp8_text_linears"] = to_fp8_linears(fp8_encoder)
        variants["compiled fp8"] = torch.compile(fp8_encoder, dynamic=False)
        text: dict = {}
        for steps in (30, 8):
            timesteps = torch.linspace(999, 0, steps).long()

            def encode(t=timesteps):
                return pipe.view_encodings([view], om, t, use_cache=False)

            row: dict[str, Any] = {"rows": steps * base.num_layers}
            keys_ref = None
            for label, encoder in variants.items():
                tm.encoder = encoder
                try:
                    keys = encode()
                    keys_ref = keys if keys_ref is None else keys_ref
                    row[label] = {
                        "ms": timed(encode, repeats=10, warmup=2)[0] * 1e3,
                        "rel_error_vs_eager": _rel(keys, keys_ref),
                    }
                    log(
                        f"text {row['rows']} rows, {label}: {row[label]['ms']:.1f} ms, rel. error {row[label]['rel_error_vs_eager']:.3g}"
                    )
                except Exception as exc:  # noqa: BLE001  a probe: record what failed and go on
                    row[label] = f"{type(exc).__name__}: {exc}"[:500]
                    log(f"text {label} failed: {row[label]}")
                finally:
                    tm.encoder = eager_encoder
            text[f"{steps}_steps"] = row
        report["fp8_text"] = text
        save()
    if "text-attention" in sections:
        report["text_attention"] = text_attention_probe(dev, base.text.embedding_dim, heads=16)
        save()
    sync()
    log(f"wrote {out}")


def sequence_batch_probe(
    pipe: ViewNeTIPipeline,
    object_mapper: Any,
    frames: list[Camera],
    steps: int,
    batches: list[int],
    repeats: int,
    out: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Frames per UNet call against time per frame, into ``out`` (``save`` after each batch size): each size's
    first two renders compile (and record the CUDA graphs), then the median of ``repeats`` renders of its
    first ``b`` frames, encodings cached."""
    out.update(steps=steps, size=f"{frames[0].width}x{frames[0].height}")
    cuda = torch.cuda.is_available()
    for b in batches:
        cams = frames[:b]

        def run(c=cams):
            return pipe(c, object_mapper, seed=0, steps=steps, guidance=7.5, object_key="obj", output="latent")

        row: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            run()
            run()
            sync()
            row["compile_s"] = time.perf_counter() - t0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            ms = timed(run, repeats=repeats)[0] * 1e3
            row.update(ms=ms, ms_per_frame=ms / b)
            if cuda:
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            log(
                f"sequence batch {b}: {ms:.1f} ms, {ms / b:.1f} ms a frame, compiled in {row['compile_s']:.0f} s"
                + (f", peak {row['peak_gib']:.1f} GiB" if cuda else "")
            )
        except Exception as exc:  # noqa: BLE001  a probe: record what failed (e.g. out of memory) and go on
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"sequence batch {b} failed: {row['error']}")
        out[str(b)] = row
        save()


def cancel_probe(render, view: Camera, live: Camera, delay_s: float, repeats: int) -> dict:
    """Paced (the host at most STEPS_AHEAD steps ahead) against unbounded, alternating twice: a stoppable
    new-pose view and live render's time, and a new-pose view stopped ``delay_s`` into it followed by a
    new-pose live render (the time from the stop to the live frame: the work of the stopped view still
    queued on the GPU, plus the live render)."""
    paced = step_pacer.STEPS_AHEAD
    variants = {"paced": paced, "unbounded": 10**6}
    never = lambda: False  # noqa: E731  stoppable, never stopped: the server's renders are always stoppable
    out: dict[str, Any] = {"steps_ahead": paced, "delay_ms": delay_s * 1e3, "runs": []}
    try:
        for _ in range(2):
            for label, ahead in variants.items():
                step_pacer.STEPS_AHEAD = ahead
                run: dict[str, Any] = {"variant": label}
                run["view_new_pose_ms"] = timed(lambda: render(view, 30, True, should_stop=never), repeats)[0] * 1e3
                run["live_new_pose_ms"] = timed(lambda: render(live, 8, True, should_stop=never), repeats)[0] * 1e3
                to_frame, to_seen, stopped_at = [], [], []
                for _ in range(repeats):
                    sync()
                    deadline = time.perf_counter() + delay_s
                    try:
                        render(view, 30, True, should_stop=lambda d=deadline: time.perf_counter() >= d)
                        stopped_at.append(None)
                    except Cancelled as exc:
                        stopped_at.append(str(exc))
                    seen = time.perf_counter()
                    render(live, 8, True, should_stop=never)  # images: on the host when it returns
                    done = time.perf_counter()
                    to_seen.append((seen - deadline) * 1e3)
                    to_frame.append((done - deadline) * 1e3)
                run["stop_to_live_frame_ms"] = float(np.median(to_frame))
                run["stop_to_cancelled_ms"] = float(np.median(to_seen))
                run["stopped"] = stopped_at
                log(
                    f"cancel, {label}: view {run['view_new_pose_ms']:.1f} ms, live {run['live_new_pose_ms']:.1f} ms, "
                    f"stop -> live frame {run['stop_to_live_frame_ms']:.1f} ms (stop seen after "
                    f"{run['stop_to_cancelled_ms']:.1f} ms; {stopped_at[0]})"
                )
                out["runs"].append(run)
    finally:
        step_pacer.STEPS_AHEAD = paced
    return out


GROUP_NORM_OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "persistent reductions off": {"triton.persistent_reductions": False},
    "multi-kernel": {"triton.multi_kernel": 1},
    "tuned block sizes": {"max_autotune_pointwise": True, "coordinate_descent_tuning": True},
}


def parse_group_norm_builds(text: str) -> set[str] | None:
    """``--group-norm-builds``: the names asked for (None: all); an unknown name exits with the known ones."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    known = {"eager", "split statistics", *GROUP_NORM_OPTION_SETS}
    if names - known:
        raise SystemExit(
            f"--group-norm-builds: no build {', '.join(sorted(names - known))}; choose from {', '.join(sorted(known))}"
        )
    return names or None


def group_norm_probe(dev: str, smoke: bool, repeats: int, only: set[str] | None = None) -> dict:
    """SiLU(GroupNorm(x)), as each resnet of the UNet and the VAE decoder starts, alone: eager and compiled
    under several inductor option sets, channels-last (what the models run) and contiguous, at the shapes
    of a 768x576 view (UNet, batch 2 for CFG) and its decode. Time per call and the bandwidth it reaches
    (one read of x, one write of the output): are inductor's group norms far off the GPU's bandwidth?"""
    import torch.nn.functional as F

    if smoke:
        shapes = {"unet 64ch": (2, 64, 9, 12), "decoder 32ch": (1, 32, 24, 32)}
    else:
        shapes = {
            "unet 320ch 96x72": (2, 320, 72, 96),
            "unet 640ch 48x36": (2, 640, 36, 48),
            "unet 1280ch 24x18": (2, 1280, 18, 24),
            "unet 1280ch 12x9": (2, 1280, 9, 12),
            "decoder 512ch 96x72": (1, 512, 72, 96),
            "decoder 512ch 192x144": (1, 512, 144, 192),
            "decoder 256ch 384x288": (1, 256, 288, 384),
            "decoder 128ch 768x576": (1, 128, 576, 768),
        }
    groups = 8 if smoke else 32

    def gn_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.silu(F.group_norm(x, groups, weight, bias, 1e-5))

    def gn_silu_split_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.silu(split_stats_group_norm(x, groups, weight, bias, 1e-5))

    def per_call_us(fn, *inputs) -> float:
        for _ in range(3):
            fn(*inputs)
        if dev != "cuda":
            return timed(lambda: fn(*inputs), repeats=max(repeats, 3))[0] * 1e6
        # n calls recorded into one CUDA graph and replayed: kernel time alone, as in the compiled
        # render's graphs. Timed call by call from Python, a small tensor's time is the host's dispatch
        # (tens of us a call), not the kernel's.
        n = 50
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                fn(*inputs)
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / n

    out: dict[str, Any] = {}
    for label, shape in shapes.items():
        row: dict[str, Any] = {"shape": list(shape)}
        for layout, fmt in (("channels-last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            torch.manual_seed(0)
            x = torch.randn(shape, device=dev, dtype=torch.bfloat16).contiguous(memory_format=fmt)
            weight = torch.randn(shape[1], device=dev, dtype=torch.bfloat16)
            bias = torch.randn(shape[1], device=dev, dtype=torch.bfloat16)
            reference = gn_silu(x, weight, bias)
            moved = 2 * x.numel() * x.element_size()
            builds: dict[str, tuple[Any, dict | None]] = {"eager": (gn_silu, None)}
            builds.update({f"compiled, {name}": (gn_silu, opts) for name, opts in GROUP_NORM_OPTION_SETS.items()})
            builds["compiled, split statistics"] = (gn_silu_split_stats, {})
            for name, (fn, options) in builds.items():
                if only is not None and name.removeprefix("compiled, ") not in only:
                    continue
                key = f"{layout}, {name}"
                try:
                    if options is not None:
                        torch._dynamo.reset()  # a fresh compile under these options
                        fn = torch.compile(fn, dynamic=False, options=options or None)
                    err = float((fn(x, weight, bias).float() - reference.float()).abs().max())
                    us = per_call_us(fn, x, weight, bias)
                    row[key] = {"us": us, "gb_per_s": moved / us / 1e3, "max_abs_diff_vs_eager": err}
                    log(f"group norm {label}, {key}: {us:.1f} us ({moved / us / 1e3:.0f} GB/s), max diff {err:.3g}")
                except Exception as exc:  # noqa: BLE001  a probe: record what failed and go on
                    row[key] = f"{type(exc).__name__}: {exc}"[:300]
                    log(f"group norm {label}, {key} failed: {row[key]}")
        out[label] = row
    return out


def text_phase_probe(dev: str, smoke: bool) -> dict:
    """The new-pose text phase (every (t, l) encoding of one camera) at 8 and 30 steps, with the CLIP
    attention masked by SDPA's ``is_causal`` (the library's path) and by the explicit additive mask, under
    the server's process-wide SDPA order: time and kernels by category."""
    from unittest import mock

    from viewneti_backend.attention import prefer_cudnn_attention
    from viewneti_backend.text_conditioning import TextConditioner

    base = sd21_base_model(dev, torch.bfloat16, tiny=smoke)
    prefer_cudnn_attention(base.device)
    wh = (128, 96) if smoke else (768, 576)
    cams = [Camera(orbit_pose(a, e, 4.0), 40.0, *wh) for a in range(0, 360, 30) for e in (10, 30, 50)]
    torch.manual_seed(1)
    vm = new_mapper(base, "view", make_parameterization("anchor-pose-13d").fit(cams)).to(dev).eval()
    om = new_mapper(base, "object").to(dev).eval()
    pipe = ViewNeTIPipeline(base, vm)
    cam = Camera(orbit_pose(35.0, 25.0, 4.0), 40.0, *wh)
    out: dict = {}
    for steps in (8, 30):
        timesteps = pipe.scheduler(steps).timesteps

        def encode(t=timesteps):
            return pipe.view_encodings([cam], om, t, use_cache=False)

        row: dict = {"rows": steps * base.num_layers}
        reference = None
        for label, causal in (("is_causal", True), ("additive mask", False)):
            with mock.patch.object(TextConditioner, "sdpa_causal", property(lambda self, c=causal: c)):
                keys = encode()
                reference = keys if reference is None else reference
                ms = timed(encode, repeats=20, warmup=3)[0] * 1e3
                row[label] = {"ms": ms, "rel_error_vs_is_causal": _rel(keys, reference)}
                log(f"text phase {row['rows']} rows, {label}: {ms:.1f} ms")
                if dev == "cuda":
                    row[label]["kernels"] = profile_gpu(encode, f"text phase {row['rows']} rows, {label}", top=6)
        out[f"{steps}_steps"] = row
    return out


def text_attention_probe(dev: str, width: int, heads: int, seq: int = 77) -> dict:
    """One CLIP block's attention at the text phase's batches (8 and 30 steps x 16 layers), bf16: the
    explicit additive causal mask the library passes vs ``is_causal``, under each SDPA backend."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    d = width // heads
    causal = torch.full((seq, seq), torch.finfo(torch.bfloat16).min, device=dev, dtype=torch.bfloat16).triu(1)
    backends = {
        "default order": None,
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }
    out: dict = {}
    for rows in (128, 480):
        q, k, v = (torch.randn(rows, heads, seq, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=causal[None, None].float())
        row: dict = {}
        for mask_kind in ("additive mask", "is_causal"):
            kwargs: dict[str, Any] = (
                {"attn_mask": causal[None, None]} if mask_kind == "additive mask" else {"is_causal": True}
            )
            for label, order in backends.items():
                key = f"{mask_kind}, {label}"
                try:
                    with sdpa_kernel(order) if order is not None else contextlib.nullcontext():
                        fn = lambda q=q, k=k, v=v, kw=kwargs: F.scaled_dot_product_attention(q, k, v, **kw)  # noqa: E731
                        err = _rel(fn(), ref)
                        ms = timed(fn, repeats=20, warmup=3)[0] * 1e3
                    row[key] = {"ms": ms, "rel_error_vs_fp32": err}
                    log(
                        f"text attention {rows} rows, {key}: {ms:.3f} ms (x23 layers: {23 * ms:.1f} ms), rel. error {err:.2g}"
                    )
                except RuntimeError as exc:  # a backend that does not take these inputs
                    row[key] = f"{type(exc).__name__}: {exc}"[:200]
        out[f"{rows}_rows"] = row
    return out


if __name__ == "__main__":
    main()
