"""Quality vs sampling cost of the embedded toy model: how few DPM-Solver++ steps are enough?

Renders the shipped built-in objects (``toy_000``...: toy seeds 0, 1, ... seen in pretraining) from
orbit views and scores them against the toy renderer's ground truth (masked PSNR / SSIM), for each
(steps, guidance) pair; also times one 64x64 render of each setting on this CPU. This is the
evidence behind the model's ``viewneti/sampling.json``. Prints a table and writes
``benchmarks/toyworld/sampling_sweep.json``.

    .venv/bin/python benchmarks/toy_sampling_sweep.py --threads 2
    .venv/bin/python benchmarks/toy_sampling_sweep.py --steps 6,8,10,20,30 --guidance 1,2,3 --views 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="8,10,12,20,30", help="comma-separated DPM-Solver++ step counts")
    ap.add_argument("--guidance", default="1,2", help="comma-separated classifier-free guidance scales")
    ap.add_argument("--views", type=int, default=8, help="orbit views per object (elevation 25 deg)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "toyworld" / "sampling_sweep.json"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from toy_builtin_scores import builtin_ground_truth, orbit_cameras, score_builtin_renders

    from viewneti_backend.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    cams = orbit_cameras(args.views)
    with tempfile.TemporaryDirectory() as library:
        engine = Engine.load(device="cpu", library_dir=library)
        objects = engine.library.names()  # a fresh library: the model's built-in objects only
        truth = builtin_ground_truth(engine, cams, objects)
        rows = []
        for guidance in [float(g) for g in args.guidance.split(",")]:
            for steps in [int(s) for s in args.steps.split(",")]:
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
        "objects": objects,
        "views": args.views,
        "seeds": seeds,
        "torch_threads": torch.get_num_threads(),
        "sampling_defaults_now": engine.sampling.to_dict(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    best = max(rows, key=lambda r: r["psnr"])
    print(
        f"best PSNR: steps {best['steps']}, guidance {best['guidance']} ({best['psnr']:.2f} dB); "
        f"mean over settings {np.mean([r['psnr'] for r in rows]):.2f} dB"
    )


if __name__ == "__main__":
    main()
