"""CPU benchmark: what the HTTP service adds to a live render.

Round-trip latency of ``POST /v1/render`` through the real server (a subprocess on 127.0.0.1, one
keep-alive client) against a direct ``engine.render`` call in this process, same model, camera
size, steps and thread count; ~50 requests each after a warm-up, the two paths alternating (so that
other load on the machine hits both alike). Prints a table (p50/p95/mean, ms)
and writes ``benchmarks/server_overhead.json``.

    .venv/bin/python -m benchmarks.server_overhead            # toy model, 64x64, 30 steps, 50 requests
    .venv/bin/python -m benchmarks.server_overhead --n 20 --steps 10 --threads 1

Without --model it uses $VIEWNETI_MODEL or the embedded toy model; while the embedded model is
incomplete (no view-mapper or objects yet), it builds a tiny random ViewNeTI model
(viewneti_backend.testing) and says so in the output and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import BENCH_DIR, REPO, command_line, set_threads, stats, write_json
from viewneti_backend.sampling_defaults import SD_STEPS


def summary(values_ms: list[float]) -> dict:
    """:func:`benchmarks.common.stats` of times in milliseconds, each key but ``n`` suffixed ``_ms``."""
    return {k if k == "n" else f"{k}_ms": v for k, v in stats(values_ms).items()}


def resolve_model(arg: str | None, tmp: Path) -> tuple[str | None, str]:
    from viewneti_backend.engine import BUNDLE_DIR, bundled_view_mapper, embedded_model_dir

    if arg:
        return arg, arg
    if os.environ.get("VIEWNETI_MODEL"):
        return os.environ["VIEWNETI_MODEL"], os.environ["VIEWNETI_MODEL"]
    d = embedded_model_dir()
    if bundled_view_mapper(str(d)) is not None and any((d / BUNDLE_DIR / "objects").glob("*/")):
        return None, "embedded toy model"
    from viewneti_backend.testing import build_tiny_viewneti_model

    print(
        "note: the embedded toy model is not complete yet (no view-mapper/objects); using a tiny random ViewNeTI model",
        file=sys.stderr,
    )
    return str(build_tiny_viewneti_model(tmp / "tiny-model")), "tiny random model (viewneti_backend.testing)"


def load_engine(model, args, lib: Path):
    from viewneti_backend.engine import Engine

    set_threads(args.threads)
    return Engine.load(model=model, library_dir=lib)


def start_server(model, args, data: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr is not None else ""  # a pipe: never None
            raise SystemExit(f"server exited: {stderr[-2000:]}")
        try:
            if httpx.get(url + "/v1/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not become ready")
        time.sleep(0.2)


def run(model, args, tmp: Path) -> tuple[list[float], list[float], dict, dict]:
    """Alternate direct and server requests (same pose and seed each pair), so that load from other
    processes on the machine affects both paths alike; only one path computes at a time."""
    import httpx

    from viewneti_backend.cameras import Camera, orbit_pose

    engine = load_engine(model, args, tmp / "lib-direct")
    info = engine.info()
    proc, url = start_server(model, args, tmp / "server-data")
    direct, server, parts = [], [], {}
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            for i in range(args.warmup + args.n):
                pose = orbit_pose(7.0 * i, 20.0, 4.0)
                cam = Camera(pose, 39.6, args.size, args.size)
                body = {
                    "camera": {
                        "camera_to_anchor": pose.tolist(),
                        "fov_y_deg": 39.6,
                        "width": args.size,
                        "height": args.size,
                    },
                    "seed": i,
                    "steps": args.steps,
                    "guidance": 7.5,
                }
                order = ("direct", "server") if i % 2 == 0 else ("server", "direct")
                for path in order:
                    t0 = time.perf_counter()
                    if path == "direct":
                        engine.render([cam], None, i, args.steps, 7.5)
                    else:
                        r = c.post("/v1/render", json=body)
                        r.raise_for_status()
                    dt = (time.perf_counter() - t0) * 1000.0
                    if i < args.warmup:
                        continue
                    (direct if path == "direct" else server).append(dt)
                    if path == "server":
                        for k, v in json.loads(r.headers["x-timings-ms"]).items():
                            parts.setdefault(k, []).append(float(v))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return direct, server, info, {k: statistics.fmean(v) for k, v in parts.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model id/folder (default: embedded toy model)")
    p.add_argument("--n", type=int, default=50, help="timed requests per path (default 50)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument(
        "--steps",
        type=int,
        default=SD_STEPS,
        help=f"denoising steps of both paths (default {SD_STEPS}, Stable Diffusion 2's, not the model's own)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both paths")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "server_overhead.json")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, model_desc = resolve_model(args.model, tmp)
        direct, server, info, parts = run(model, args, tmp)
    d, s = summary(direct), summary(server)
    overhead = {k: s[k] - d[k] for k in ("p50_ms", "p95_ms", "mean_ms")}
    rows = [("direct engine.render", d), ("POST /v1/render", s), ("overhead (server - direct)", overhead)]
    print(
        f"\nmodel: {model_desc} ({info.get('base_model')}), {args.size}x{args.size}, {args.steps} steps, "
        f"device {info.get('device')}, threads {args.threads or 'default'}, n={args.n}"
    )
    print(f"{'path':<30}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, r in rows:
        print(f"{name:<30}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['mean_ms']:>10.1f}")
    print("server-side breakdown (mean ms): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    result = {
        "benchmark": "server_overhead",
        "command": command_line(),
        "model": model_desc,
        "engine_info": info,
        "size": args.size,
        "steps": args.steps,
        "n": args.n,
        "threads": args.threads,
        "direct": d,
        "server": s,
        "overhead": overhead,
        "server_breakdown_mean_ms": parts,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
