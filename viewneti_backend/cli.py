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
from .config_cli import add_options, config_from_args
from .data_dir import library_dir
from .limits import CPU_INVERT_STEPS, GPU_INVERT_STEPS
from .sampling_defaults import RECOMMENDED_HELP

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
    return library_dir()


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


def _target_size(cam, size: int | tuple[int, int] | None, native: int) -> tuple[int, int]:
    """The size ``cam`` renders at: WxH as given, else N (None: the model's native size) as the long
    side with the camera's aspect on the latent grid."""
    from .cameras import size_for_long_side

    if isinstance(size, tuple):
        return size
    return size_for_long_side(cam.width, cam.height, size or native)


def _sized(cam, size: int | tuple[int, int] | None, native: int):
    """``cam`` at ``size`` (see :func:`_target_size`). N or the default keeps what the camera shows:
    rounding to the 8-px grid trims the image's edges (:meth:`Camera.framed`: no squash, the fov
    follows the size rendered); WxH is that exact size with fov_y kept."""
    width, height = _target_size(cam, size, native)
    return cam.with_size(width, height) if isinstance(size, tuple) else cam.framed(width, height)


def _check_orbit_args(args, what: str) -> None:
    """An orbit camera's --azimuth/--elevation/--radius/--fov, checked before the model loads."""
    import math

    from .cameras import fov_error
    from .errors import InputError

    for option, value in (("--azimuth", args.azimuth), ("--elevation", args.elevation)):
        if not math.isfinite(value):
            raise InputError(f"{what}: {option} must be a finite number of degrees, got {value}")
    if not (math.isfinite(args.radius) and args.radius > 0):
        raise InputError(f"{what}: --radius (the distance to the anchor) must be positive, got {args.radius}")
    problem = fov_error("--fov (the vertical field of view)", args.fov)
    if problem:
        raise InputError(f"{what}: {problem}")


def _json_cameras(path: str) -> list[tuple]:
    """``--cameras FILE``: each camera and whether the file gave its size. A camera without width and
    height renders at the model's native size (square, fov_y kept), as orbit cameras do."""
    from .cameras import INTRINSIC_FIELDS, Camera
    from .errors import InputError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--cameras {path}: {exc}") from None
    cameras = data.get("cameras") if isinstance(data, dict) else data
    if not isinstance(cameras, list) or not cameras:
        raise InputError(f'--cameras {path}: expected a non-empty list of cameras, or {{"cameras": [...]}}')
    out = []
    for i, c in enumerate(cameras):
        given = [k for k in ("width", "height") if isinstance(c, dict) and k in c]
        if len(given) == 1:
            raise InputError(
                f"--cameras {path}: camera {i} gives {given[0]} alone: "
                "give both width and height, or neither (the model's native size)"
            )
        pixels = [k for k in INTRINSIC_FIELDS if isinstance(c, dict) and c.get(k) is not None]
        if pixels and not given:
            raise InputError(
                f"--cameras {path}: camera {i} gives {', '.join(pixels)} in pixels but no width and height: "
                "give the image size they are measured at"
            )
        out.append((Camera.from_json(c), bool(given)))  # from_json refuses a camera that is not an object
    return out


def _file_cameras(args):
    """``--cameras`` / ``--transforms`` cameras as the files give them, each with whether its size is
    given (None for an orbit, whose values are checked instead); read before the model loads, so a
    wrong path, view index or value fails at once."""
    if args.cameras:
        return _json_cameras(args.cameras)
    if args.transforms:
        from .data import load_transforms_cameras
        from .messages import print_notes

        transforms = load_transforms_cameras(args.transforms, _views(args.views))  # no pixels: render needs none
        print_notes(transforms.notes())
        return [(cam, True) for cam in transforms.cameras]
    _check_orbit_args(args, "orbit camera")
    return None


def _cameras_from_args(args, native: int, file_cameras=None):
    """The cameras to render: ``--cameras`` at their own size (the model's native size where the file
    gives none) unless ``--size`` says otherwise, ``--transforms`` at the model's native size (long
    side) unless ``--size`` says otherwise, or an orbit."""
    from .cameras import Camera, orbit_pose

    cams = file_cameras if file_cameras is not None else _file_cameras(args)
    if cams is not None:
        if args.cameras and not args.size:
            return [cam if sized else cam.with_size(native, native) for cam, sized in cams]
        return [_sized(cam, args.size, native) for cam, _ in cams]
    width, height = args.size if isinstance(args.size, tuple) else (args.size or native, args.size or native)
    return [
        Camera(
            orbit_pose(args.azimuth + 360.0 * i / args.orbit, args.elevation, args.radius), args.fov, width, height
        ).validated()
        for i in range(args.orbit)
    ]


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


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="DPM-Solver++ denoising steps " + RECOMMENDED_HELP)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale " + RECOMMENDED_HELP)


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

    from .messages import print_warnings
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
    print_warnings(warnings)  # before the work: the user can stop a render that will not look right
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


def reference_from_args(args):
    """The reference images + cameras of ``invert``, checked before the model loads. Transparency is
    kept: the engine composites it on the background its model renders behind objects (alpha = mask)."""
    from PIL import Image, ImageOps

    from .cameras import Camera, orbit_pose
    from .data import load_transforms_scene
    from .engine import reference_background
    from .errors import InputError
    from .messages import print_scene_messages

    if bool(args.image) == bool(args.transforms):
        raise SystemExit("invert: give either --image FILE (with --azimuth/--elevation/--radius/--fov) or --transforms")
    if args.transforms:
        background = reference_background(_model_or_default(args.model))
        scene = load_transforms_scene(args.transforms, _views(args.views) or [0], background=background)
        print_scene_messages(scene)
        return scene.images, scene.posed_cameras()
    _check_orbit_args(args, "--image camera")
    path = Path(args.image)
    if not path.is_file():
        raise InputError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im)
            image.load()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    cam = Camera(orbit_pose(args.azimuth, args.elevation, args.radius), args.fov, *image.size)
    return [image], [cam]


def cmd_invert(args) -> int:
    from tqdm.auto import tqdm

    from .engine import default_invert_steps
    from .messages import print_warnings
    from .progress import Progress
    from .tokens import validate_token_name

    validate_token_name(args.name)  # names and files first: loading the model takes a while
    library = Path(args.library or default_library())
    if (library / args.name).exists():
        from .errors import InputError

        raise InputError(f"an object named '{args.name}' already exists in {library}: choose another --name")
    images, cameras = reference_from_args(args)
    engine = _engine(args)
    steps = args.steps or default_invert_steps(engine.base.device)
    width, height = engine.training_size(images[0])
    print(
        f"training at {width}x{height} (the model's long side {min(engine.base.native_size, engine.train_long_side)}; "
        f"reference {images[0].size[0]}x{images[0].size[1]}, {len(images)} image(s)), {steps} steps on "
        f"{engine.base.device}{_eta_hint(engine.base.device, steps)}",
        file=sys.stderr,
    )
    # what inversion does: it trains at width x height, so only the cameras' own problems apply (the server's rule)
    print_warnings(engine.invert_warnings(cameras, images[0].size))
    bar = tqdm(total=steps, desc=f"invert {args.name}", unit="step")

    def progress(p: Progress) -> None:
        if p.phase == "compiling":  # step 0: the first inversion at this size compiles (minutes on CUDA)
            bar.set_postfix_str("compiling the training graph")
            return
        bar.update(p.step - bar.n)
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}")

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
    from .data import DTU_TRAIN_SIZE, load_dtu_scene, load_image_folder, load_scene_collection, load_transforms_scene
    from .messages import print_scene_messages
    from .training import TrainConfig, Trainer
    from .training_modes import TRAINING_MODES

    cfg = config_from_args(
        TrainConfig,
        args,
        # DTU: the paper's 512x384 (not the model's square native size) unless given
        width=args.width or (DTU_TRAIN_SIZE[0] if args.dtu_root else None),
        height=args.height or (DTU_TRAIN_SIZE[1] if args.dtu_root else None),
    )
    views = _views(args.views)
    camera_param = None
    if args.dtu_root:
        scans = [int(s) for s in args.scans.split(",")] if args.scans else None
        if not scans:
            raise SystemExit("--dtu-root needs --scans (e.g. --scans 8 or a comma-separated list for mode 3)")
        scenes = [load_dtu_scene(args.dtu_root, s, views) for s in scans]
        if args.camera_parameterization == "dtu-12d":  # min-max over all cal18 files' raw P, like ViewNeTI
            from .camera_features import Dtu12d
            from .data import dtu_calibration_projections

            camera_param = Dtu12d.from_projections(list(dtu_calibration_projections(args.dtu_root).values()))
    elif not TRAINING_MODES[args.mode].uses_view:
        scenes = [load_image_folder(args.data)]
    elif TRAINING_MODES[args.mode].many_scenes:
        scenes = load_scene_collection(args.data, args.limit_scenes)
        if views:
            scenes = [s.subset(views) for s in scenes]
    else:
        scenes = [load_transforms_scene(args.data, views)]
    print_scene_messages(scenes)  # which split of a NeRF-synthetic folder, which photos were undistorted
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


def _size_arg(text: str) -> tuple[int, int]:
    from .errors import InputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"sizes are WIDTHxHEIGHT, e.g. 768x576, got {text!r}") from None
    return w, h


def _eval_dtu(args) -> int:
    """The paper's DTU protocol: render at 768x576 (DTU frame, no rig), score at 400x300 with masks.
    Each scan's renders, ground truth, sheet and manifest go to ``--out``/scan<id>, as ``--transforms``'s do."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import DTU_TEST_VIEWS, DTU_TRAIN_VIEWS, load_dtu_scene
    from .errors import InputError
    from .evaluation import (
        DTU_RENDER_SIZE,
        EvalOutputs,
        LPIPSMetric,
        dtu_scores,
        dtu_summary,
        format_dtu_summary,
        load_dtu_mask,
    )
    from .messages import print_warnings

    if not args.scans:
        raise InputError("--dtu-root needs --scans (e.g. --scans 8,21,30: the paper's 15 test scans)")
    scans = [int(s) for s in args.scans.split(",")]
    inputs = [int(v) for v in args.input_views.split(",")] if args.input_views else [25]
    all_views = DTU_TRAIN_VIEWS + DTU_TEST_VIEWS  # the 34 views (9 input candidates + 25 test)
    width, height = _size_arg(args.render_size)
    if width * DTU_RENDER_SIZE[1] != height * DTU_RENDER_SIZE[0]:
        raise InputError(
            f"--render-size {args.render_size}: the protocol scores renders resized to "
            f"{DTU_RENDER_SIZE[0]}x{DTU_RENDER_SIZE[1]}; give a size of that 4:3 aspect (e.g. 64x48) so they "
            "are not squashed"
        )
    engine = _engine(args)
    lp, lpips_missing = None, None
    try:
        lp = LPIPSMetric(str(engine.base.device))
    except RuntimeError as exc:
        lpips_missing = str(exc)
        print(f"LPIPS: missing ({exc}); reported as missing, not estimated", file=sys.stderr)
    steps, guidance = engine.sampling.resolve(args.steps, args.guidance)
    seeds = [int(s) for s in args.seeds.split(",")]
    with_view = not args.no_view
    rows, missing_masks = [], []
    bar = tqdm(total=len(scans) * len(seeds) * len(all_views), desc=f"eval DTU ({steps} steps)", unit="view")
    for scan in scans:
        scene = load_dtu_scene(args.dtu_root, scan, all_views, lighting=args.lighting, size=DTU_RENDER_SIZE)
        cams = [c.with_size(width, height) for c in scene.posed_cameras()]
        name = (args.object or "scan{scan}").format(scan=scan)
        warnings = engine.render_warnings(cams, with_view=with_view, use_rig=False)
        print_warnings(warnings)
        run = _run_settings(engine, name, seeds[0], steps, guidance, with_view=with_view, scene=scene.name)
        files = EvalOutputs(Path(args.out) / scene.name, name, scene.name, run)
        for cam_id, gt, cam in zip(all_views, scene.images, cams):
            files.add_ground_truth(cam_id, gt, cam)
        masks = {}
        for cam_id in all_views:
            masks[cam_id], found = load_dtu_mask(args.masks, scan, cam_id)
            if not found:
                missing_masks.append(f"scan{scan}/{cam_id:03d}")
        scan_rows = []
        for seed in seeds:
            bar.set_postfix_str(f"{scene.name} seed {seed}")
            done = bar.n

            def on_step(step: int, total: int, done: int = done, n: int = len(cams)) -> None:
                bar.update(max(0, done + n * step // total - bar.n))  # the views of the batch, step by step

            preds = engine.render(
                cams, name, seed, steps, guidance, with_view=with_view, use_rig=False, on_step=on_step
            )
            bar.update(done + len(cams) - bar.n)
            for cam_id, pred, gt, cam in zip(all_views, preds, scene.images, cams):
                files.add_render(cam_id, seed, pred, cam)
                if pred.size != DTU_RENDER_SIZE:  # a smaller --render-size (smoke runs): upsampled first
                    pred = pred.resize(DTU_RENDER_SIZE, Image.Resampling.BICUBIC)
                s = dtu_scores(pred, gt, masks[cam_id], lp)
                scan_rows.append({"scan": scan, "view": cam_id, "seed": seed, "input": cam_id in inputs, **s})
        rows.extend(scan_rows)
        files.finish(
            all_views,
            seeds,
            {
                "command": "eval",
                "protocol": "dtu",
                **run,
                "seeds": seeds,
                "warnings": warnings,
                "input_views": inputs,
                "render_size": [width, height],
                "rows": scan_rows,
                "cameras": [c.to_json() for c in cams],
            },
        )
    bar.close()
    test_views = [v for v in DTU_TEST_VIEWS if v not in inputs]
    summary = dtu_summary(rows, test_views, all_views, lpips_missing=lpips_missing)
    summary.update(
        sampling={"steps": steps, "guidance": guidance},
        render_size=[width, height],
        input_views=inputs,
        missing_masks=missing_masks,
        rows=rows,
    )
    print(format_dtu_summary(summary))
    if missing_masks:
        print(
            f"masks: {len(missing_masks)} views have no mask file: scored over the whole image (as the reference)",
            file=sys.stderr,
        )
    print(f"wrote renders, ground truth, sheet.png and manifest.json per scan to {args.out}", file=sys.stderr)
    if args.json:
        from .atomic_files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(summary, indent=2))
    return 0


def _crop_note(view: int, image_size: tuple[int, int], cam) -> str | None:
    """Says so when the ground truth of ``view`` is cropped to the render's aspect (None when it is not)."""
    from .cameras import centre_crop_box

    w, h = image_size
    left, top, right, bottom = centre_crop_box(w, h, cam.width / cam.height)  # what framed_ground_truth keeps
    kept = (right - left, bottom - top)
    if w - kept[0] < 1 and h - kept[1] < 1:  # the same aspect (up to a fraction of a pixel)
        return None
    return (
        f"view {view}: {cam.width}x{cam.height} has another aspect than its {w}x{h} image: the centre "
        f"{kept[0]:.0f}x{kept[1]:.0f} is scored and rendered (the camera narrowed to it), not squashed"
    )


def cmd_eval(args) -> int:
    from tqdm.auto import tqdm

    from .data import load_transforms_scene
    from .errors import InputError
    from .evaluation import EvalOutputs, EvalTable, LPIPSMetric, framed_ground_truth, masked_psnr, masked_ssim
    from .messages import print_scene_messages, print_warnings

    if args.dtu_root:
        return _eval_dtu(args)
    if not args.transforms:
        raise InputError("give --transforms (a scene with ground truth) or --dtu-root with --scans")
    seeds = [int(s) for s in args.seeds.split(",")]
    full = load_transforms_scene(args.transforms)  # files checked before the model loads
    print_scene_messages(full)
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
    # render camera, ground truth and mask of each view at the render size, showing the same frustum
    framed = [
        framed_ground_truth(cam, image, mask, _target_size(cam, args.size, engine.base.native_size))
        for cam, image, mask in zip(scene.posed_cameras(), scene.images, scene.masks or [None] * len(views))
    ]
    cams = [cam for cam, _, _ in framed]
    notes = [_crop_note(v, image.size, cam) for v, image, cam in zip(views, scene.images, cams)]
    for note in dict.fromkeys(n for n in notes if n):
        print(f"note: {note}", file=sys.stderr)
    with_view = not args.no_view
    warnings = engine.render_warnings(cams, with_view=with_view)
    print_warnings(warnings)
    run = _run_settings(engine, name, seeds[0], steps, guidance, with_view=with_view, scene=scene.name)
    files = EvalOutputs(Path(args.out) / scene.name, name, scene.name, run)
    for view, (cam, gt, _) in zip(views, framed):
        files.add_ground_truth(view, gt, cam)
    bar = tqdm(total=len(seeds) * len(cams), desc=f"eval {name} on {scene.name}", unit="view")
    for seed in seeds:
        for view, (cam, gt, mask) in zip(views, framed):
            pred = engine.render([cam], name, seed, steps, guidance, with_view=with_view)[0]
            files.add_render(view, seed, pred, cam)
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
    result = {
        "per_scene": table.per_scene(),
        "mean": table.mean_over_scenes(),
        "sampling": {"steps": steps, "guidance": guidance},
        "views": views,
        "train_views": train_views,
    }
    files.finish(
        views,
        seeds,
        {
            "command": "eval",
            **run,
            "seeds": seeds,
            "warnings": warnings,
            **result,
            "cameras": [c.to_json() for c in cams],
        },
    )
    print(f"wrote {len(files.renders)} renders, ground truth and sheet.png to {files.folder}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_pretrain(args) -> int:
    from .pretrain import PretrainRun, run_pretrain

    run_pretrain(config_from_args(PretrainRun, args))
    return 0


def _add_pretrain_parser(sub) -> None:
    from .pretrain import PRESETS, Preset, PretrainRun

    presets = "\n".join(f"  {name:7s} {p.description}" for name, p in PRESETS.items())
    p = sub.add_parser(
        "pretrain",
        help="pretrain a view-mapper (mode 3) on exported objects, then test it on held-out ones",
        description="Pretrain a view-mapper for a base model (mode 3: one shared view-mapper, one object-mapper per "
        f"object; augmentation {Preset.augmentation}, batch {Preset.batch_size} x accumulation {Preset.grad_accum} "
        "as in the paper) on a folder of transforms.json object "
        "folders (Blender: ViewNeTI > Export Training Views), at the model's training size (long side "
        "min(native, 512), the data's aspect). Then, on each held-out object: mode 5 on one view, its other views "
        "rendered and scored against the ground truth (masked PSNR/SSIM) next to copying the input view and the "
        "token without the view token. Writes OUT/view_mapper (use it with viewneti-server --view-mapper), "
        "OUT/objects/, checkpoints and OUT/pretrain_eval.json/.txt.",
        epilog="presets:\n" + presets + "\n\nexample (real SD 2.1):\n  viewneti pretrain --model "
        "/models/stable-diffusion-2-1 --data exports/ --preset paper --out runs/sd21_views",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, PretrainRun, required=["data", "out"])
    p.set_defaults(func=cmd_pretrain)


def cmd_import_reference(args) -> int:
    from .reference_import import import_reference

    result = import_reference(
        args.file,
        args.out,
        dtu_calibration=args.dtu_calibration,
        num_layers=args.num_layers,
        overwrite=args.overwrite,
        rig=not args.no_rig,
    )
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


def cmd_rig(args) -> int:
    from .camera_rig import CameraRig
    from .data import dtu_calibration_projections
    from .errors import InputError
    from .mapper import NeTIMapper

    mapper = NeTIMapper.from_pretrained(args.view_mapper)
    param = dict(mapper.config.camera_parameterization or {})
    if mapper.config.kind != "view" or not param:
        raise InputError(f"{args.view_mapper} is not a view-mapper")
    if args.remove:
        param.pop("rig", None)
        print(f"removed the camera rig of {args.view_mapper}: cameras go to it unchanged")
    else:
        if not args.dtu_calibration:
            raise InputError("give --dtu-calibration (the cameras the rig is fitted to) or --remove")
        if param.get("name") != "dtu-12d":
            raise InputError(f"the rig maps cameras into DTU's frame; this view-mapper uses {param.get('name')}")
        projections = list(dtu_calibration_projections(args.dtu_calibration).values())
        rig = CameraRig.fit(projections, anchor_radius=args.anchor_radius)
        param["rig"] = rig.to_dict()
        print(json.dumps({"rig": rig.to_dict(), "cap": rig.describe_cap()}, indent=2))
    mapper.config.camera_parameterization = param
    mapper.save_pretrained(args.view_mapper)  # atomic: temp folder, then swapped in
    return 0


def _add_rig_parser(sub) -> None:
    p = sub.add_parser(
        "rig",
        help="fit (or remove) the camera rig that drives a DTU-trained view-mapper from Blender cameras",
        description="A DTU-trained view-mapper (dtu-12d) has only seen DTU's cameras, in DTU's frame (mm, +y down). "
        "The rig maps a camera given relative to the anchor (Blender convention) into that frame: a similarity "
        "transform fitted from the calibration cameras (object centre, up, front = middle of the camera cap, "
        "scale: DTU's mean camera distance = --anchor-radius anchor units) plus DTU's lens. It is stored in the "
        "view-mapper's config; the engine (CLI, server) then applies it to every camera and reports cameras "
        "outside the training range. `import-reference` fits one for the authors' view-mapper by default.",
        epilog="Example:\n  viewneti rig --view-mapper sd21/viewneti/view_mapper --dtu-calibration DTU/Calibration/cal18",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--view-mapper", required=True, help="the view-mapper folder to update")
    p.add_argument("--dtu-calibration", help="DTU's Calibration/cal18 folder (or the DTU root) to fit the rig to")
    p.add_argument(
        "--anchor-radius",
        type=float,
        default=3.6,
        help="anchor units that correspond to DTU's mean camera distance (~0.65 m) (default 3.6: the orbit default)",
    )
    p.add_argument("--remove", action="store_true", help="remove the rig: cameras reach the mapper unchanged")
    p.set_defaults(func=cmd_rig)


def _add_import_reference_parser(sub) -> None:
    p = sub.add_parser(
        "import-reference",
        help="convert the ViewNeTI authors' mapper checkpoint (.pt) to this project's safetensors + JSON",
        description="Convert a checkpoint written by the ViewNeTI authors' code (github.com/jmhb0/view_neti: "
        "mapper-steps-N_view.pt or mapper-steps-N_object.pt) into this project's mapper format. The file is read "
        "with a restricted unpickler: tensors and containers only, the pickled Fourier encoder through an inert "
        "stand-in whose B must equal the seed-0 matrix; a file asking for anything else is refused and nothing "
        "is written. A view file becomes OUT/view_mapper, an object file OUT/objects/<scanN> (one per token): "
        "give OUT = <SD 2.1 folder>/viewneti to bundle them with the model, or pass --view-mapper OUT/view_mapper "
        "and --library OUT/objects.",
        epilog="Example:\n  viewneti import-reference mapper-steps-50000_view.pt --out sd21/viewneti "
        "--dtu-calibration DTU/Calibration/cal18\n  viewneti import-reference mapper-steps-50000_object.pt "
        "--out sd21/viewneti",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="the authors' .pt file (never executed)")
    p.add_argument("--out", required=True, help="folder to write view_mapper/ and objects/<name>/ into")
    p.add_argument(
        "--dtu-calibration",
        help="DTU's Calibration/cal18 folder (pos_001.txt ... pos_064.txt) or the DTU root holding it; required "
        "for a view file: the dtu-12d min/max are not stored in it (the authors' code recomputes them from these)",
    )
    p.add_argument(
        "--num-layers",
        type=int,
        default=16,
        help="cross-attention layers the mappers were trained for (the authors' code: 16, SD 2's; change only "
        "for a different base model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing view_mapper/ or objects/<name>/")
    p.add_argument(
        "--no-rig",
        action="store_true",
        help="do not attach the camera rig (fitted from --dtu-calibration, see `viewneti rig`) to a view-mapper: "
        "cameras must then be given in DTU's frame",
    )
    p.set_defaults(func=cmd_import_reference)


def build_parser() -> argparse.ArgumentParser:
    from .training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="viewneti",
        description="ViewNeTI: view control of a frozen Stable-Diffusion-architecture model through learned text tokens. "
        "Pretrain a view-mapper (mode 3), fit objects to one or a few photos (mode 5), render novel views, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  viewneti info\n  viewneti render --orbit 8 --out outputs/orbit --sheet\n"
        "  viewneti invert --image mug.png --azimuth 30 --elevation 20 --radius 3.6 --fov 40 --name mug\n"
        "  viewneti invert --transforms my_scene/transforms.json --views 0 --name mug\n"
        f"    (steps: {GPU_INVERT_STEPS} on a GPU, {CPU_INVERT_STEPS} on a CPU; --steps N to change)\n"
        "  viewneti train --mode 3 --data scenes/ --steps 50000 --out runs/pretrain\n"
        "  viewneti pretrain --data exports/ --preset paper --model /models/stable-diffusion-2-1 --out runs/views\n",
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
        help=f"optimizer steps (default: the paper's {GPU_INVERT_STEPS} on a GPU, {CPU_INVERT_STEPS} on a CPU, "
        "where a toy-model step takes a second or two; what 150 steps reach against 600: RESULTS.md §3)",
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
    p.add_argument("--model", help="base model (default: the embedded toy world)")
    p.add_argument("--view-mapper", help="pretrained view-mapper folder (modes 4 and 5)")
    p.add_argument("--data", help="transforms.json scene folder; mode 3: folder of scene folders; mode 0: image folder")
    p.add_argument("--dtu-root", help="DTU root with Rectified/ and Calibration/cal18/ (instead of --data)")
    p.add_argument("--scans", help="DTU scan ids, comma-separated")
    p.add_argument("--views", help="comma-separated view indices to train on (e.g. 25 for DTU 1-view)")
    p.add_argument("--limit-scenes", type=int, help="mode 3: use only the first N scenes")
    p.add_argument("--out", required=True, help="run folder: checkpoints, view_mapper/, objects/<scene>/")
    p.add_argument("--resume", help="checkpoint-<step> folder or run folder to continue from")
    p.add_argument("--device", help="cpu or cuda (default: auto; accelerate launch decides under it)")
    add_options(p.add_argument_group("training"), TrainConfig, required=["mode"])
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="render a scene's cameras and score them (masked PSNR/SSIM, LPIPS-VGG)")
    _add_model_args(p)
    p.add_argument("--transforms", help="transforms.json scene with ground-truth images (+ masks)")
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
    g = p.add_argument_group(
        "DTU protocol (instead of --transforms)",
        "The paper's scoring: the 34 views (9 input ids + 25 test ids) of each scan rendered at 768x576 in DTU's "
        "frame, ground truth 1600x1200 -> 768x576, both -> 400x300 (bicubic tensor resize), RegNeRF/IDR masks "
        "(> 0.01), masked PSNR, SSIM and LPIPS-VGG on background-zeroed images; means over views per scan and "
        "seed, then over scans, for the 25 test views and for all 34 views. LPIPS needs the lpips package and "
        "its weights; without them it is reported as missing.",
    )
    g.add_argument("--dtu-root", help="DTU root with Rectified/ and Calibration/cal18/")
    g.add_argument(
        "--scans", help="scan ids, comma-separated (the paper's 15: 8,21,30,31,34,38,40,41,45,55,63,82,103,110,114)"
    )
    g.add_argument("--masks", help="RegNeRF/IDR mask folder (submission_data/idrmasks: scan<id>/mask/<cam>.png)")
    g.add_argument("--input-views", default="25", help="the scan's input view id(s), excluded from the 25 (default 25)")
    g.add_argument("--lighting", type=int, default=3, help="DTU lighting of the ground truth (default 3)")
    g.add_argument("--render-size", default="768x576", help="render size WxH (the paper: 768x576)")
    p.set_defaults(func=cmd_eval)

    _add_pretrain_parser(sub)
    _add_import_reference_parser(sub)
    _add_rig_parser(sub)

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
