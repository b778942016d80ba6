"""How many sampling steps does the embedded toy model need? Convergence and sharpness per step count.

PSNR against the renderer's truth keeps rising as steps fall (toy_sampling_sweep.py), because
smoother images score higher, so it cannot pick the step count. This script measures instead how
far an N-step render is from the same seed's 50-step render (masked PSNR; higher = closer to the
converged sample) and its sharpness (mean |Laplacian| of the grey image inside the object mask,
beside the ground truth's), on the built-in objects at 8 orbit views and 2 seeds. It is the
evidence behind the toy model's default steps in ``viewneti/sampling.json``.

    .venv/bin/python -m benchmarks.toy_step_convergence --threads 2
"""

from __future__ import annotations

import argparse

from benchmarks.common import TOY_RESULTS, command_line, int_list, set_threads, toy_engine, write_json
from benchmarks.toy_builtin_scores import SweepOptions, builtin_ground_truth, orbit_cameras, sharpness
from viewneti_backend.config_cli import add_options
from viewneti_backend.toyworld.benchmark import BenchmarkConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int_list, default="2,3,4,6,8,10,20", help="comma-separated step counts to compare")
    ap.add_argument("--reference-steps", type=int, default=50, help="steps of the converged reference render")
    add_options(ap, BenchmarkConfig, only=["guidance", "seeds"])
    add_options(ap, SweepOptions, only=["views"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "step_convergence.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import numpy as np

    from viewneti_backend.evaluation import masked_psnr

    seeds = args.seeds
    cams = orbit_cameras(args.views)
    rows = {}
    with toy_engine() as engine:
        objects = engine.library.names()
        truth = builtin_ground_truth(engine, cams, objects)
        truth_sharpness = float(
            np.mean([sharpness(im, truth[o].masks[k]) for o in objects for k, im in enumerate(truth[o].images)])
        )
        reference = {
            (o, s): engine.render(cams, o, seed=s, steps=args.reference_steps, guidance=args.guidance)
            for o in objects
            for s in seeds
        }
        for steps in args.steps:
            psnr, sharp = [], []
            for o in objects:
                for s in seeds:
                    preds = engine.render(cams, o, seed=s, steps=steps, guidance=args.guidance)
                    psnr += [masked_psnr(p, r) for p, r in zip(preds, reference[(o, s)])]
                    sharp += [sharpness(p, truth[o].masks[k]) for k, p in enumerate(preds)]
            rows[steps] = {"psnr_to_reference": float(np.mean(psnr)), "sharpness": float(np.mean(sharp))}
            print(
                f"{steps:>3} steps: {rows[steps]['psnr_to_reference']:.2f} dB from the {args.reference_steps}-step render, "
                f"sharpness {rows[steps]['sharpness']:.4f} (ground truth {truth_sharpness:.4f})",
                flush=True,
            )
    report = {
        "config": vars(args),
        "model": str(engine.model),
        "sampling_config": dict(engine.base.scheduler_config),
        "ground_truth_sharpness": truth_sharpness,
        "rows": rows,
        "command": command_line(),
    }
    write_json(args.out, report, default=str)


if __name__ == "__main__":
    main()
