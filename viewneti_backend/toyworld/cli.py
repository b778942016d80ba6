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

CEILING_DESCRIPTION = """\
Render the benchmark's 16 target views of the seen built-in objects (their tokens were learned with
the view-mapper in mode 3, so they bound what a single-view inversion can reach) and score them like
the benchmark, next to copying the input view, the token without the view token, and the prior
itself prompted with plain text: the object's description with each target's true coarse view phrase
(the most view information it was trained with), and without; and, as a scale, the renderer's own
ground truth seen from an azimuth 10, 22.5 or 45 degrees off. Renders only; writes prior_ceiling.json."""


def _render_dataset(args) -> int:
    from .dataset import DatasetConfig, render_dataset

    cfg = DatasetConfig(
        n_objects=args.objects, views=args.views, first_seed=args.first_seed, size=args.size, cameras=args.cameras
    )
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


def _radius_range(text: str) -> tuple[float, float]:
    """``MIN,MAX`` (or one number) -> a (min, max) pair of positive distances."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give MIN,MAX with 0 < MIN <= MAX, e.g. 3.2,4.0 (or 3.6 for one radius)"
        )
    return values[0], values[1]


def _pretrain(args) -> int:
    from ..engine import resolve_model
    from .pretrain import PretrainConfig, pretrain_training, pretrain_view_mapper

    train = pretrain_training(
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        camera_parameterization=args.camera_parameterization,
    )
    cfg = PretrainConfig(
        train=train,
        n_objects=args.objects,
        views=args.views,
        max_minutes=args.minutes,
        ship_objects=args.ship_objects,
        compile=not args.no_compile,
        radius_range=args.radius_range,
    )
    summary = pretrain_view_mapper(cfg, resolve_model(args.model), args.out, device=args.device)
    print(summary)
    return 0


def _benchmark(args) -> int:
    from ..engine import resolve_model
    from .benchmark import BenchmarkConfig, mode2_interpolation, nvs_benchmark

    cfg = BenchmarkConfig(
        n_objects=args.objects,
        seeds=[int(s) for s in args.seeds.split(",")],
        invert_steps=args.invert_steps,
        n_targets=args.targets,
        guidance=args.guidance,
        render_steps=args.render_steps,
        augmentation_pool=args.augmentation_pool,
    )
    summary = nvs_benchmark(cfg, resolve_model(args.model), args.out, device=args.device, resume=args.resume)
    print(f"margin (dB): {summary['margin_db']}")
    if args.mode2_steps:
        mode2_interpolation(resolve_model(args.model), args.out, steps=args.mode2_steps, device=args.device)
    return 0


def _ceiling(args) -> int:
    from ..engine import resolve_model
    from .benchmark import BenchmarkConfig, prior_ceiling

    cfg = BenchmarkConfig(
        seeds=[int(s) for s in args.seeds.split(",")],
        n_targets=args.targets,
        guidance=args.guidance,
        render_steps=args.render_steps,
    )
    summary = prior_ceiling(cfg, resolve_model(args.model), args.out, device=args.device)
    for method, res in summary["results"].items():
        print(f"{method:36s} PSNR {res['mean']['psnr']:6.2f} dB  SSIM {res['mean']['ssim']:.3f}")
    print(f"paired margins (dB): {json.dumps(summary['margin_db'])}")
    return 0


def add_toyworld_parser(sub: argparse._SubParsersAction) -> None:
    tw = sub.add_parser(
        "toyworld",
        help="rebuild and benchmark the embedded toy world (renderer, prior, view-mapper)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = tw.add_subparsers(dest="toy_command", required=True)

    p = tsub.add_parser("render-dataset", help="render toy objects to transforms.json scene folders (with masks)")
    p.add_argument("--out", required=True)
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--views", type=int, default=24)
    p.add_argument(
        "--first-seed", type=int, default=0, help="object seeds first..first+N-1 (held-out objects start at 1000000)"
    )
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cameras", choices=["random", "orbit"], default="random")
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
        "pretrain", help="pretrain the view-mapper with mode 3 on toy objects; writes <model>/viewneti/"
    )
    p.add_argument("--model", help="toy prior folder (default: the embedded one)")
    p.add_argument("--out", default="outputs/toyworld", help="where the training summary goes")
    p.add_argument("--objects", type=int, default=120)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--minutes", type=float, help="stop after this many minutes (keeps what was learned)")
    p.add_argument("--ship-objects", type=int, default=4, help="object tokens to ship as built-ins")
    p.add_argument("--batch-size", type=int, default=3, help="images per micro-batch (one scene each; paper: 3)")
    p.add_argument("--grad-accum", type=int, default=3, help="micro-batches per optimizer step (paper: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile", action="store_true", help="on CUDA, run the UNet/VAE eagerly (default: CUDA graphs)")
    p.add_argument(
        "--camera-parameterization",
        default="anchor-distance-14d",
        choices=["anchor-pose-13d", "anchor-distance-14d", "dtu-12d"],
        help="the view-mapper's camera features (default, as shipped: anchor-distance-14d, the camera distance "
        "as its own feature; with anchor-pose-13d the toy mapper rendered one size at every distance)",
    )
    p.add_argument(
        "--radius-range",
        type=_radius_range,
        default=(3.2, 4.0),
        metavar="MIN,MAX",
        help="training camera distances from the anchor (default 3.2,4.0; 3.6,3.6 pretrains at one radius)",
    )
    p.add_argument("--device")
    p.set_defaults(func=_pretrain)

    p = tsub.add_parser("benchmark", help="held-out single-view NVS: ViewNeTI mode 5 vs copy-input vs no view token")
    p.add_argument("--model", help="toy model folder with its bundled view-mapper (default: the embedded one)")
    p.add_argument("--out", default="benchmarks/toyworld", help="folder for nvs_benchmark.json/.txt and nvs_sheet.png")
    p.add_argument("--objects", type=int, default=8, help="held-out objects (seeds 1000000, 1000001, ...)")
    p.add_argument(
        "--seeds", default="0,1", help="comma-separated seeds; each object is inverted and rendered once per seed"
    )
    p.add_argument("--targets", type=int, default=16, help="novel views per object, evenly spaced on the orbit")
    p.add_argument(
        "--invert-steps", type=int, default=400, help="mode-5 optimizer steps per inversion (the paper: 3000)"
    )
    p.add_argument(
        "--render-steps", type=int, default=30, help="DPM-Solver++ steps of each novel view (the protocol: 30)"
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=2.0,
        help="classifier-free guidance (default 2.0: the toy prior saturates at SD's 7.5)",
    )
    p.add_argument(
        "--augmentation-pool",
        type=int,
        default=0,
        metavar="N",
        help="invert with the training option that encodes N augmented copies once (changes the maths; "
        "default 0: fresh augmentation every step)",
    )
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
    p.add_argument("--seeds", default="0,1", help="comma-separated sampling seeds")
    p.add_argument("--targets", type=int, default=16, help="novel views per object, evenly spaced on the orbit")
    p.add_argument("--render-steps", type=int, default=30, help="DPM-Solver++ steps (the benchmark's protocol: 30)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (the benchmark's 2.0)")
    p.add_argument("--device")
    p.set_defaults(func=_ceiling)
