"""CPU benchmark: how fast the embedded toy model renders and inverts on a small CPU.

Times ``Engine.render`` of one 64x64 view at the model's default sampling settings
(``viewneti/sampling.json``), for a pose whose encodings are already cached (another seed) and for a
new pose every time (the text encoder runs: steps x layers prompts), then a short mode-5 inversion of
one reference image. Prints a table and writes ``benchmarks/cpu_render.json``.

    .venv/bin/python -m benchmarks.cpu_render                 # all cores torch uses by default
    .venv/bin/python -m benchmarks.cpu_render --threads 2 --n 20 --invert-steps 20
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import BENCH_DIR, command_line, machine, set_threads, stats, timed_each, toy_engine, write_json
from viewneti_backend.config_cli import Default, add_options
from viewneti_backend.toyworld.benchmark import BenchmarkConfig

OWN_DEFAULTS = {"invert_steps": Default(10, "a timed sample: the report gives the time per step")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the embedded toy model)")
    ap.add_argument("--size", type=int, default=64, help="view width and height in pixels")
    ap.add_argument("--n", type=int, default=10, help="timed renders per case, after one warm-up")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    add_options(ap, BenchmarkConfig, only=["invert_steps"], defaults=OWN_DEFAULTS)
    ap.add_argument("--out", default=str(BENCH_DIR / "cpu_render.json"))
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    from viewneti_backend.cameras import Camera, orbit_pose

    with toy_engine(args.model) as engine:
        steps, guidance = engine.sampling.resolve(None, None)

        def cam(azimuth: float) -> Camera:
            return Camera(orbit_pose(azimuth, 25.0, 3.6), 40.0, args.size, args.size)

        cached = timed_each(lambda i: engine.render([cam(30.0)], seed=i + 1), args.n)
        new_pose = timed_each(lambda i: engine.render([cam(31.0 + 7.0 * (i + 1))], seed=0), args.n)
        phases: dict = {}
        engine.render([cam(200.0)], seed=0, timings=phases)

        reference = engine.render([cam(30.0)], seed=0)[0]
        t0 = time.perf_counter()
        engine.invert([reference], [cam(30.0)], "bench_inverted", args.invert_steps)
        invert_s = time.perf_counter() - t0

    rows = {"render_cached_pose_s": cached, "render_new_pose_s": new_pose}
    report = {
        "command": command_line(),
        "machine": machine(),
        "model": engine.model,
        "size": args.size,
        "steps": steps,
        "guidance": guidance,
        "n": args.n,
        **{k: stats(v) for k, v in rows.items()},
        "new_pose_phases_ms": phases,
        "inversion": {"steps": args.invert_steps, "total_s": invert_s, "per_step_s": invert_s / args.invert_steps},
    }
    print(
        f"embedded model on CPU ({report['machine']['torch_threads']} torch threads), {args.size}x{args.size}, "
        f"{steps} steps, guidance {guidance}, n={args.n}"
    )
    print(f"{'case':<28}{'p50 s':>8}{'mean s':>8}{'max s':>8}")
    for k in rows:
        r = report[k]
        print(f"{k:<28}{r['p50']:>8.3f}{r['mean']:>8.3f}{r['max']:>8.3f}")
    print(f"new-pose phases (ms): {', '.join(f'{k} {v:.0f}' for k, v in phases.items())}")
    print(f"inversion, {args.invert_steps} steps: {invert_s:.1f} s ({invert_s / args.invert_steps:.2f} s/step)")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
