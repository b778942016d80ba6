"""ViewNeTI in the toy world: benchmark single-view novel view synthesis on held-out objects against
two baselines measured in the same run (``viewneti toyworld benchmark``), the ceiling of view
control on the seen built-in objects (``ceiling``), and mode-2 interpolation. The view-mapper these
measure is pretrained by :mod:`.pretrain`.

Benchmark protocol (mirrors the paper's DTU protocol at toy scale): for each held-out object one
input view (azimuth 30, elevation 25) -> fit a new object token with the frozen view-mapper
(mode 5) -> render 16 target views on an orbit -> masked PSNR / SSIM against the renderer's ground
truth, object mask from the renderer, over several seeds. Baselines: (b) copy the input view to
every target; (c) the same object token rendered without a view token ("A photo of a <object>").
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic_files import atomic_write_text
from ..cameras import Camera, orbit_pose
from ..config_cli import option
from ..errors import InputError
from ..evaluation import (
    EvalTable,
    format_nvs,
    masked_psnr,
    masked_ssim,
    nvs_results,
    nvs_tables,
    paired_margin,
    score_novel_views,
)
from .dataset import render_scene
from .prior.model import HELDOUT_SEED_START
from .renderer import ToyObject


@dataclass
class BenchmarkConfig:
    """One benchmark (or ceiling) run; the fields with ``option`` metadata are the options of
    ``viewneti toyworld benchmark`` and ``ceiling`` (:mod:`..config_cli`)."""

    n_objects: int = field(
        default=8,
        metadata=option(
            f"held-out objects (seeds {HELDOUT_SEED_START}, {HELDOUT_SEED_START + 1}, ...)", flag="--objects"
        ),
    )
    first_seed: int = HELDOUT_SEED_START  # never seen by the prior or the view-mapper
    seeds: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata=option("comma-separated sampling seeds; each object is rendered (and inverted) once per seed"),
    )
    input_azimuth: float = 30.0
    input_elevation: float = 25.0
    radius: float = 3.6
    fov_y_deg: float = 40.0
    n_targets: int = field(
        default=16, metadata=option("novel views per object, evenly spaced on the orbit", flag="--targets")
    )
    target_elevation: float = 25.0
    size: int = 64
    invert_steps: int = field(default=400, metadata=option("mode-5 optimizer steps per inversion (the paper: 3000)"))
    render_steps: int = field(default=30, metadata=option("DPM-Solver++ steps of each novel view (the protocol's)"))
    guidance: float = field(
        default=2.0, metadata=option("classifier-free guidance (the toy prior saturates at SD's 7.5, see RESULTS.md)")
    )
    augmentation_pool: int = field(
        default=0,
        metadata=option(
            "invert with the training option that encodes N augmented copies once (changes the maths; "
            "0: the paper's fresh augmentation every step)",
            metavar="N",
        ),
    )


def nvs_benchmark(
    cfg: BenchmarkConfig,
    model_dir: str | Path,
    out_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """Single input view -> 16 novel views on held-out objects: ViewNeTI mode 5 vs copy-input vs no-view.

    ``nvs_benchmark.json`` is rewritten after every object with every per-view score, so a run that
    is stopped (a time limit) keeps its numbers; ``resume=True`` continues such a run in the same
    ``out_dir``: scored objects are kept, finished inversions in ``out_dir/library`` are reused, and
    the configuration and model must be the ones the run started with.
    """
    from tqdm.auto import tqdm

    from ..engine import Engine
    from ..sheets import contact_sheet
    from ..training import TrainConfig

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    library = out / "library"
    tables = nvs_tables()
    timing: dict[str, list[float]] = {"invert_s": [], "render_s": []}
    start = 0
    if resume:
        start = _load_partial_benchmark(out / "nvs_benchmark.json", cfg, str(model_dir), tables, timing)
    else:
        shutil.rmtree(library, ignore_errors=True)
    engine = Engine.load(str(model_dir), device=dev, library_dir=library)
    input_cam, targets = benchmark_cameras(cfg)
    sheet_rows: list[Image.Image] = []

    def write_summary(objects_done: int) -> dict:
        # rewritten after every object, so a run that is stopped early still leaves its numbers
        scores = nvs_results(tables)
        summary = {
            "config": asdict(cfg),
            "model": str(model_dir),
            "device": str(engine.base.device),
            "objects_done": objects_done,
            "complete": objects_done == cfg.n_objects,
            "results": scores["results"],
            "mean_invert_s": float(np.mean(timing["invert_s"])) if timing["invert_s"] else None,
            "mean_render_views_s": float(np.mean(timing["render_s"])) if timing["render_s"] else None,
            "margin_db": scores["margin_db"],
            "per_object_margin_db": scores["per_object_margin_db"],
            "rows": {m: t.rows for m, t in tables.items()},
            "timing": timing,
        }
        atomic_write_text(out / "nvs_benchmark.json", json.dumps(summary, indent=2))
        return summary

    summary: dict = {}
    for i in tqdm(range(cfg.n_objects), desc="held-out objects", disable=not progress):
        if start > i >= 4:
            continue  # scored before the resume, and not on the contact sheet
        seed = cfg.first_seed + i
        gt = render_scene(seed, targets, dev)
        inp = render_scene(seed, [input_cam], dev)
        for s in cfg.seeds:
            if i < start and not (s == cfg.seeds[0] and i < 4):
                continue  # scored before the resume, and not on the contact sheet
            name = f"heldout_{seed}_s{s}"
            if not engine.library.exists(name):  # a resumed run reuses every finished inversion
                t0 = time.perf_counter()
                options = TrainConfig(augmentation_pool=cfg.augmentation_pool) if cfg.augmentation_pool else None
                engine.invert(inp.images, inp.posed_cameras(), name, cfg.invert_steps, seed=s, config=options)
                timing["invert_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            preds = engine.render(targets, name, seed=s, steps=cfg.render_steps, guidance=cfg.guidance)
            if i >= start:
                timing["render_s"].append(time.perf_counter() - t0)
            plain = engine.render(targets, name, seed=s, steps=cfg.render_steps, guidance=cfg.guidance, with_view=False)
            if i >= start:
                score_novel_views(tables, f"obj_{seed}", s, gt.images, gt.object_masks(), inp.images[0], preds, plain)
            if s == cfg.seeds[0] and i < 4:
                sheet_rows += (
                    [inp.images[0]] + gt.images[::2] + [inp.images[0]] + preds[::2] + [inp.images[0]] + plain[::2]
                )
        if i >= start:
            summary = write_summary(i + 1)
        if sheet_rows:
            contact_sheet(
                sheet_rows, out / "nvs_sheet.png", columns=1 + len(gt.images[::2]), labels=[""] * len(sheet_rows)
            )
    if not summary:  # resumed a run that had already finished
        summary = write_summary(cfg.n_objects)
    text = format_nvs(tables)
    (out / "nvs_benchmark.txt").write_text(text)
    print(text)
    return summary


def _load_partial_benchmark(
    path: Path, cfg: BenchmarkConfig, model_dir: str, tables: dict[str, EvalTable], timing: dict[str, list[float]]
) -> int:
    """Fill ``tables`` and ``timing`` from a stopped run's JSON; returns how many objects it scored."""
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist (run without --resume to start)")
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}): run without --resume to start over") from e
    if "rows" not in prev:
        raise InputError(f"{path} was written by an older version without per-view scores: run without --resume")
    previous = {"augmentation_pool": 0, **prev["config"]}  # runs from before the option had it off
    if previous != json.loads(json.dumps(asdict(cfg))):
        changed = sorted(k for k in asdict(cfg) if previous.get(k) != asdict(cfg)[k])
        raise InputError(
            f"{path} was made with other settings ({', '.join(changed)} differ): give the same options, "
            "or another --out to start a new run"
        )
    if prev.get("model") != model_dir:
        raise InputError(f"{path} was made with the model {prev.get('model')}, not {model_dir}: give the same --model")
    for method, table in tables.items():
        table.rows = [tuple(r) for r in prev["rows"][method]]
    for key in timing:
        timing[key] = list(prev.get("timing", {}).get(key, []))
    return int(prev["objects_done"])


def benchmark_cameras(cfg: BenchmarkConfig) -> tuple[Camera, list[Camera]]:
    """The input camera and the ``n_targets`` target cameras evenly spaced on the orbit after it."""
    input_cam = Camera(
        orbit_pose(cfg.input_azimuth, cfg.input_elevation, cfg.radius), cfg.fov_y_deg, cfg.size, cfg.size
    )
    targets = [
        Camera(orbit_pose(a, cfg.target_elevation, cfg.radius), cfg.fov_y_deg, cfg.size, cfg.size)
        for a in target_azimuths(cfg)
    ]
    return input_cam, targets


def target_azimuths(cfg: BenchmarkConfig) -> list[float]:
    return [cfg.input_azimuth + 360.0 * (k + 1) / (cfg.n_targets + 1) for k in range(cfg.n_targets)]


def prior_ceiling(cfg: BenchmarkConfig, model_dir: str | Path, out_dir: str | Path, device: str | None = None) -> dict:
    """How much view control is there to find? The benchmark's views of the *seen* built-in objects.

    The built-ins (``toy_000`` ...) are object tokens learned jointly with the view-mapper in mode-3
    pretraining, so they bound what a mode-5 inversion can reach. Rows, scored like the benchmark
    (masked PSNR / SSIM against the renderer, same 16 target cameras, ``cfg.seeds``): their ViewNeTI
    renders; copying the input view; the token without the view token; and the prior itself through
    a stock diffusers pipeline with plain text: the object's full description plus each target's
    *true* coarse view phrase (the most view information the prior was trained with), and the
    description alone; and, as a scale for the scores, the renderer's own ground truth seen from an
    azimuth 10, 22.5 (half a view-phrase bucket) or 45 degrees off. Renders only, no training.
    Writes ``prior_ceiling.json``.
    """
    from ..engine import Engine
    from .prior.model import load_prior

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as no_user_objects:  # built-ins only
        engine = Engine.load(str(model_dir), device=dev, library_dir=no_user_objects, compile=False)
        return _prior_ceiling(cfg, engine, load_prior(model_dir, device=dev), out_dir, dev)


def _prior_ceiling(cfg: BenchmarkConfig, engine, prior, out_dir: str | Path, dev: str) -> dict:
    from .captions import describe, view_phrase
    from .prior.model import sample

    input_cam, targets = benchmark_cameras(cfg)
    methods = (
        "viewneti_seen_token",
        "copy_input",
        "no_view_token",
        "text_with_true_view_phrase",
        "text_without_view_phrase",
    )
    # A scale for the scores: the renderer's own ground truth, seen from an azimuth off by this much.
    offsets = (10.0, 22.5, 45.0)
    offset_rows = {f"ground_truth_azimuth_off_by_{d:g}deg": d for d in offsets}
    tables = {m: EvalTable() for m in methods + tuple(offset_rows)}
    objects = [o["name"] for o in engine.list_objects() if o.get("builtin")]
    if not objects:
        raise InputError(
            "the model ships no built-in objects (viewneti/objects): run `viewneti toyworld pretrain` first"
        )
    for name in objects:
        _, mapper = engine.object_mapper(name)
        toy_seed = int(mapper.config.extra.get("toy_seed", -1))
        if toy_seed < 0:
            raise InputError(
                f"built-in object '{name}' does not record its toy_seed: it was not made by `toyworld pretrain`"
            )
        gt, inp = render_scene(toy_seed, targets, dev), render_scene(toy_seed, [input_cam], dev)
        shifted = {
            row: render_scene(
                toy_seed,
                [
                    Camera(orbit_pose(a + d, cfg.target_elevation, cfg.radius), cfg.fov_y_deg, cfg.size, cfg.size)
                    for a in target_azimuths(cfg)
                ],
                dev,
            ).images
            for row, d in offset_rows.items()
        }
        text = describe(ToyObject.from_seed(toy_seed))
        for s in cfg.seeds:
            rows = {
                "viewneti_seen_token": engine.render(
                    targets, name, seed=s, steps=cfg.render_steps, guidance=cfg.guidance
                ),
                "copy_input": inp.images * len(targets),
                **shifted,
                "no_view_token": engine.render(
                    targets, name, seed=s, steps=cfg.render_steps, guidance=cfg.guidance, with_view=False
                ),
                "text_with_true_view_phrase": list(
                    sample(
                        prior,
                        [f"{text}, {view_phrase(a, cfg.target_elevation)}" for a in target_azimuths(cfg)],
                        seed=s,
                        steps=cfg.render_steps,
                        guidance=cfg.guidance,
                    )
                ),
                "text_without_view_phrase": list(
                    sample(prior, [text] * len(targets), seed=s, steps=cfg.render_steps, guidance=cfg.guidance)
                ),
            }
            for method, images in rows.items():
                for k, img in enumerate(images):
                    tables[method].add(
                        name,
                        k,
                        s,
                        masked_psnr(img, gt.images[k], gt.object_masks()[k]),
                        masked_ssim(img, gt.images[k], gt.object_masks()[k]),
                    )
    results = {m: {"per_object": t.per_scene(), "mean": t.mean_over_scenes()} for m, t in tables.items()}
    margins = {
        f"seen_token_vs_{b}": paired_margin(results, "viewneti_seen_token", b)
        for b in ("copy_input", "no_view_token", "text_with_true_view_phrase")
    }
    margins["text_view_phrase_vs_without"] = paired_margin(
        results, "text_with_true_view_phrase", "text_without_view_phrase"
    )
    summary = {
        "config": asdict(cfg),
        "device": dev,
        "objects": objects,
        "results": results,
        "margin_db": margins,
        "azimuth_offsets_deg": list(offsets),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "prior_ceiling.json", json.dumps(summary, indent=2))
    return summary


def mode2_interpolation(
    model_dir: str | Path,
    out_dir: str | Path,
    seed: int = HELDOUT_SEED_START + 100,
    views: int = 6,
    steps: int = 1000,
    device: str | None = None,
) -> dict:
    """ViewNeTI 'finding 1': view- and object-mapper from scratch on 6 views of one object, then render
    views between them (interpolation) and score them against ground truth."""
    from ..engine import Engine
    from ..sheets import contact_sheet
    from ..training import TrainConfig, Trainer

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    train_cams = [Camera(orbit_pose(360.0 * k / views, 25.0, 3.6), 40.0, 64, 64) for k in range(views)]
    between = [Camera(orbit_pose(360.0 * (k + 0.5) / views, 25.0, 3.6), 40.0, 64, 64) for k in range(views)]
    scene = render_scene(seed, train_cams, dev, name="mode2")
    gt = render_scene(seed, between, dev)
    engine = Engine.load(str(model_dir), device=dev, library_dir=out / "mode2_library")
    trainer = Trainer(TrainConfig(mode=2, steps=steps, width=64, height=64), engine.base, [scene], device=dev)
    result = trainer.train(progress=False)
    from ..pipeline import ViewNeTIPipeline

    pipe = ViewNeTIPipeline(engine.base, result.view_mapper)
    preds = pipe(between, result.object_mappers["mode2"], seed=0, steps=30, guidance=2.0)
    table = EvalTable()
    for k, (p, g) in enumerate(zip(preds, gt.images)):
        table.add("mode2", k, 0, masked_psnr(p, g, gt.object_masks()[k]), masked_ssim(p, g, gt.object_masks()[k]))
    copy = EvalTable()
    for k, g in enumerate(gt.images):  # nearest training view as the baseline
        copy.add(
            "nearest_train_view",
            k,
            0,
            masked_psnr(scene.images[k], g, gt.object_masks()[k]),
            masked_ssim(scene.images[k], g, gt.object_masks()[k]),
        )
    contact_sheet(scene.images + gt.images + preds, out / "mode2_sheet.png", columns=views, labels=[""] * (3 * views))
    summary = {"mode2": table.mean_over_scenes(), "nearest_train_view": copy.mean_over_scenes(), "steps": steps}
    (out / "mode2_interpolation.json").write_text(json.dumps(summary, indent=2))
    print(table.format("mode 2, in-between views"), copy.format("nearest training view"), sep="\n\n")
    return summary
