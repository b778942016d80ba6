"""Would a shorter text context keep the toy model's renders? Zero-shot, no retraining.

At a new pose most of a CPU render is the text encoder: one encoding per (timestep, UNet layer),
each ``model_max_length`` tokens long (77, as in SD), while the toy prompts are ~10 tokens. This
loads copies of the model whose tokenizer pads to ``--lengths`` tokens instead (the UNet then
cross-attends to fewer padding positions: different maths, the prior was trained at 77), renders
the built-in objects at 8 orbit views and 2 seeds with the model's default sampling settings, and
reports masked PSNR / SSIM against the renderer's ground truth and the time of one render at a new
pose. It answers whether a prior fine-tuned at a shorter context is worth a GPU run.

    .venv/bin/python -m benchmarks.toy_context_length --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import TOY_RESULTS, command_line, int_list, set_threads, write_json
from benchmarks.toy_builtin_scores import SweepOptions, builtin_ground_truth, orbit_cameras, score_builtin_renders
from viewneti_backend.config_cli import add_options
from viewneti_backend.toyworld.benchmark import BenchmarkConfig


def model_with_context(src: Path, dst: Path, length: int) -> Path:
    """A copy of ``src`` whose tokenizer pads and truncates to ``length`` tokens."""
    shutil.copytree(src, dst)
    config_path = dst / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = length
    config_path.write_text(json.dumps(config, indent=2))
    return dst


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="toy model folder (default: the embedded one)")
    ap.add_argument(
        "--lengths", type=int_list, default="77,32,24,16", help="comma-separated text context lengths (tokens)"
    )
    add_options(ap, SweepOptions, only=["views"])
    add_options(ap, BenchmarkConfig, only=["seeds"])
    ap.add_argument("--n-timed", type=int, default=5, help="timed renders at new poses per length")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(TOY_RESULTS / "context_length.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    import torch

    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine, resolve_model

    seeds = args.seeds
    cams = orbit_cameras(args.views)
    src = Path(resolve_model(args.model))
    rows, truth = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for length in args.lengths:
            model = model_with_context(src, Path(scratch) / f"model_{length}", length)
            engine = Engine.load(str(model), device="cpu", library_dir=Path(scratch) / f"library_{length}")
            objects = engine.library.names()  # a fresh library: the built-in objects only
            builtin_ground_truth(engine, cams, objects, truth)
            table = score_builtin_renders(engine, cams, objects, truth, seeds)
            times = []
            for i in range(args.n_timed):  # a pose never rendered before: the text encoder runs
                cam = Camera(orbit_pose(7.0 + 31.0 * i, 22.0, 3.6), 40.0, 64, 64)
                t0 = time.perf_counter()
                engine.render([cam], objects[0], seed=0)
                times.append(time.perf_counter() - t0)
            mean = table.mean_over_scenes()
            rows.append(
                {
                    "context_length": length,
                    "psnr": mean["psnr"],
                    "ssim": mean["ssim"],
                    "seed_std_psnr": mean["seed_std_psnr"],
                    "new_pose_render_s_median": statistics.median(times),
                    "new_pose_render_s": times,
                }
            )
            print(
                f"context {length:>3} tokens: PSNR {mean['psnr']:.2f} SSIM {mean['ssim']:.3f} "
                f"(seed std {mean['seed_std_psnr']:.2f}), 64x64 new pose {statistics.median(times):.3f} s",
                flush=True,
            )
    steps, guidance = engine.sampling.resolve(None, None)
    report = {
        "command": command_line(),
        "model": str(src),
        "objects": objects,
        "views": args.views,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    write_json(args.out, report)


if __name__ == "__main__":
    main()
