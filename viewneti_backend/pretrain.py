"""``viewneti pretrain``: a view-mapper for any SD-architecture model from a folder of multi-view objects
(Blender's Export Training Views, or any nerfstudio ``transforms.json`` folders), then a held-out test.

1. Mode 3 on all but the held-out objects: one shared view-mapper + one object-mapper per object,
   the preset's steps, augmentation 5, batch 3 x accumulation 3 (the paper's pretraining), at the
   model's training size (long side min(native, 512), the data's aspect: 512x384 for SD 2.1 on 4:3
   views, as in the paper).
2. For each held-out object: mode 5 (a new object token, the new view-mapper frozen) on one input
   view, then its other views rendered and scored against the exported ground truth (masked PSNR /
   SSIM), next to copying the input view and the token without the view token: the toy benchmark's
   protocol and scoring (:func:`viewneti_backend.evaluation.score_novel_views`). Ground truth, masks
   and the copied input view are framed as ``eval`` frames them, the centre at the render's aspect,
   never squashed (:func:`viewneti_backend.evaluation.framed_ground_truth`).

Writes ``OUT/view_mapper`` (for ``viewneti-server --view-mapper``), ``OUT/objects/<object>``,
``OUT/checkpoint-*``, and ``OUT/pretrain_eval.json`` / ``.txt``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic_files import atomic_write_text
from .camera_features import DEFAULT_PARAMETERIZATION, PARAMETERIZATIONS
from .compile_modes import COMPILE_CHOICES, COMPILE_HELP
from .config_cli import option
from .data import Scene, load_scene_collection
from .errors import InputError
from .messages import print_scene_messages
from .sampling_defaults import RECOMMENDED_HELP
from .training import MIXED_PRECISIONS


@dataclass(frozen=True)
class Preset:
    """Training and evaluation settings of one use; any of them can be overridden on the command line."""

    steps: int
    invert_steps: int  # mode-5 steps per held-out object
    seeds: tuple[int, ...]  # each held-out object is inverted and rendered once per seed
    eval_targets: int  # novel views scored per held-out object (0 = every view but the input)
    holdout_fraction: float  # objects held out for the test: max(1, round(fraction x objects))
    batch_size: int = 3
    grad_accum: int = 3
    augmentation: int = 5
    description: str = ""


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        steps=3000,
        invert_steps=500,
        seeds=(0,),
        eval_targets=8,
        holdout_fraction=0.0,
        description="a first view-mapper in minutes on one GPU: 3000 steps, 1 held-out object, 500-step inversions",
    ),
    "paper": Preset(
        steps=50000,
        invert_steps=3000,
        seeds=(0, 1),
        eval_targets=0,
        holdout_fraction=0.15,
        description="the paper's pretraining (50k steps) and single-view protocol (3000-step inversions, seeds 0 "
        "and 1, every other view scored), 15 % of the objects held out (DTU: 15 test scans of 103)",
    ),
}


def parse_holdout(text: str) -> list[str] | int:
    """``--holdout``: a count (``2``) or comma-separated object names (``chair,mug``)."""
    return int(text) if text.strip().isdigit() else [name for name in text.split(",") if name]


@dataclass
class PretrainRun:
    """One `viewneti pretrain` run (the CLI's options after the preset is applied); the fields with
    ``option`` metadata are its options (:mod:`.config_cli`)."""

    data: str = field(metadata=option("folder of object folders, each with a transforms.json (+ masks)"))
    out: str = field(metadata=option("run folder (view_mapper/, objects/, checkpoints, pretrain_eval.json)"))
    model: str | None = field(
        default=None, metadata=option("base model: hub id or diffusers folder (default: the embedded toy world)")
    )
    preset: str = field(default="quick", metadata=option("see below", choices=sorted(PRESETS)))
    steps: int | None = field(default=None, metadata=option("mode-3 optimizer steps (default: the preset's)"))
    invert_steps: int | None = field(
        default=None, metadata=option("mode-5 steps per held-out object (default: the preset's)")
    )
    seeds: tuple[int, ...] | None = field(
        default=None, metadata=option("comma-separated seeds of the held-out test (default: the preset's)")
    )
    eval_targets: int | None = field(
        default=None,
        metadata=option("novel views scored per held-out object (0: all but the input; default: the preset's)"),
    )
    holdout: list[str] | int | None = field(
        default=None,
        metadata=option(
            "objects to hold out for the test: a count (the last N in name order; 0 = no test) or "
            "comma-separated names (default: the preset's share, at least 1)",
            parse=parse_holdout,
        ),
    )
    input_view: int = field(default=0, metadata=option("index of the held-out objects' input view"))
    width: int | None = field(default=None, metadata=option("training width (default: the model's training size)"))
    height: int | None = field(default=None, metadata=option("training height (default: the model's training size)"))
    render_steps: int | None = field(
        default=None, metadata=option("denoising steps of the novel views " + RECOMMENDED_HELP)
    )
    guidance: float | None = field(default=None, metadata=option("guidance of the novel views " + RECOMMENDED_HELP))
    camera_parameterization: str = field(
        default=DEFAULT_PARAMETERIZATION,
        metadata=option(
            "the view-mapper's camera features (anchor-distance-14d when the export's camera distances vary)",
            choices=PARAMETERIZATIONS,
        ),
    )
    save_every: int = field(default=0, metadata=option("checkpoint every N steps (0: only at the end)"))
    seed: int = field(default=0, metadata=option("random seed of the run"))
    device: str | None = field(default=None, metadata=option("cpu or cuda (default: cuda when available)"))
    mixed_precision: str | None = field(
        default=None, metadata=option("dtype of frozen parts (default: bf16 on CUDA)", choices=MIXED_PRECISIONS)
    )
    compile: str = field(default="auto", metadata=option(COMPILE_HELP, choices=COMPILE_CHOICES))
    extra: dict = field(default_factory=dict)

    def resolved(self) -> dict:
        """The preset with this run's overrides: what is actually used."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        return {
            "steps": self.steps or p.steps,
            "invert_steps": self.invert_steps or p.invert_steps,
            "seeds": list(self.seeds if self.seeds else p.seeds),
            "eval_targets": p.eval_targets if self.eval_targets is None else self.eval_targets,
            "batch_size": p.batch_size,
            "grad_accum": p.grad_accum,
            "augmentation": p.augmentation,
            "holdout_fraction": p.holdout_fraction,
        }


def split_objects(scenes: list[Scene], holdout: list[str] | int | None, fraction: float) -> tuple[list, list]:
    """(training scenes, held-out scenes): named ones, or the last N in name order (N from the fraction)."""
    names = [s.name for s in scenes]
    if isinstance(holdout, list):
        missing = [n for n in holdout if n not in names]
        if missing:
            raise InputError(f"held-out objects {missing} are not in the data (it has {', '.join(names)})")
        held = [s for s in scenes if s.name in holdout]
    else:
        count = max(1, round(fraction * len(scenes))) if holdout is None else int(holdout)
        if count < 0:
            raise InputError("--holdout takes a count >= 0 or comma-separated object names")
        held = scenes[len(scenes) - count :] if count else []
    train = [s for s in scenes if s not in held]
    if not train:
        raise InputError(
            f"nothing left to train on: {len(scenes)} objects, {len(held)} held out. Export more objects, or "
            "give --holdout 0 to train on all of them without the held-out test"
        )
    return train, held


def evenly_spaced(candidates: list[int], count: int) -> list[int]:
    """``count`` entries spread over ``candidates`` (all of them for count 0 or more than there are)."""
    if count <= 0 or count >= len(candidates):
        return list(candidates)
    return [candidates[round(i * (len(candidates) - 1) / max(1, count - 1))] for i in range(count)]


def run_pretrain(run: PretrainRun, progress: bool = True) -> dict:
    """Train, test on the held-out objects, write the results; returns the summary (also in the JSON)."""
    import torch

    from .base_model import load_base_model
    from .engine import resolve_model, training_size
    from .evaluation import format_nvs, nvs_results
    from .training import TrainConfig, Trainer

    settings = run.resolved()
    out = Path(run.out)
    scenes = load_scene_collection(run.data)
    print_scene_messages(scenes)  # as render/eval/train do: split used, photos undistorted
    train_scenes, held = split_objects(scenes, run.holdout, settings["holdout_fraction"])
    model = resolve_model(run.model)
    device = run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(model, device=device)
    width, height = training_size(base.native_size, train_scenes[0].images[0].size)
    width, height = run.width or width, run.height or height
    print(
        f"pretrain ({run.preset}): {len(train_scenes)} objects, {len(held)} held out "
        f"({', '.join(s.name for s in held) or 'none'}); {settings['steps']} steps at {width}x{height} on {device}"
    )
    if run.compile != "off":
        from .base_model import compile_base_model
        from .compile_modes import resolve_compile_mode

        mode = resolve_compile_mode(run.compile, base.device)
        if mode is not None:
            compile_base_model(base, mode)
    config = TrainConfig(
        mode=3,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        grad_accum=settings["grad_accum"],
        augmentation=settings["augmentation"],
        width=width,
        height=height,
        camera_parameterization=run.camera_parameterization,
        save_every=run.save_every,
        seed=run.seed,
        mixed_precision=run.mixed_precision,
    )
    t0 = time.perf_counter()
    trainer = Trainer(config, base, train_scenes, output_dir=out, device=device)
    result = trainer.train(progress=progress)
    train_minutes = (time.perf_counter() - t0) / 60
    summary: dict = {
        "preset": run.preset,
        "settings": settings,
        "run": {k: v for k, v in asdict(run).items() if k != "extra"},
        "model": model,
        "base_model": base.name,
        "device": str(base.device),
        "train": {
            "objects": [s.name for s in train_scenes],
            "steps": result.step,
            "size": [width, height],
            "minutes": train_minutes,
            "loss_first_100": sum(result.losses[:100]) / max(1, len(result.losses[:100])),
            "loss_last_100": sum(result.losses[-100:]) / max(1, len(result.losses[-100:])),
        },
        "view_mapper": str(out / "view_mapper"),
        "heldout": [s.name for s in held],
    }
    if held:
        summary.update(_evaluate(run, settings, base, model, out, held, (width, height), progress))
        tables = summary.pop("_tables")
        text = format_nvs(tables)
        print(text)
        atomic_write_text(out / "pretrain_eval.txt", text)
        summary.update(nvs_results(tables))
        summary["rows"] = {m: t.rows for m, t in tables.items()}
    atomic_write_text(out / "pretrain_eval.json", json.dumps(summary, indent=2))
    print(f"wrote {out / 'view_mapper'} and {out / 'pretrain_eval.json'}")
    return summary


def _evaluate(run, settings, base, model, out: Path, held: list[Scene], size: tuple[int, int], progress: bool) -> dict:
    """Mode 5 on one view of each held-out object with the new (frozen) view-mapper; score its other views."""
    from .engine import Engine
    from .evaluation import framed_ground_truth, nvs_tables, score_novel_views
    from .mapper import NeTIMapper
    from .sampling_defaults import SamplingDefaults
    from .tokens import ObjectLibrary
    from .training import TrainConfig

    library_dir = out / "eval_library"
    shutil.rmtree(library_dir, ignore_errors=True)  # this run's inversions only
    view_mapper = NeTIMapper.from_pretrained(
        out / "view_mapper", expect_fingerprint=base.fingerprint, device=base.device
    )
    view_mapper.requires_grad_(False).eval()
    engine = Engine(
        base,
        view_mapper,
        ObjectLibrary(library_dir),
        model=model,
        view_mapper_name=str(out / "view_mapper"),
        sampling=SamplingDefaults.for_model(model),
    )
    steps, guidance = engine.sampling.resolve(run.render_steps, run.guidance)
    tables = nvs_tables()
    width, height = size
    no_masks = []
    timing = {"invert_s": [], "render_s": []}
    for scene in held:
        n, scene_cameras = len(scene.images), scene.cameras
        if scene_cameras is None:
            raise InputError(f"held-out object '{scene.name}' has no cameras: it needs a transforms.json")
        if not 0 <= run.input_view < n:
            raise InputError(f"held-out object '{scene.name}' has {n} views; --input-view {run.input_view} is not one")
        others = evenly_spaced([i for i in range(n) if i != run.input_view], settings["eval_targets"])
        if not others:
            raise InputError(f"held-out object '{scene.name}' has a single view: nothing to score the novel views on")
        # each target's camera, ground truth and mask at the render size, showing the same frustum (as eval does)
        framed = [
            framed_ground_truth(scene_cameras[i], scene.images[i], scene.masks[i] if scene.masks else None, size)
            for i in others
        ]
        cameras, gt, masks = [c for c, _, _ in framed], [g for _, g, _ in framed], [m for _, _, m in framed]
        if not scene.masks:
            no_masks.append(scene.name)
        source = scene.images[run.input_view]
        input_camera = scene_cameras[run.input_view]
        # the copy-input baseline is scored like a render: the input view framed the same way
        _, input_image, _ = framed_ground_truth(input_camera, source, None, size)
        for seed in settings["seeds"]:
            name = f"heldout_{scene.name}_s{seed}"[:64]
            t0 = time.perf_counter()
            engine.invert(  # at the size the view-mapper was trained at
                [source],
                [input_camera],
                name,
                settings["invert_steps"],
                seed=seed,
                config=TrainConfig(width=width, height=height),
            )
            timing["invert_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            preds = engine.render(cameras, name, seed=seed, steps=steps, guidance=guidance)
            timing["render_s"].append(time.perf_counter() - t0)
            plain = engine.render(cameras, name, seed=seed, steps=steps, guidance=guidance, with_view=False)
            score_novel_views(tables, scene.name, seed, gt, masks, input_image, preds, plain)
        if progress:
            print(f"held-out {scene.name}: {len(others)} novel views x {len(settings['seeds'])} seeds scored")
    return {
        "_tables": tables,
        "eval": {
            "input_view": run.input_view,
            "render_steps": steps,
            "guidance": guidance,
            "size": [width, height],
            "unmasked_objects": no_masks,  # scored over the whole image: their folders have no mask_path
            "timing": timing,
        },
    }
