"""``viewneti toyworld ...``: rebuild and measure the embedded toy world.

viewneti toyworld render-dataset --out data/toy --objects 20 --views 24 [--renderer blender]
viewneti toyworld train-prior --out viewneti_backend/toyworld/weights/prior [--vae-minutes 2 --unet-minutes 8]
viewneti toyworld pretrain --model viewneti_backend/toyworld/weights/prior --minutes 6
viewneti toyworld benchmark --model viewneti_backend/toyworld/weights/prior --out benchmarks/toyworld
viewneti toyworld ceiling --out benchmarks/toyworld      # how much view control the prior offers
"""

from __future__ import annotations

import argparse
import json

from ..config_cli import add_options, config_from_args

CEILING_OPTIONS = ("seeds", "n_targets", "render_steps", "guidance")  # the benchmark's sampling protocol

CEILING_DESCRIPTION = """\
Render the benchmark's target views of the seen built-in objects (their tokens were learned with
the view-mapper in mode 3, so they bound what a single-view inversion can reach) and score them like
the benchmark, next to copying the input view, the token without the view token, and the prior
itself prompted with plain text: the object's description with each target's true coarse view phrase
(the most view information it was trained with), and without; and, as a scale, the renderer's own
ground truth seen from an azimuth 10, 22.5 or 45 degrees off. Renders only; writes prior_ceiling.json."""


def _render_dataset(args) -> int:
    from .dataset import DatasetConfig, render_dataset

    cfg = config_from_args(DatasetConfig, args)
    if args.renderer == "blender":
        from .blender_dataset import render_dataset_blender

        folders = render_dataset_blender(cfg, args.out, samples=args.samples)
    else:
        folders = render_dataset(cfg, args.out, device=args.device or "cpu")
    print(f"wrote {len(folders)} object folders (transforms.json + images/ + masks/) to {args.out}")
    return 0


def _train_prior(args) -> int:
    from .prior.training import main as prior_main

    argv = ["--out", args.out, "--device", args.device or "auto"] + args.prior_args
    prior_main(argv)
    return 0


def _pretrain(args) -> int:
    from ..engine import resolve_model
    from .pretrain import PretrainConfig, pretrain_view_mapper

    cfg = config_from_args(PretrainConfig, args)
    summary = pretrain_view_mapper(cfg, resolve_model(args.model), args.out, device=args.device)
    print(summary)
    return 0


def _benchmark(args) -> int:
    from ..engine import resolve_model
    from .benchmark import BenchmarkConfig, mode2_interpolation, nvs_benchmark

    cfg = config_from_args(BenchmarkConfig, args)
    summary = nvs_benchmark(cfg, resolve_model(args.model), args.out, device=args.device, resume=args.resume)
    print(f"margin (dB): {summary['margin_db']}")
    if args.mode2_steps:
        mode2_interpolation(resolve_model(args.model), args.out, steps=args.mode2_steps, device=args.device)
    return 0


def _ceiling(args) -> int:
    from ..engine import resolve_model
    from .benchmark import BenchmarkConfig, prior_ceiling

    cfg = config_from_args(BenchmarkConfig, args)
    summary = prior_ceiling(cfg, resolve_model(args.model), args.out, device=args.device)
    for method, res in summary["results"].items():
        print(f"{method:36s} PSNR {res['mean']['psnr']:6.2f} dB  SSIM {res['mean']['ssim']:.3f}")
    print(f"paired margins (dB): {json.dumps(summary['margin_db'])}")
    return 0


def add_toyworld_parser(sub: argparse._SubParsersAction) -> None:
    from .benchmark import BenchmarkConfig
    from .dataset import DatasetConfig
    from .pretrain import PretrainConfig

    tw = sub.add_parser(
        "toyworld",
        help="rebuild and benchmark the embedded toy world (renderer, prior, view-mapper)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = tw.add_subparsers(dest="toy_command", required=True)

    p = tsub.add_parser("render-dataset", help="render toy objects to transforms.json scene folders (with masks)")
    p.add_argument("--out", required=True)
    add_options(p, DatasetConfig)
    p.add_argument(
        "--renderer",
        choices=["torch", "blender"],
        default="torch",
        help="torch: the toy ray caster (default); blender: the same objects as Blender meshes, rendered by Cycles "
        "and written by the Blender add-on's Export Training Views exporter (needs bpy and the checkout)",
    )
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per view with --renderer blender")
    p.add_argument("--device", help="cpu or cuda")
    p.set_defaults(func=_render_dataset)

    p = tsub.add_parser("train-prior", help="train the tiny SD-architecture prior (VAE, then UNet + text encoder)")
    p.add_argument("--out", required=True, help="diffusers folder to write")
    p.add_argument("--device", help="cpu, cuda (default: auto)")
    p.add_argument(
        "prior_args",
        nargs=argparse.REMAINDER,
        help="further options of `python -m viewneti_backend.toyworld.prior` (--vae-minutes, --unet-minutes, --resume, ...)",
    )
    p.set_defaults(func=_train_prior)

    p = tsub.add_parser(
        "pretrain",
        help="pretrain the view-mapper with mode 3 on toy objects; writes <model>/viewneti/",
        description="Pretrain the toy view-mapper (mode 3) on rendered toy objects and ship it, with a few of "
        "their object tokens as built-ins, in <model>/viewneti/. Its camera features default to the camera "
        "distance as a feature of its own: the toy cameras' distance varies, and with anchor-pose-13d the toy "
        "mapper rendered one object size at every distance (RESULTS.md §3).",
    )
    p.add_argument("--model", help="toy prior folder (default: the embedded one)")
    p.add_argument("--out", default="outputs/toyworld", help="where the training summary goes")
    add_options(p, PretrainConfig)
    p.add_argument("--device")
    p.set_defaults(func=_pretrain)

    p = tsub.add_parser("benchmark", help="held-out single-view NVS: ViewNeTI mode 5 vs copy-input vs no view token")
    p.add_argument("--model", help="toy model folder with its bundled view-mapper (default: the embedded one)")
    p.add_argument("--out", default="benchmarks/toyworld", help="folder for nvs_benchmark.json/.txt and nvs_sheet.png")
    add_options(p, BenchmarkConfig)
    p.add_argument("--mode2-steps", type=int, default=0, help="also run mode-2 interpolation on one object (0: skip)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run in --out (same options): scored objects are kept and finished "
        "inversions in OUT/library reused",
    )
    p.add_argument("--device")
    p.set_defaults(func=_benchmark)

    p = tsub.add_parser(
        "ceiling",
        help="the benchmark's views of the seen built-in objects, and what the prior's own "
        "coarse view phrases achieve: how much view control there is to find",
        description=CEILING_DESCRIPTION,
    )
    p.add_argument(
        "--model", help="toy model folder with its bundled view-mapper and built-ins (default: the embedded one)"
    )
    p.add_argument("--out", default="benchmarks/toyworld", help="folder for prior_ceiling.json")
    add_options(p, BenchmarkConfig, only=CEILING_OPTIONS)
    p.add_argument("--device")
    p.set_defaults(func=_ceiling)
