"""What a compile helper's work costs the renders beside it, and what stopping the helper gives back.

The server's helpers compile, after the warm-up shapes, the training graphs of likely first inversions
(minutes of compiling, then a training step on the GPU); since session 30 a helper doing that is stopped
(SIGSTOP) while the server renders (``server/compiler.py``). This measures that choice in one process:
SD 2.1-sized random weights (``sd21.py``) loaded compiled as the server loads them, one helper
(``Engine.compile_warmer``, the server's own kind) compiling ``--helper-label`` (default ``train:512x384``),
and meanwhile the live render (512x512, 8 steps; new pose and same pose, in turn) in rounds, the helper
running in one round and stopped in the next, until it is done; then the same renders with no helper.

    python -m benchmarks.helper_contention --out benchmarks/helper_contention.json

Medians per state (running, stopped, alone) go to the JSON and a printed table. The helper compiles on a
cold cache only once: later runs on the same machine find its work in the cache (pass a fresh
``TORCHINDUCTOR_CACHE_DIR``). ``--smoke``: the embedded toy model on the CPU, its renders uncompiled (the
code path only).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, log, machine, output_path, write_json

STATES = ("running", "stopped", "alone")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/helper_contention.json")
    ap.add_argument("--work", type=Path, default=None, help="folder for the random-weight model (default: a temp dir)")
    ap.add_argument(
        "--helper-label",
        default=None,
        help="what the helper compiles: train:WIDTHxHEIGHT (an inversion's training graphs) or a render shape "
        "such as 640x480 (default train:512x384; with --smoke, 32x32)",
    )
    ap.add_argument("--round", type=int, default=6, help="renders per round (half at a new pose, half at the same)")
    ap.add_argument("--max-s", type=float, default=400.0, help="stop the rounds after this long (the helper is closed)")
    ap.add_argument("--smoke", action="store_true", help="the embedded toy model on the CPU: checks the code path")
    return ap


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine
    from viewneti_backend.render_shape import RenderShape

    out = output_path(args.out)
    report: dict[str, Any] = {"command": command_line(), "machine": machine()}
    work = args.work or Path(tempfile.mkdtemp(prefix="helper-contention-"))
    if args.smoke:
        model, device, mode, size, steps = None, "cpu", "default", (32, 32), 2
        label = args.helper_label or "32x32"
    else:
        from benchmarks.sd21 import write_sd21_viewneti_model

        t0 = time.perf_counter()
        model = str(write_sd21_viewneti_model(work / "sd21-random", device="cuda"))
        report["model_write_s"] = round(time.perf_counter() - t0, 1)
        device, mode, size, steps = "cuda", "reduce-overhead", (512, 512), 8
        label = args.helper_label or "train:512x384"
    report["helper_label"] = label
    engine = Engine.load(model, device=device, compile=mode, library_dir=work / "library")
    helper = engine.compile_warmer()
    done = threading.Event()
    helper_report: dict[str, Any] = {}

    def run_helper() -> None:
        t1 = time.perf_counter()
        try:
            helper_report.update(helper.warm(label))
        except Exception as exc:  # noqa: BLE001  reported: the rounds then compare nothing
            helper_report["error"] = f"{type(exc).__name__}: {exc}"[:500]
        helper_report["wall_s"] = round(time.perf_counter() - t1, 1)
        done.set()

    t_start = time.perf_counter()
    threading.Thread(target=run_helper, daemon=True).start()
    if not args.smoke:  # the smoke run's renders stay uncompiled: the rounds begin while the helper works
        engine.compile_shape(RenderShape.of_render(1, size[0], size[1], 7.5))  # beside the helper, as the server
        report["compile_s"] = round(time.perf_counter() - t_start, 1)
        log(
            f"compiled the live shape in {report['compile_s']} s; the helper is {'done' if done.is_set() else 'working'}"
        )

    cameras = (Camera(orbit_pose(float(a % 360), 20.0, 4.0), 40.0, *size) for a in itertools.count())
    rows: list[dict[str, Any]] = []

    def one_round(state: str) -> None:
        cam = next(cameras)
        for i in range(args.round):
            new_pose = i % 2 == 0
            if new_pose:
                cam = next(cameras)
            t1 = time.perf_counter()
            engine.render([cam], None, seed=0, steps=steps, guidance=7.5)  # PIL images: the GPU is done
            ms = (time.perf_counter() - t1) * 1e3
            rows.append({"t_s": round(t1 - t_start, 2), "state": state, "new_pose": new_pose, "ms": round(ms, 2)})

    one_round("alone" if done.is_set() else "running")  # warm-up of both poses' paths, not kept
    rows.clear()
    stopped = False
    try:
        while not done.is_set() and time.perf_counter() - t_start < args.max_s:
            if stopped:
                helper.pause()
            try:
                one_round("stopped" if stopped else "running")
            finally:
                helper.resume()
            stopped = not stopped
    finally:
        if not done.is_set():
            report["helper_cut_at_s"] = round(time.perf_counter() - t_start, 1)
        helper.close(timeout=0)  # killed if still compiling: its warm() then raises and the thread ends
    done.wait(30)
    for _ in range(2):
        one_round("alone")
    report["helper"] = helper_report
    report["renders"] = rows
    summary: dict[str, Any] = {}
    for state in STATES:
        for new_pose in (True, False):
            ms = [r["ms"] for r in rows if r["state"] == state and r["new_pose"] == new_pose]
            summary[f"{state}_{'new' if new_pose else 'same'}_pose"] = {"p50_ms": _median(ms), "n": len(ms)}
    report["summary"] = summary
    write_json(out, report)
    print(f"helper compiling {label}: {helper_report}")
    print(f"{'state':<24}{'p50 ms':>10}{'renders':>9}")
    for key, row in summary.items():
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
        print(f"{key:<24}{p50:>10}{row['n']:>9}")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
