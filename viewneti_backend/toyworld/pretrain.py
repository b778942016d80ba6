"""ViewNeTI in the toy world, mode 3: pretrain the view-mapper on many toy objects and ship it with a
few object tokens inside the model folder (``viewneti toyworld pretrain``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic_files import replace_directory
from ..compile_modes import resolve_compile_mode
from ..config_cli import nested, option
from ..errors import Cancelled, InputError
from ..sampling_defaults import FILENAME as SAMPLING_FILENAME
from ..training import TrainConfig, Trainer
from .dataset import render_scene
from .renderer import RADIUS_RANGE, random_cameras


def pretrain_training(**overrides: Any) -> TrainConfig:
    """The toy view-mapper's mode-3 run: the paper's optimiser settings (TrainConfig's defaults) with
    6000 steps, augmentation 5 and the ``anchor-distance-14d`` camera features (the toy cameras'
    distance varies, and with anchor-pose-13d the mapper rendered one object size at every distance,
    RESULTS.md §3), logging every 100 steps; ``overrides`` replace any of them."""
    defaults: dict[str, Any] = dict(
        mode=3, steps=6000, augmentation=5, log_every=100, camera_parameterization="anchor-distance-14d"
    )
    return TrainConfig(**{**defaults, **overrides})


def parse_radius_range(text: str) -> tuple[float, float]:
    """``--radius-range``: ``MIN,MAX`` (or one number) -> a (min, max) pair of positive distances."""
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


@dataclass
class PretrainConfig:
    """Mode-3 pretraining of the toy view-mapper (the paper: 88 scenes x 34 views, 50k steps): the
    training run itself (``train``, a :class:`TrainConfig`; its width and height are set from
    ``size``) and the toy data it runs on. The fields with ``option``/``nested`` metadata are
    ``viewneti toyworld pretrain``'s options (:mod:`..config_cli`)."""

    train: TrainConfig = field(
        default_factory=pretrain_training,
        metadata=nested("steps", "batch_size", "grad_accum", "seed", "camera_parameterization"),
    )
    n_objects: int = field(default=120, metadata=option("toy objects to pretrain on", flag="--objects"))
    views: int = field(default=32, metadata=option("rendered views per object"))
    first_seed: int = 0
    size: int = 64
    ship_objects: int = field(default=4, metadata=option("object tokens to ship as built-ins (toy_000, ...)"))
    max_minutes: float | None = field(
        default=None, metadata=option("stop after this many minutes (keeps what was learned)", flag="--minutes")
    )
    compile: bool = field(
        default=True,
        metadata=option(
            "on CUDA, run the UNet/VAE eagerly (default: CUDA graphs: a tiny model's step is otherwise launch-bound)"
        ),
    )
    radius_range: tuple[float, float] = field(
        default=RADIUS_RANGE,
        metadata=option(
            "training camera distances from the anchor; equal values (3.6,3.6) pretrain at one fixed radius, "
            "as DTU's cameras nearly are",
            metavar="MIN,MAX",
            parse=parse_radius_range,
        ),
    )

    def __post_init__(self) -> None:
        if self.train.mode != 3:
            raise InputError(
                f"toy-world pretraining is mode 3 (a view-mapper over many objects), got mode {self.train.mode}"
            )


def pretrain_view_mapper(
    cfg: PretrainConfig, model_dir: str | Path, out_dir: str | Path, device: str | None = None, progress: bool = True
) -> dict:
    """Train mode 3 on toy objects; write the view-mapper and a few objects into ``model_dir/viewneti``."""
    from ..base_model import load_base_model

    lo, hi = cfg.radius_range
    if not 0 < lo <= hi:
        raise InputError(
            f"radius range {cfg.radius_range}: give 0 < min <= max (e.g. 3.2,4.0, or 3.6,3.6 for one radius)"
        )
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scenes = [
        render_scene(
            s,
            random_cameras(cfg.views, seed=10_000 + s, size=cfg.size, radius_range=(float(lo), float(hi))),
            dev,
            name=f"toy_{i:03d}",
        )
        for i, s in enumerate(range(cfg.first_seed, cfg.first_seed + cfg.n_objects))
    ]
    base = load_base_model(model_dir, device=dev)
    compile_mode = resolve_compile_mode("auto" if cfg.compile else "off", base.device)
    if compile_mode is not None:
        from ..base_model import compile_base_model

        compile_base_model(base, compile_mode)
    tc = dataclasses.replace(cfg.train, width=cfg.size, height=cfg.size)
    trainer = Trainer(tc, base, scenes, output_dir=None, device=dev)
    t0 = time.perf_counter()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
    try:
        trainer.train(progress=progress, should_stop=(lambda: time.perf_counter() > deadline) if deadline else None)
    except Cancelled:  # time budget reached: keep what was learned so far
        pass
    result = trainer.result()
    minutes = (time.perf_counter() - t0) / 60
    # The new bundle is written next to the old one and swapped in whole; the model's sampling
    # defaults (viewneti/sampling.json) are not the mapper's and carry over unchanged.
    bundle = Path(model_dir) / "viewneti"
    staging = bundle.with_name(f".viewneti.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    if result.view_mapper is None:  # pretraining trains the view-mapper
        raise RuntimeError("pretraining returned no view-mapper")
    result.view_mapper.config.extra = {"toyworld_pretrain": asdict(cfg), "steps": trainer.step}
    result.view_mapper.save_pretrained(staging / "view_mapper")
    for scene, mapper in list(zip(scenes, result.object_mappers.values()))[: cfg.ship_objects]:
        mapper.config.extra = {"steps": trainer.step, "toy_seed": scene.meta["seed"]}
        mapper.save_pretrained(staging / "objects" / scene.name)
    if (bundle / SAMPLING_FILENAME).is_file():
        shutil.copy2(bundle / SAMPLING_FILENAME, staging / SAMPLING_FILENAME)
    replace_directory(staging, bundle)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": asdict(cfg),
        "steps": trainer.step,
        "minutes": minutes,
        "loss_first_100": float(np.mean(trainer.losses[:100])),
        "loss_last_100": float(np.mean(trainer.losses[-100:])),
    }
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
