"""Are the toy model's generated objects the right size? Object area of generated views vs the truth.

Every toy colour is saturated and the ground, shadows and (at these elevations) the sky are not, so
pixels with HSV saturation > 0.25 segment the object; the script first checks that against the
renderer's own masks (IoU on the ground truth). Then, for the shipped built-in objects (seen in
pretraining) at 4 of the benchmark's target cameras (azimuths 30 + 360 k/17 deg, elevation 25,
radius 3.6), it reports the mean generated object area divided by the ground truth's, for:
the prior prompted with the object's description and the target's true coarse view phrase
(DPM-Solver++ at ``--steps``, and, if ``--ddpm-steps`` > 0, the DDPM sampler at that many steps:
the model's own distribution), and the ViewNeTI engine with and without the view token; and, as the
measurement's floor, the true views passed through the VAE (soft edges read as a little more area).
1.0 = right size; area goes with the inverse square of the camera distance. Then, for the
engine with the view token, whether the generated size follows the camera distance at all: the same
4 azimuths at each of ``--radii`` (the pretraining cameras' range is 3.2-4.0), generated and true
object area per radius.

    .venv/bin/python -m benchmarks.toy_object_scale --threads 2               # ~10 min on 2 cores
    .venv/bin/python -m benchmarks.toy_object_scale --ddpm-steps 0 --guidance 1,2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from benchmarks.common import TOY_RESULTS, command_line, set_threads, toy_engine, write_json
from benchmarks.toy_builtin_scores import SweepOptions, object_area_mask
from viewneti_backend.config_cli import add_options, config_from_args
from viewneti_backend.toyworld.benchmark import BenchmarkConfig


@dataclass(frozen=True)
class PriorRun:
    """One scenario of the prior's rows: a diffusers scheduler at a step count and a guidance scale."""

    label: str
    scheduler: Any
    steps: int
    guidance: float


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="toy model folder (default: the embedded one)")
    add_options(ap, SweepOptions, only=["guidances"])
    add_options(ap, BenchmarkConfig, only=["render_steps"], flags={"render_steps": "--steps"})
    ap.add_argument(
        "--ddpm-steps", type=int, default=1000, help="also sample the prior with DDPM at this many steps (0: skip)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--radii", default="3.2,3.6,4.0", help="camera distances of the distance-response rows ('' to skip)"
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "object_scale.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    import torch
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from tqdm.auto import tqdm

    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import resolve_model
    from viewneti_backend.images import images_to_tensor
    from viewneti_backend.toyworld.benchmark import benchmark_cameras, target_azimuths
    from viewneti_backend.toyworld.captions import describe, view_phrase
    from viewneti_backend.toyworld.dataset import render_scene
    from viewneti_backend.toyworld.prior.model import load_prior, sample
    from viewneti_backend.toyworld.renderer import ToyObject

    model = resolve_model(args.model)
    guidances = args.guidances
    cfg = config_from_args(BenchmarkConfig, args)
    _, targets = benchmark_cameras(cfg)
    picks = [0, 4, 8, 12]
    cams = [targets[k] for k in picks]
    azimuths = [target_azimuths(cfg)[k] for k in picks]

    with toy_engine(model, compile=False) as engine:
        objects = [o["name"] for o in engine.list_objects() if o.get("builtin")]
        seeds = {name: int(engine.object_mapper(name)[1].config.extra["toy_seed"]) for name in objects}
        gt_area, iou, prompts, gt_images = [], [], [], []
        for name in objects:
            gt = render_scene(seeds[name], cams)
            gt_images += gt.images
            text = describe(ToyObject.from_seed(seeds[name]))
            prompts += [f"{text}, {view_phrase(a, cfg.target_elevation)}" for a in azimuths]
            for image, mask in zip(gt.images, gt.object_masks()):
                seg, true = object_area_mask(image), mask > 0.5
                gt_area.append(seg.mean())
                iou.append((seg & true).sum() / max(1, (seg | true).sum()))
        truth = float(np.mean(gt_area))

        def ratio(images) -> float:
            return float(np.mean([object_area_mask(im).mean() for im in images]) / truth)

        rows: dict[str, float] = {}
        # the measurement's own floor: the true views through the VAE (encode -> decode), whose softened
        # edges a generated image cannot avoid either
        with torch.no_grad():
            x = images_to_tensor(gt_images, cfg.size, cfg.size).to(engine.base.device, engine.base.dtype)
            rows["ground truth through the VAE (encode, decode)"] = ratio(
                engine.pipeline.decode(engine.base.vae.encode(x).latent_dist.mean * engine.base.scaling_factor)
            )
        prior = load_prior(model, scheduler=None)
        saved = prior.scheduler.config
        runs = [
            PriorRun(
                f"prior, true view phrase, DPM-Solver++ {cfg.render_steps} steps, guidance {g:g}",
                DPMSolverMultistepScheduler.from_config(saved),
                cfg.render_steps,
                g,
            )
            for g in guidances
        ]
        if args.ddpm_steps:
            # "trailing" spacing: SD 2.1's "leading" + steps_offset would index past step 999 at 1000 steps
            runs.append(
                PriorRun(
                    f"prior, true view phrase, DDPM {args.ddpm_steps} steps, guidance 1",
                    DDPMScheduler.from_config(saved, timestep_spacing="trailing"),
                    args.ddpm_steps,
                    1.0,
                )
            )
        for run in tqdm(runs, desc="prior"):
            prior.scheduler = run.scheduler
            rows[run.label] = ratio(sample(prior, prompts, seed=args.seed, steps=run.steps, guidance=run.guidance))
        for g in guidances:
            for with_view in (True, False):
                images = [
                    im
                    for name in objects
                    for im in engine.render(
                        cams, name, seed=args.seed, steps=cfg.render_steps, guidance=g, with_view=with_view
                    )
                ]
                rows[f"ViewNeTI engine, {'with' if with_view else 'without'} view token, guidance {g:g}"] = ratio(
                    images
                )
        distance: dict[str, dict[str, float]] = {}
        for r in [float(x) for x in args.radii.split(",") if x.strip()]:
            at_r = [Camera(orbit_pose(a, cfg.target_elevation, r), cfg.fov_y_deg, cfg.size, cfg.size) for a in azimuths]
            true_area = float(
                np.mean(
                    [object_area_mask(im).mean() for name in objects for im in render_scene(seeds[name], at_r).images]
                )
            )
            for g in guidances:
                images = [
                    im
                    for name in objects
                    for im in engine.render(at_r, name, seed=args.seed, steps=cfg.render_steps, guidance=g)
                ]
                generated = float(np.mean([object_area_mask(im).mean() for im in images]))
                distance[f"radius {r:g}, guidance {g:g}"] = {
                    "true_area": true_area,
                    "generated_area": generated,
                    "ratio": generated / true_area,
                }

    print(f"object segmentation by saturation vs the renderer's masks on ground truth: IoU {np.mean(iou):.3f}")
    print(f"ground-truth object area: {truth:.4f} of the image")
    for label, r in rows.items():
        print(f"{label:70s} area x{r:.2f}")
    for label, d in distance.items():
        print(
            f"with view token, {label:30s} true area {d['true_area']:.3f}  generated {d['generated_area']:.3f}  x{d['ratio']:.2f}"
        )
    summary = {
        "model": str(model),
        "objects": objects,
        "target_azimuths": azimuths,
        "seed": args.seed,
        "segmentation_iou_on_ground_truth": float(np.mean(iou)),
        "ground_truth_area": truth,
        "area_ratio_to_ground_truth": rows,
        "distance_response_with_view_token": distance,
        "command": command_line(),
    }
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
