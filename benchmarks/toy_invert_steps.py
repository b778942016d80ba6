"""How many mode-5 optimizer steps does a toy-world inversion need? Held-out PSNR vs steps.

The held-out benchmark (`viewneti toyworld benchmark`) inverts each object for a fixed number of
steps (600 in RESULTS §3; the paper uses 3000 at SD 2 scale). This script inverts the same held-out
objects from the same input view once, for ``--steps`` at most, snapshots the object-mapper at each
``--checkpoints`` step, and scores each snapshot exactly like the benchmark (16 target views, masked
PSNR / SSIM against the renderer), with the benchmark's copy-input baseline beside it, plus the
generated object's area against the truth (see toy_object_scale.py). One inversion per object and
seed, so the rows are paired: a difference between checkpoints is the effect of the extra steps.

    .venv/bin/python -m benchmarks.toy_invert_steps --objects 2 --seeds 0 --checkpoints 150,300,600,1200 --threads 2

``--augmentation-pool N`` runs the same inversions with that training option (RESULTS.md §1), so the
two settings can be compared pairwise.
"""

from __future__ import annotations

import argparse
import copy
import json

from benchmarks.common import TOY_RESULTS, command_line, int_list, set_threads, toy_engine, write_json
from benchmarks.toy_builtin_scores import object_area_mask, score_views
from viewneti_backend.config_cli import Default, add_options, config_from_args
from viewneti_backend.toyworld.benchmark import BenchmarkConfig

OWN_DEFAULTS = {  # smaller than the benchmark's: every inversion runs to the last checkpoint on a CPU
    "n_objects": Default(2, "each inversion runs to the last --checkpoints step on a CPU"),
    "seeds": Default([0], "one inversion per object, scored at every checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="toy model folder (default: the embedded one)")
    add_options(
        ap,
        BenchmarkConfig,
        only=["n_objects", "seeds", "render_steps", "guidance", "augmentation_pool"],
        defaults=OWN_DEFAULTS,
    )
    ap.add_argument(
        "--first-object",
        type=int,
        default=BenchmarkConfig.first_seed,
        help="seed of the first held-out object (default: the benchmark's first, "
        f"{BenchmarkConfig.first_seed}; later ones extend an earlier run)",
    )
    ap.add_argument(
        "--checkpoints",
        type=int_list,
        default="150,300,600,1200",
        help="optimizer steps at which to score the object token",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "invert_steps.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    from tqdm.auto import tqdm

    from viewneti_backend.cameras import Camera
    from viewneti_backend.data import Scene
    from viewneti_backend.toyworld.benchmark import benchmark_cameras
    from viewneti_backend.toyworld.dataset import render_scene
    from viewneti_backend.training import TrainConfig, Trainer

    checkpoints = sorted(args.checkpoints)
    cfg = config_from_args(BenchmarkConfig, args, first_seed=args.first_object)
    seeds = cfg.seeds
    input_cam, targets = benchmark_cameras(cfg)
    rows: list[dict] = []

    def score(images, gt) -> dict:
        truth = np.mean([object_area_mask(im).mean() for im in gt.images])
        return {
            **score_views(images, gt),
            "area_ratio": float(np.mean([object_area_mask(im).mean() for im in images]) / truth),
        }

    with toy_engine(args.model, device=args.device, compile=False) as engine:
        jobs = [(cfg.first_seed + i, s) for i in range(cfg.n_objects) for s in seeds]
        for toy_seed, s in tqdm(jobs, desc="inversions"):
            gt, inp = render_scene(toy_seed, targets, args.device), render_scene(toy_seed, [input_cam], args.device)
            # exactly what Engine.invert sets up, with the object-mapper snapshotted along the way
            width, height = engine.training_size(inp.images[0])
            scene = Scene(
                "ref", inp.images, [Camera(c.camera_to_anchor, c.fov_y_deg, width, height) for c in inp.posed_cameras()]
            )
            trainer = Trainer(
                TrainConfig(
                    mode=5,
                    steps=checkpoints[-1],
                    seed=s,
                    width=width,
                    height=height,
                    augmentation_pool=cfg.augmentation_pool,
                ),
                engine.base,
                [scene],
                view_mapper=engine.pipeline.view_mapper,
                device=args.device,
            )
            snapshots, losses = {}, []

            def on_step(
                step: int, total: int, loss: float, losses=losses, snapshots=snapshots, trainer=trainer
            ) -> None:
                losses.append(loss)
                if step in checkpoints:
                    snapshots[step] = copy.deepcopy(trainer.object_mappers[0]).eval().requires_grad_(False)

            trainer.train(on_step=on_step, progress=False)
            row = {
                "object": f"obj_{toy_seed}",
                "seed": s,
                "copy_input": score(inp.images * len(targets), gt),
                "checkpoints": {},
            }
            for step, mapper in snapshots.items():
                name = f"heldout_{toy_seed}_s{s}_{step}"
                engine.library.save(name, mapper, steps=step)
                row["checkpoints"][str(step)] = {
                    **score(engine.render(targets, name, seed=s, steps=cfg.render_steps, guidance=cfg.guidance), gt),
                    "mean_loss_last_50": float(np.mean(losses[max(0, step - 50) : step])),
                }
            rows.append(row)
            print(json.dumps(row))
            summary = {
                "config": {**vars(args), "benchmark": {k: v for k, v in vars(cfg).items()}},
                "device": args.device,
                "rows": rows,
                "command": command_line(),
            }
            summary["mean"] = {
                str(k): {
                    m: float(np.mean([r["checkpoints"][str(k)][m] for r in rows]))
                    for m in ("psnr", "ssim", "area_ratio")
                }
                for k in checkpoints
            }
            summary["mean"]["copy_input"] = {
                m: float(np.mean([r["copy_input"][m] for r in rows])) for m in ("psnr", "ssim")
            }
            write_json(args.out, summary)  # after every inversion: a stopped run keeps its rows
    for k, v in summary["mean"].items():
        print(f"{k:>10}: " + "  ".join(f"{m} {x:.3f}" for m, x in v.items()))


if __name__ == "__main__":
    main()
