"""Which sampling timesteps suit the embedded toy model? Held-out renders per (timestep spacing, steps).

DPM-Solver++ takes its timesteps from the model's scheduler config. SD 2's ``"leading"`` spacing
starts a 10-step render at t = 901, not at the pure-noise end of the schedule (t = 999) where it
begins from pure noise; ``"trailing"`` starts at 999 (Lin et al., "Common Diffusion Noise Schedules
and Sample Steps are Flawed", 2024). This script inverts held-out objects once each (mode 5, like
`viewneti toyworld benchmark`), then renders the benchmark's 16 target views from the SAME object
token under every (spacing, steps) pair, for ViewNeTI and for the object token without its view
token, and scores them like the benchmark (masked PSNR / SSIM against the renderer). One inversion
per object and seed, so rows are paired: a difference between settings is the sampler's alone.

    .venv/bin/python -m benchmarks.toy_timestep_spacing --objects 3 --seeds 0 --invert-steps 300 --threads 2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from benchmarks.common import TOY_RESULTS, command_line, set_threads, toy_engine, write_json
from benchmarks.toy_builtin_scores import score_views
from viewneti_backend.config_cli import Default, add_options, config_from_args
from viewneti_backend.toyworld.benchmark import BenchmarkConfig

SPACINGS = ("leading", "trailing", "linspace")  # diffusers' timestep_spacing values


@dataclass(frozen=True)
class SpacingSetting:
    """One scenario of the sweep: the scheduler's timestep spacing at a step count (``SPACING:STEPS``)."""

    spacing: str
    steps: int

    @property
    def key(self) -> str:
        return f"{self.spacing}:{self.steps}"

    @classmethod
    def parse(cls, item: str) -> SpacingSetting:
        spacing, _, steps = item.partition(":")
        if spacing not in SPACINGS or not steps.isdigit():
            raise ValueError(f"expected SPACING:STEPS with SPACING one of {', '.join(SPACINGS)}, got {item!r}")
        return cls(spacing, int(steps))


def spacing_settings(text: str) -> list[SpacingSetting]:
    """``"leading:10,trailing:4"`` -> the declared scenarios (an argparse ``type=``)."""
    try:
        return [SpacingSetting.parse(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


OWN_DEFAULTS = {  # smaller than the benchmark's: a CPU sweep that compares samplers on the same tokens
    "n_objects": Default(3, "a CPU sweep, ~20 minutes on 2 cores"),
    "seeds": Default([0], "one inversion per object, rendered under every setting"),
    "invert_steps": Default(300, "enough to compare samplers on the same token"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="toy model folder (default: the embedded one)")
    add_options(ap, BenchmarkConfig, only=["n_objects", "seeds", "invert_steps", "guidance"], defaults=OWN_DEFAULTS)
    ap.add_argument(
        "--settings",
        type=spacing_settings,
        default="leading:10,leading:30,trailing:4,trailing:6,trailing:10,trailing:30",
        help="comma-separated SPACING:STEPS pairs to render each inverted object with",
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "timestep_spacing.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    from tqdm.auto import tqdm

    from viewneti_backend.toyworld.benchmark import benchmark_cameras
    from viewneti_backend.toyworld.dataset import render_scene

    settings: list[SpacingSetting] = args.settings
    cfg = config_from_args(BenchmarkConfig, args)
    seeds = cfg.seeds
    input_cam, targets = benchmark_cameras(cfg)

    rows: list[dict] = []
    with toy_engine(args.model, compile=False) as engine:
        shipped_spacing = engine.base.scheduler_config.get("timestep_spacing", "leading")
        jobs = [(cfg.first_seed + i, s) for i in range(cfg.n_objects) for s in seeds]
        for toy_seed, s in tqdm(jobs, desc="objects"):
            gt, inp = render_scene(toy_seed, targets), render_scene(toy_seed, [input_cam])
            name = f"heldout_{toy_seed}_s{s}"
            engine.invert(
                inp.images, inp.posed_cameras(), name, cfg.invert_steps, seed=s
            )  # mode 5, as in the benchmark
            row = {
                "object": f"obj_{toy_seed}",
                "seed": s,
                "copy_input": score_views(inp.images * len(targets), gt),
                "settings": {},
            }
            for setting in settings:
                steps = setting.steps
                # every render takes its scheduler from this dict as it is then (ViewNeTIPipeline.scheduler)
                engine.base.scheduler_config["timestep_spacing"] = setting.spacing
                row["settings"][setting.key] = {
                    "viewneti_mode5": score_views(
                        engine.render(targets, name, seed=s, steps=steps, guidance=cfg.guidance), gt
                    ),
                    "no_view_token": score_views(
                        engine.render(targets, name, seed=s, steps=steps, guidance=cfg.guidance, with_view=False), gt
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
                "config": {**vars(args), "settings": [x.key for x in settings]},
                "model": str(engine.model),
                "shipped_spacing": shipped_spacing,
                "rows": rows,
                "mean": mean,
                "copy_input": {m: float(np.mean([r["copy_input"][m] for r in rows])) for m in ("psnr", "ssim")},
                "command": command_line(),
            }
            write_json(args.out, summary)  # after every object: a stopped run keeps its rows
    print(f"{'setting':>14}  {'mode 5 PSNR':>11}  {'SSIM':>6}  {'no-view PSNR':>12}  {'SSIM':>6}")
    for key, v in summary["mean"].items():
        a, b = v["viewneti_mode5"], v["no_view_token"]
        print(f"{key:>14}  {a['psnr']:11.2f}  {a['ssim']:6.3f}  {b['psnr']:12.2f}  {b['ssim']:6.3f}")
    print(f"{'copy input':>14}  {summary['copy_input']['psnr']:11.2f}  {summary['copy_input']['ssim']:6.3f}")


if __name__ == "__main__":
    main()
