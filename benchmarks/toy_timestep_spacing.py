"""Which sampling timesteps suit the embedded toy model? Held-out renders per (timestep spacing, steps).

DPM-Solver++ takes its timesteps from the model's scheduler config. SD 2's ``"leading"`` spacing
starts a 10-step render at t = 901, not at the pure-noise end of the schedule (t = 999) where it
begins from pure noise; ``"trailing"`` starts at 999 (Lin et al., "Common Diffusion Noise Schedules
and Sample Steps are Flawed", 2024). This script inverts held-out objects once each (mode 5, like
`viewneti toyworld benchmark`), then renders the benchmark's 16 target views from the SAME object
token under every (spacing, steps) pair, for ViewNeTI and for the object token without its view
token, and scores them like the benchmark (masked PSNR / SSIM against the renderer). One inversion
per object and seed, so rows are paired: a difference between settings is the sampler's alone.

    .venv/bin/python benchmarks/toy_timestep_spacing.py --objects 3 --seeds 0 --invert-steps 300 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="toy model folder (default: the embedded one)")
    ap.add_argument("--objects", type=int, default=3, help="held-out objects (seeds 1000000, ...)")
    ap.add_argument("--seeds", default="0", help="comma-separated inversion + render seeds")
    ap.add_argument("--invert-steps", type=int, default=300, help="mode-5 optimizer steps per inversion")
    ap.add_argument(
        "--settings",
        default="leading:10,leading:30,trailing:4,trailing:6,trailing:10,trailing:30",
        help="comma-separated SPACING:STEPS pairs to render each inverted object with",
    )
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "toyworld" / "timestep_spacing.json"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from viewneti_backend.atomic_files import atomic_write_text
    from viewneti_backend.engine import Engine, resolve_model
    from viewneti_backend.evaluation import masked_psnr, masked_ssim
    from viewneti_backend.toyworld.nvs import BenchmarkConfig, benchmark_cameras, render_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = []
    for item in args.settings.split(","):
        spacing, _, steps = item.partition(":")
        if spacing not in ("leading", "trailing", "linspace") or not steps.isdigit():
            ap.error(f"--settings: expected SPACING:STEPS with SPACING leading, trailing or linspace, got {item!r}")
        settings.append((spacing, int(steps)))
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = BenchmarkConfig(n_objects=args.objects, seeds=seeds, guidance=args.guidance)
    input_cam, targets = benchmark_cameras(cfg)

    def score(images, gt) -> dict:
        return {
            "psnr": float(np.mean([masked_psnr(p, g, m) for p, g, m in zip(images, gt.images, gt.masks)])),
            "ssim": float(np.mean([masked_ssim(p, g, m) for p, g, m in zip(images, gt.images, gt.masks)])),
        }

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as library:
        engine = Engine.load(str(resolve_model(args.model)), device="cpu", library_dir=library, compile=False)
        shipped_spacing = engine.base.scheduler_config.get("timestep_spacing", "leading")
        jobs = [(cfg.first_seed + i, s) for i in range(args.objects) for s in seeds]
        for toy_seed, s in tqdm(jobs, desc="objects"):
            gt, inp = render_scene(toy_seed, targets), render_scene(toy_seed, [input_cam])
            name = f"heldout_{toy_seed}_s{s}"
            engine.invert(
                inp.images, inp.posed_cameras(), name, args.invert_steps, seed=s
            )  # mode 5, as in the benchmark
            row = {
                "object": f"obj_{toy_seed}",
                "seed": s,
                "copy_input": score(inp.images * len(targets), gt),
                "settings": {},
            }
            for spacing, steps in settings:
                # the engine builds its sampler from this dict on every render (base_model.sampling_scheduler)
                engine.base.scheduler_config["timestep_spacing"] = spacing
                row["settings"][f"{spacing}:{steps}"] = {
                    "viewneti_mode5": score(
                        engine.render(targets, name, seed=s, steps=steps, guidance=args.guidance), gt
                    ),
                    "no_view_token": score(
                        engine.render(targets, name, seed=s, steps=steps, guidance=args.guidance, with_view=False), gt
                    ),
                }
            engine.base.scheduler_config["timestep_spacing"] = shipped_spacing
            rows.append(row)
            print(json.dumps(row), flush=True)
            mean = {
                key: {
                    arm: {m: float(np.mean([r["settings"][key][arm][m] for r in rows])) for m in ("psnr", "ssim")}
                    for arm in ("viewneti_mode5", "no_view_token")
                }
                for key in rows[0]["settings"]
            }
            summary = {
                "config": vars(args),
                "model": str(engine.model),
                "shipped_spacing": shipped_spacing,
                "rows": rows,
                "mean": mean,
                "copy_input": {m: float(np.mean([r["copy_input"][m] for r in rows])) for m in ("psnr", "ssim")},
                "command": " ".join(sys.argv),
            }
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                Path(args.out), json.dumps(summary, indent=2)
            )  # after every object: a stopped run keeps its rows
    print(f"{'setting':>14}  {'mode 5 PSNR':>11}  {'SSIM':>6}  {'no-view PSNR':>12}  {'SSIM':>6}")
    for key, v in summary["mean"].items():
        a, b = v["viewneti_mode5"], v["no_view_token"]
        print(f"{key:>14}  {a['psnr']:11.2f}  {a['ssim']:6.3f}  {b['psnr']:12.2f}  {b['ssim']:6.3f}")
    print(f"{'copy input':>14}  {summary['copy_input']['psnr']:11.2f}  {summary['copy_input']['ssim']:6.3f}")


if __name__ == "__main__":
    main()
