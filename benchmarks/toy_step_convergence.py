"""How many sampling steps does the embedded toy model need? Convergence and sharpness per step count.

PSNR against the renderer's truth keeps rising as steps fall (toy_sampling_sweep.py), because
smoother images score higher, so it cannot pick the step count. This script measures instead how
far an N-step render is from the same seed's 50-step render (masked PSNR; higher = closer to the
converged sample) and its sharpness (mean |Laplacian| of the grey image inside the object mask,
beside the ground truth's), on the built-in objects at 8 orbit views and 2 seeds. It is the
evidence behind the toy model's default steps in ``viewneti/sampling.json``.

    .venv/bin/python benchmarks/toy_step_convergence.py --threads 2
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


def sharpness(image, mask) -> float:
    """Mean absolute Laplacian of the grey image (0..1) over the mask's pixels."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.asarray(image, dtype=np.float32)[..., :3].mean(-1) / 255.0)[None, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="reflect"), kernel)[0, 0].numpy()
    return float(np.abs(lap)[np.asarray(mask) > 0.5].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="2,3,4,6,8,10,20", help="comma-separated step counts to compare")
    ap.add_argument("--reference-steps", type=int, default=50, help="steps of the converged reference render")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--views", type=int, default=8, help="orbit views per object (elevation 25 deg)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "toyworld" / "step_convergence.json"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from toy_builtin_scores import builtin_ground_truth, orbit_cameras

    from viewneti_backend.engine import Engine
    from viewneti_backend.evaluation import masked_psnr

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    cams = orbit_cameras(args.views)
    rows = {}
    with tempfile.TemporaryDirectory() as library:
        engine = Engine.load(device="cpu", library_dir=library)
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
        for steps in [int(s) for s in args.steps.split(",")]:
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
        "command": " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
