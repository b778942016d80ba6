"""The ``viewneti`` command line: train, invert, render, eval, info (and the toy world's tools).

Every model argument takes a hub id (e.g. ``stabilityai/stable-diffusion-2-1``) or a local diffusers
folder; without one, the embedded toy-world model is used. Cameras follow Blender's convention
(+Z up, camera looks down -Z, +Y up; 4x4 camera-to-anchor matrices). ``--steps``/``--guidance`` of
``render`` and ``eval`` default to the model's recommended values (``viewneti/sampling.json`` in the
model folder; Stable Diffusion 2's 30 steps / 7.5 without one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .compile_modes import COMPILE_CHOICES, COMPILE_HELP

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _views(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views takes comma-separated integers, got '{text}'") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="hub id or local diffusers folder of an SD-architecture model (default: the embedded toy world, or $VIEWNETI_MODEL)",
    )
    g.add_argument("--view-mapper", help="folder of a pretrained view-mapper (default: the one bundled with the model)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the frozen parts (default: bf16 on CUDA, fp32 on CPU)",
    )
    g.add_argument(
        "--library",
        help="folder of user object tokens (default: $VIEWNETI_DATA_DIR/objects or ~/.local/share/viewneti/objects)",
    )
    g.add_argument("--compile", default="auto", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default auto)")


def default_library() -> Path:
    root = os.environ.get("VIEWNETI_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".local", "share", "viewneti")
    return Path(root) / "objects"


def _engine(args):
    from .engine import Engine

    return Engine.load(
        args.model, args.view_mapper, args.device, args.dtype, args.library or default_library(), compile=args.compile
    )


def _size(text: str) -> int | tuple[int, int]:
    """``--size``: ``N`` (long side, aspect kept) or ``WxH`` (exact)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
            return (w, h)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes N (long side) or WxH, e.g. 64 or 96x64; got '{text}'") from None


def _sized(cam, size: int | tuple[int, int] | None, native: int):
    """``cam`` at ``size`` (None: the model's native size as the long side); aspect and fov_y kept."""
    from .cameras import size_for_long_side

    if isinstance(size, tuple):
        return cam.with_size(*size)
    w, h = size_for_long_side(cam.width, cam.height, size or native)
    return cam.with_size(w, h)


def _file_cameras(args):
    """``--cameras`` / ``--transforms`` cameras as the files give them (None for an orbit); read before
    the model loads, so a wrong path or view index fails at once."""
    from .cameras import Camera

    if args.cameras:
        try:
            data = json.loads(Path(args.cameras).read_text())
        except (OSError, ValueError) as exc:
            from .errors import InputError

            raise InputError(f"--cameras {args.cameras}: {exc}") from None
        return [Camera.from_json(c) for c in (data["cameras"] if isinstance(data, dict) else data)]
    if args.transforms:
        from .data import load_transforms_scene

        scene = load_transforms_scene(args.transforms, _views(args.views))
        _print_scene_messages(scene)
        return list(scene.cameras or [])
    return None


def _cameras_from_args(args, native: int, file_cameras=None):
    """The cameras to render: ``--cameras`` as given (a size only with ``--size``), ``--transforms`` at
    the model's native size (long side) unless ``--size`` says otherwise, or an orbit."""
    from .cameras import Camera, orbit_pose

    cams = file_cameras if file_cameras is not None else _file_cameras(args)
    if cams is not None:
        if args.cameras and not args.size:
            return cams
        return [_sized(c, args.size, native) for c in cams]
    size = args.size if isinstance(args.size, tuple) else (args.size or native, args.size or native)
    return [
        Camera(
            orbit_pose(args.azimuth + 360.0 * i / args.orbit, args.elevation, args.radius), args.fov, *size
        ).validated()
        for i in range(args.orbit)
    ]


def _print_warnings(warnings: list[str]) -> None:
    for w in dict.fromkeys(warnings):
        print(f"warning: {w}", file=sys.stderr)


def _print_scene_messages(scene) -> None:
    """What loading a transforms scene decided for the user (split chosen, distortion ignored)."""
    for note in scene.meta.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    _print_warnings(list(scene.meta.get("warnings", [])))


def _add_camera_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cameras (one of: --cameras, --transforms, or an orbit)")
    g.add_argument(
        "--cameras", help="JSON file: a list of {camera_to_anchor, fov_y_deg, width, height} (the HTTP API's format)"
    )
    g.add_argument("--transforms", help="a transforms.json scene: render its cameras (with --views to pick some)")
    g.add_argument("--views", help="comma-separated view indices into --transforms")
    g.add_argument("--orbit", type=int, default=8, help="number of cameras on an orbit around the anchor (default 8)")
    g.add_argument(
        "--azimuth",
        type=float,
        default=0.0,
        help="azimuth of the first orbit camera in degrees; 0 = Blender front view, from -Y",
    )
    g.add_argument("--elevation", type=float, default=25.0, help="orbit elevation in degrees (default 25)")
    g.add_argument("--radius", type=float, default=3.6, help="orbit radius in anchor units (default 3.6)")
    g.add_argument("--fov", type=float, default=40.0, help="vertical field of view in degrees (default 40)")
    g.add_argument(
        "--size",
        type=_size,
        help="N: long side in pixels, the camera's aspect kept (an orbit: N x N); WxH: exact size, fov_y kept "
        "(default: the model's native size as the long side; `viewneti info` shows native_size)",
    )


_SAMPLING_HELP = (
    "(default: the model's recommended value from <model>/viewneti/sampling.json; "
    "30 steps / guidance 7.5 for models without one; `viewneti info` shows it)"
)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="DPM-Solver++ denoising steps " + _SAMPLING_HELP)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale " + _SAMPLING_HELP)


def cmd_info(args) -> int:
    engine = _engine(args)
    print(json.dumps({**engine.info(), "objects": engine.list_objects()}, indent=2))
    return 0


def _run_settings(engine, name: str, seed: int, steps: int, guidance: float, **more) -> dict:
    """What produced a run's images: stored in each PNG's tEXt metadata and in the run manifest."""
    return {
        "model": engine.model,
        "base_model": engine.base.name,
        "view_mapper": engine.view_mapper_name,
        "object": name,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        **more,
    }


def cmd_render(args) -> int:
    from tqdm.auto import tqdm

    from .sheets import contact_sheet, save_png, write_manifest

    file_cameras = _file_cameras(args)  # before the model loads
    engine = _engine(args)
    cams = _cameras_from_args(args, engine.base.native_size, file_cameras)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name, _ = engine.object_mapper(args.object)
    steps, guidance = engine.sampling.resolve(args.steps, args.guidance)
    with_view = not args.no_view
    warnings = engine.render_warnings(cams, with_view=with_view)
    _print_warnings(warnings)  # before the work: the user can stop a render that will not look right
    run = _run_settings(engine, name, args.seed, steps, guidance, with_view=with_view)
    files: list[Path] = []
    for i, cam in enumerate(tqdm(cams, desc=f"render {name} ({steps} steps, guidance {guidance:g})", unit="view")):
        img = engine.render([cam], name, args.seed, steps, guidance, with_view=with_view)[0]
        path = out / f"{name}_view{i:03d}_seed{args.seed}.png"
        files.append(save_png(img, path, {**run, "view": i, "camera": cam.to_json()}))
    manifest = {
        "command": "render",
        **run,
        "warnings": warnings,
        "views": [{"file": f.name, "camera": c.to_json()} for f, c in zip(files, cams)],
    }
    if args.sheet:
        sheet = contact_sheet(
            files,
            out / f"{name}_seed{args.seed}_sheet.png",
            labels=[f"view {i}" for i in range(len(files))],
            row_titles=[f"{name} seed {args.seed}"] * -(-len(files) // min(8, len(files))),
            settings=run,
        )
        manifest["sheet"] = sheet.name
    manifest_path = write_manifest(out / f"{name}_seed{args.seed}_manifest.json", manifest)
    print(f"wrote {len(cams)} views to {out} ({cams[0].width}x{cams[0].height}; settings in {manifest_path.name})")
    return 0


def _reference_from_args(args):
    """The reference images + cameras of ``invert``, checked before the model loads."""
    from .cameras import Camera, orbit_pose
    from .data import _open_rgb, load_transforms_scene

    if bool(args.image) == bool(args.transforms):
        raise SystemExit("invert: give either --image FILE (with --azimuth/--elevation/--radius/--fov) or --transforms")
    if args.transforms:
        scene = load_transforms_scene(args.transforms, _views(args.views) or [0])
        _print_scene_messages(scene)
        return scene.images, scene.cameras or []
    path = Path(args.image)
    if not path.is_file():
        from .errors import InputError

        raise InputError(f"--image {path}: no such file")
    image = _open_rgb(path)
    cam = Camera(orbit_pose(args.azimuth, args.elevation, args.radius), args.fov, *image.size)
    return [image], [cam]


def cmd_invert(args) -> int:
    from tqdm.auto import tqdm

    from .engine import default_invert_steps
    from .tokens import validate_token_name

    validate_token_name(args.name)  # names and files first: loading the model takes a while
    library = Path(args.library or default_library())
    if (library / args.name).exists():
        from .errors import InputError

        raise InputError(f"an object named '{args.name}' already exists in {library}: choose another --name")
    images, cameras = _reference_from_args(args)
    engine = _engine(args)
    steps = args.steps or default_invert_steps(engine.base.device)
    width, height = engine.training_size(images[0])
    print(
        f"training at {width}x{height} (the model's long side {min(engine.base.native_size, engine.train_long_side)}; "
        f"reference {images[0].size[0]}x{images[0].size[1]}, {len(images)} image(s)), {steps} steps on "
        f"{engine.base.device}{_eta_hint(engine.base.device, steps)}",
        file=sys.stderr,
    )
    _print_warnings(engine.render_warnings(cameras))
    bar = tqdm(total=steps, desc=f"invert {args.name}", unit="step")

    def progress(ev):
        if ev.get("phase") == "compiling":  # step 0: the first inversion at this size compiles (minutes on CUDA)
            bar.set_postfix_str("compiling the training graph")
            return
        bar.update(ev["step"] - bar.n)
        bar.set_postfix(loss=f"{ev['loss']:.4f}")

    source = {"views": _views(args.views) or [0]} if args.transforms else {"image": str(args.image)}
    entry = engine.invert(images, cameras, args.name, steps, seed=args.seed, on_progress=progress, source=source)
    bar.close()
    print(json.dumps(entry, indent=2))
    return 0


def _eta_hint(device, steps: int) -> str:
    """An estimate from measured numbers before the first step (tqdm shows the real pace after it)."""
    from .engine import CPU_SECONDS_PER_INVERT_STEP

    if getattr(device, "type", str(device)) != "cpu":
        return ""
    seconds = steps * CPU_SECONDS_PER_INVERT_STEP
    eta = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    return (
        f": about {eta} at the {CPU_SECONDS_PER_INVERT_STEP:g} s/step measured for the toy model on "
        "a 2-core CPU (the progress bar's ETA follows the real pace)"
    )


def cmd_train(args) -> int:
    from .data import load_dtu_scene, load_image_folder, load_scene_collection, load_transforms_scene
    from .training import TrainConfig, Trainer

    cfg = TrainConfig(
        mode=args.mode,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        scale_lr=not args.no_scale_lr,
        weight_decay=args.weight_decay,
        augmentation=args.augmentation,
        width=args.width,
        height=args.height,
        camera_parameterization=args.camera_parameterization,
        save_every=args.save_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        augmentation_pool=args.augmentation_pool,
    )
    views = _views(args.views)
    camera_param = None
    if args.dtu_root:
        scans = [int(s) for s in args.scans.split(",")] if args.scans else None
        if not scans:
            raise SystemExit("--dtu-root needs --scans (e.g. --scans 8 or a comma-separated list for mode 3)")
        scenes = [load_dtu_scene(args.dtu_root, s, views) for s in scans]
        if args.camera_parameterization == "dtu-12d":  # min-max over all cal18 cameras, like ViewNeTI
            from .camera_features import Dtu12d
            from .data import dtu_calibration_cameras

            camera_param = Dtu12d().fit(dtu_calibration_cameras(args.dtu_root))
    elif args.mode == 0:
        scenes = [load_image_folder(args.data)]
    elif args.mode == 3:
        scenes = load_scene_collection(args.data, args.limit_scenes)
        if views:
            scenes = [s.subset(views) for s in scenes]
    else:
        scenes = [load_transforms_scene(args.data, views)]
    trainer = Trainer(
        cfg,
        _model_or_default(args.model),
        scenes,
        view_mapper=args.view_mapper,
        output_dir=args.out,
        device=args.device,
        camera_param=camera_param,
    )
    if args.resume:
        step = trainer.resume(args.resume)
        print(f"resumed from step {step}")
    result = trainer.train()
    print(f"done: {result.step} steps, final loss {result.losses[-1]:.4f}; wrote {args.out}")
    return 0


def _model_or_default(model):
    from .engine import resolve_model

    return resolve_model(model)


def cmd_eval(args) -> int:
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import load_transforms_scene
    from .evaluation import EvalTable, LPIPSMetric, masked_psnr, masked_ssim
    from .sheets import contact_sheet, save_png, write_manifest

    seeds = [int(s) for s in args.seeds.split(",")]
    full = load_transforms_scene(args.transforms)  # files checked before the model loads
    _print_scene_messages(full)
    engine = _engine(args)
    name, _ = engine.object_mapper(args.object)
    train_views = _views(args.train_views)
    if train_views is None:  # the views the object was inverted from, as `viewneti invert` recorded them
        train_views = list(engine.library.source(name).get("views") or [0])
    views = _views(args.views)
    if views is None:
        views = [i for i in range(len(full.images)) if i not in train_views]
        print(f"eval: views {views} (all but the training view(s) {train_views})", file=sys.stderr)
    if not views:
        from .errors import InputError

        raise InputError(f"{args.transforms} has no views besides the training view(s) {train_views}: pass --views")
    scene = full.subset(views)
    lp = None
    if args.lpips:
        try:
            lp = LPIPSMetric(str(engine.base.device))
        except RuntimeError as exc:
            print(f"LPIPS skipped: {exc}", file=sys.stderr)
    table = EvalTable()
    steps, guidance = engine.sampling.resolve(args.steps, args.guidance)
    print(f"sampling: {steps} steps, guidance {guidance:g}", file=sys.stderr)
    cams = [_sized(c, args.size, engine.base.native_size) for c in scene.cameras or []]
    with_view = not args.no_view
    warnings = engine.render_warnings(cams, with_view=with_view)
    _print_warnings(warnings)
    out = Path(args.out) / scene.name
    out.mkdir(parents=True, exist_ok=True)
    run = _run_settings(engine, name, seeds[0], steps, guidance, with_view=with_view, scene=scene.name)
    files: list[Path] = []
    gt_files: list[Path] = []
    bar = tqdm(total=len(seeds) * len(cams), desc=f"eval {name} on {scene.name}", unit="view")
    for seed in seeds:
        for i, (cam, gt, view) in enumerate(zip(cams, scene.images, views)):
            pred = engine.render([cam], name, seed, steps, guidance, with_view=with_view)[0]
            gt = gt.resize(pred.size, Image.Resampling.BICUBIC)  # same aspect: the camera kept the image's aspect
            mask = scene.masks[i] if scene.masks else None
            if mask is not None:
                mask = Image.fromarray(mask.astype("uint8") * 255).resize(pred.size)
            files.append(
                save_png(pred, out / f"{name}_view{view:03d}_seed{seed}.png", {**run, "seed": seed, "view": view})
            )
            if seed == seeds[0]:
                gt_files.append(save_png(gt, out / f"gt_view{view:03d}.png", {"scene": scene.name, "view": view}))
            table.add(
                scene.name,
                view,
                seed,
                masked_psnr(pred, gt, mask),
                masked_ssim(pred, gt, mask),
                lp(pred, gt, mask) if lp else None,
            )
            bar.update(1)
    bar.close()
    print(table.format())
    contact_sheet(
        gt_files + files,
        out / "sheet.png",
        columns=len(cams),
        labels=[f"view {v}" for v in views] * (1 + len(seeds)),
        row_titles=["ground truth"] + [f"{name} seed {s}" for s in seeds],
        settings=run,
    )
    result = {
        "per_scene": table.per_scene(),
        "mean": table.mean_over_scenes(),
        "sampling": {"steps": steps, "guidance": guidance},
        "views": views,
        "train_views": train_views,
    }
    write_manifest(
        out / "manifest.json",
        {
            "command": "eval",
            **run,
            "seeds": seeds,
            "warnings": warnings,
            **result,
            "files": [f.name for f in gt_files + files],
            "cameras": [c.to_json() for c in cams],
        },
    )
    print(f"wrote {len(files)} renders, ground truth and sheet.png to {out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viewneti",
        description="ViewNeTI: view control of a frozen Stable-Diffusion-architecture model through learned text tokens. "
        "Pretrain a view-mapper (mode 3), fit objects to one or a few photos (mode 5), render novel views, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  viewneti info\n  viewneti render --orbit 8 --out outputs/orbit --sheet\n"
        "  viewneti invert --image mug.png --azimuth 30 --elevation 20 --radius 3.6 --fov 40 --name mug\n"
        "  viewneti invert --transforms my_scene/transforms.json --views 0 --name mug --steps 3000\n"
        "  viewneti train --mode 3 --data scenes/ --steps 50000 --out runs/pretrain\n",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show the loaded model, view-mapper and object tokens")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("render", help="render novel views of an object token")
    _add_model_args(p)
    _add_camera_args(p)
    p.add_argument("--object", help="object token name (default: the model's first object)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0); same seed -> same image")
    _add_sampling_args(p)
    p.add_argument("--no-view", action="store_true", help="object token only, without the view token (a baseline)")
    p.add_argument("--sheet", action="store_true", help="also write a contact sheet of all views")
    p.add_argument("--out", required=True, help="output folder for PNGs")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("invert", help="fit a new object token to reference image(s) (ViewNeTI mode 5)")
    _add_model_args(p)
    g = p.add_argument_group("reference (one of: --image with its camera, or --transforms)")
    g.add_argument("--image", help="one reference photo; its camera is an orbit pose (--azimuth ... --fov)")
    g.add_argument("--azimuth", type=float, default=0.0, help="--image camera azimuth, degrees (0 = front, from -Y)")
    g.add_argument("--elevation", type=float, default=25.0, help="--image camera elevation, degrees (default 25)")
    g.add_argument("--radius", type=float, default=3.6, help="--image camera distance to the anchor (default 3.6)")
    g.add_argument("--fov", type=float, default=40.0, help="--image vertical field of view, degrees (default 40)")
    g.add_argument("--transforms", help="transforms.json scene holding the reference image(s) and camera(s)")
    g.add_argument("--views", help="comma-separated indices of the reference views in --transforms (default 0)")
    p.add_argument("--name", required=True, help="name of the new object token (letters, digits, _ and -)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps (default: the paper's 3000 on a GPU, 150 on a CPU: about 4 min for the toy model "
        "on 2 cores; RESULTS.md §3 measured 14.3 / 14.8 dB at 150 / 600 steps)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser(
        "train",
        help="train mappers: modes 0, 2, 3, 4, 5 (see README)",
        description="Train ViewNeTI mappers. Modes: 0 object only (image folder); 2 view+object on one scene; "
        "3 shared view-mapper + one object per scene (pretraining, --data holds one folder per scene); "
        "4 fine-tune a pretrained view-mapper + new object; 5 frozen pretrained view-mapper + new object. "
        "Runs on one device, or several with `accelerate launch -m viewneti_backend.cli train ...`.",
    )
    p.add_argument("--mode", type=int, required=True, choices=[0, 2, 3, 4, 5])
    p.add_argument("--model", help="base model (default: the embedded toy world)")
    p.add_argument("--view-mapper", help="pretrained view-mapper folder (modes 4 and 5)")
    p.add_argument("--data", help="transforms.json scene folder; mode 3: folder of scene folders; mode 0: image folder")
    p.add_argument("--dtu-root", help="DTU root with Rectified/ and Calibration/cal18/ (instead of --data)")
    p.add_argument("--scans", help="DTU scan ids, comma-separated")
    p.add_argument("--views", help="comma-separated view indices to train on (e.g. 25 for DTU 1-view)")
    p.add_argument("--limit-scenes", type=int, help="mode 3: use only the first N scenes")
    p.add_argument("--out", required=True, help="run folder: checkpoints, view_mapper/, objects/<scene>/")
    p.add_argument(
        "--steps", type=int, default=3000, help="optimizer steps (paper: 3000 for modes 2/4/5, 50000 for mode 3)"
    )
    p.add_argument("--batch-size", type=int, default=3, help="images per micro-batch (paper: 3)")
    p.add_argument("--grad-accum", type=int, default=3, help="micro-batches per optimizer step (paper: 3)")
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="base learning rate, scaled by batch x accumulation x processes (paper: 1e-3 -> 9e-3)",
    )
    p.add_argument("--no-scale-lr", action="store_true", help="use --lr as is")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument(
        "--augmentation",
        type=int,
        choices=[0, 5, 7],
        help="0 none (each image is then VAE-encoded once, not every step), 5 (pretraining default), "
        "7 (per-scene default)",
    )
    p.add_argument(
        "--augmentation-pool",
        type=int,
        default=0,
        metavar="N",
        help="faster, changes the maths (off by default): VAE-encode N augmented copies of each scene once and "
        "draw every step's images from them, instead of augmenting and encoding afresh each step",
    )
    p.add_argument("--width", type=int, help="training width (default: model native size)")
    p.add_argument("--height", type=int, help="training height (default: model native size)")
    p.add_argument(
        "--camera-parameterization",
        default="anchor-pose-13d",
        choices=["anchor-pose-13d", "anchor-distance-14d", "dtu-12d"],
    )
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--resume", help="checkpoint-<step> folder or run folder to continue from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: auto; accelerate launch decides under it)")
    p.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], help="dtype of frozen parts (default: bf16 on CUDA)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="render a scene's cameras and score them (masked PSNR/SSIM, LPIPS-VGG)")
    _add_model_args(p)
    p.add_argument("--transforms", required=True, help="transforms.json scene with ground-truth images (+ masks)")
    p.add_argument("--views", help="comma-separated target view indices (default: every view but the training ones)")
    p.add_argument(
        "--train-views",
        help="the views the object was fitted to, left out by default (default: as `viewneti invert` recorded, else 0)",
    )
    p.add_argument("--object", help="object token to render (default: the model's first object)")
    p.add_argument(
        "--out", default="outputs/eval", help="folder for renders, ground truth, sheet, manifest (default outputs/eval)"
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (paper: 0,1)")
    _add_sampling_args(p)
    p.add_argument(
        "--size",
        type=_size,
        help="N (long side, aspect kept) or WxH (default: the model's native size as the long side)",
    )
    p.add_argument("--no-view", action="store_true", help="object token only (baseline)")
    p.add_argument(
        "--lpips", action="store_true", help="also compute LPIPS-VGG (needs the lpips package and cached weights)"
    )
    p.add_argument("--json", help="write the table as JSON here")
    p.set_defaults(func=cmd_eval)

    try:
        from .toyworld.cli import add_toyworld_parser
    except ImportError:
        add_toyworld_parser = None
    if add_toyworld_parser is not None:
        add_toyworld_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import InputError

    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
