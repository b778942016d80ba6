"""Quality vs sampling cost of the embedded toy model: how few DPM-Solver++ steps are enough?

Renders the shipped built-in objects (``toy_000``...: toy seeds 0, 1, ... seen in pretraining) from
orbit views and scores them against the toy renderer's ground truth (masked PSNR / SSIM), for each
(steps, guidance) pair; also times one 64x64 render of each setting on this CPU. This is the
evidence behind the model's ``viewneti/sampling.json``. Prints a table and writes
``benchmarks/toyworld/sampling_sweep.json``.

    .venv/bin/python -m benchmarks.toy_sampling_sweep --threads 2
    .venv/bin/python -m benchmarks.toy_sampling_sweep --steps 6,8,10,20,30 --guidance 1,2,3 --views 8
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from benchmarks.common import TOY_RESULTS, command_line, int_list, set_threads, toy_engine, write_json
from benchmarks.toy_builtin_scores import SweepOptions, builtin_ground_truth, orbit_cameras, score_builtin_renders
from viewneti_backend.config_cli import add_options
from viewneti_backend.toyworld.benchmark import BenchmarkConfig


@dataclass(frozen=True)
class SamplingSetting:
    """One scenario of the sweep: a DPM-Solver++ step count at a classifier-free guidance scale."""

    steps: int
    guidance: float


def sampling_grid(steps: list[int], guidance: list[float]) -> list[SamplingSetting]:
    """Every (steps, guidance) pair, guidance-major (the order of the rows in the JSON)."""
    return [SamplingSetting(s, g) for g in guidance for s in steps]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int_list, default="8,10,12,20,30", help="comma-separated DPM-Solver++ step counts")
    add_options(ap, SweepOptions)
    add_options(ap, BenchmarkConfig, only=["seeds"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "sampling_sweep.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    import torch

    seeds = args.seeds
    cams = orbit_cameras(args.views)
    with toy_engine() as engine:
        objects = engine.library.names()  # a fresh library: the model's built-in objects only
        truth = builtin_ground_truth(engine, cams, objects)
        rows = []
        for setting in sampling_grid(args.steps, args.guidances):
            steps, guidance = setting.steps, setting.guidance
            table = score_builtin_renders(engine, cams, objects, truth, seeds, steps=steps, guidance=guidance)
            one = cams[0]
            engine.render([one], objects[0], seed=0, steps=steps, guidance=guidance)  # pose cached
            t0 = time.perf_counter()
            for seed in range(3):
                engine.render([one], objects[0], seed=seed + 1, steps=steps, guidance=guidance)
            cached_s = (time.perf_counter() - t0) / 3
            mean = table.mean_over_scenes()
            rows.append(
                {
                    "steps": steps,
                    "guidance": guidance,
                    "psnr": mean["psnr"],
                    "ssim": mean["ssim"],
                    "seed_std_psnr": mean["seed_std_psnr"],
                    "render_64_cached_pose_s": cached_s,
                }
            )
            print(
                f"guidance {guidance:>4} steps {steps:>3}: PSNR {mean['psnr']:.2f} SSIM {mean['ssim']:.3f} "
                f"(seed std {mean['seed_std_psnr']:.2f}), 64x64 cached pose {cached_s:.3f} s",
                flush=True,
            )
    report = {
        "command": command_line(),
        "objects": objects,
        "views": args.views,
        "seeds": seeds,
        "torch_threads": torch.get_num_threads(),
        "sampling_defaults_now": engine.sampling.to_dict(),
        "rows": rows,
    }
    write_json(args.out, report)
    best = max(rows, key=lambda r: r["psnr"])
    print(
        f"best PSNR: steps {best['steps']}, guidance {best['guidance']} ({best['psnr']:.2f} dB); "
        f"mean over settings {np.mean([r['psnr'] for r in rows]):.2f} dB"
    )


if __name__ == "__main__":
    main()
