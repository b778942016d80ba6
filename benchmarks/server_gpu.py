"""Speed as a user feels it: the real ``viewneti-server``, timed from a client.

Starts the server as a subprocess exactly as a user does (``python -m server --model FOLDER``) and
times each request from the client's side of one keep-alive HTTP connection (what the Blender add-on
uses): queueing, text encoding, denoising, decoding, image encoding and the transfer all count, and
so does compilation on first use. Sections:

- cold start: process start -> ``/v1/health`` 200 (ready to serve), and -> warm-up shapes compiled
  (the log says what compiled when; until then those sizes render uncompiled);
- first request at the native view size right after ready (while its graph still compiles);
- live 512x512 (8 steps) and view 768x576 (30 steps), new pose / same pose, PNG and JPEG;
- the camera moves during a refinement: a live request that supersedes a view of the same session in
  flight (as the add-on's live mode sends them), timed from the client of the live request;
- a 24-frame sequence job at 768x576 (frames batched per UNet call), and whether its frames match
  one-by-one renders; then the same job again while live renders (a new pose each, as a camera being
  dragged) are sent one after another, and once more with a random pause after each (as the add-on sends
  them, once the camera has been still for its Live Delay): what the live preview costs while a camera
  path renders (they are served between the denoising steps of the frames' render), and what they cost
  the job;
- a request at a size nobody warmed up (640x480): served uncompiled at once, compiled in the background
  (by helper processes first, ``--compile-processes``), while live renders and more requests at the new
  size go on and are timed: what compiling costs the user who keeps working;
- a size a client asked to compile first (``POST /v1/compile``, as the Blender add-on does for its scene's
  resolution, 704x528): on CUDA the server does its first-use work while idle, so its first request,
  still uncompiled, does not pay it.
- an inversion of two 512x512 references (``--invert-steps``, after a 2-step one that compiles the
  training graph), alone, then while live renders are sent one after another and with random pauses, as
  for the sequence: what the live preview costs while a token is fitted, and what it costs the inversion.

GPU (the numbers in RESULTS.md): SD 2.1-sized random weights written to a diffusers folder first::

    python -m benchmarks.server_gpu --out benchmarks/server_gpu.json

On a machine with a cold compile cache the warm-up alone takes about five minutes; a run that must fit a
time limit can time only what it came for (``--sections sequence``, say) after it.

After the warm-up shapes, on a GPU of 64 GiB or more, the server's helper processes compile the training
graphs of likely inversions (about three minutes more on a cold cache; compiling on the CPU, then
running a training step on the GPU). The rows are timed after that by default (``--training-ahead
wait``): the steady state. ``--training-ahead during`` times them at once, as a user who starts working
right away; either way, ``training_ahead_at`` records where those helpers were when each section began.

CPU smoke run of the same script on the toy model (what the test suite runs)::

    python -m benchmarks.server_gpu --smoke --out /tmp/server_gpu.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import BENCH_DIR, REPO, command_line, machine, output_path, percentile, stats, write_json
from viewneti_backend.compile_modes import COMPILE_CHOICES
from viewneti_backend.progress import RENDER_PHASES


def orbit(az: float, el: float = 20.0, radius: float = 4.0) -> list[list[float]]:
    from viewneti_backend.cameras import orbit_pose

    return orbit_pose(az, el, radius).tolist()


class Client:
    """One keep-alive connection, like the add-on's; every call timed from send to last byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)

    def call(self, method: str, path: str, body: dict | None = None, accept: str = "application/json"):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": accept}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
                # the server closed the idle keep-alive connection (after a job followed on its event stream):
                # the request never reached it, so send it again on a new one, as HTTP clients do
                if attempt == 2 or not isinstance(exc, http.client.RemoteDisconnected):
                    raise
        ms = (time.perf_counter() - t0) * 1e3
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), payload, ms

    def json(self, method: str, path: str, body: dict | None = None):
        status, _, payload, _ = self.call(method, path, body)
        return status, json.loads(payload or b"null")


def render_body(az: float, width: int, height: int, steps: int, seed: int = 0) -> dict:
    cam = {"camera_to_anchor": orbit(az), "fov_y_deg": 40.0, "width": width, "height": height}
    return {"camera": cam, "seed": seed, "steps": steps, "guidance": 7.5}


def timed_renders(client: Client, bodies: list[dict], accept: str) -> dict:
    times, splits = [], []
    for body in bodies:
        status, headers, payload, ms = client.call("POST", "/v1/render", body, accept=accept)
        if status != 200:
            raise RuntimeError(f"render failed: {status} {payload[:300]!r}")
        times.append(ms)
        splits.append(json.loads(headers.get("x-timings-ms", "{}")))
    keys = sorted({k for s in splits for k in s})
    ms = stats(times)
    return {
        "n": ms["n"],
        "client_p50_ms": round(ms["p50"], 1),
        "client_min_ms": round(ms["min"], 1),
        "client_max_ms": round(ms["max"], 1),
        "server_p50_ms": {k: round(percentile([s.get(k, 0.0) for s in splits], 0.5), 1) for k in keys},
        "bytes": len(payload),
        "media_type": headers.get("content-type"),
    }


def p50_ms(values: list[float]) -> float | None:
    """The median of ``values`` rounded to 0.1 ms, None when there are none."""
    return round(percentile(values, 0.5), 1) if values else None


def wait_health(client: Client, proc: subprocess.Popen, timeout: float, log_path: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready; its log ends:\n{tail}")
        try:
            status, health = client.json("GET", "/v1/health")
            if status == 200:
                return health
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server did not become ready in time")


def wait_compiled(client: Client, shapes: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        _, health = client.json("GET", "/v1/health")
        state = health.get("compiled_shapes")
        if state is None or all(s in state["ready"] or s in state["failed"] for s in shapes):
            return health
        time.sleep(0.25)
    raise RuntimeError(f"shapes {shapes} did not compile in {timeout:.0f} s: {health.get('compiled_shapes')}")


def wait_training_ahead(client: Client, timeout: float) -> dict:
    """Wait until the helpers have compiled (or failed) the training sizes they compile ahead; returns
    ``compiled_shapes.training_ahead`` (empty on a server that compiles none ahead)."""
    deadline = time.monotonic() + timeout
    ahead: dict = {}
    while time.monotonic() < deadline:
        ahead = training_ahead_state(client)
        if not training_ahead_pending(ahead):
            return ahead
        time.sleep(0.5)
    raise RuntimeError(f"training sizes not compiled ahead in {timeout:.0f} s: {ahead}")


def training_ahead_pending(ahead: dict) -> bool:
    """Whether any training size of ``training_ahead_state`` is still queued, compiling or paused."""
    return any(v in ("queued", "compiling", "paused") for v in ahead.values())


def training_ahead_state(client: Client) -> dict:
    """``compiled_shapes.training_ahead`` now: {training size: queued | compiling | paused | done | failed: ...}."""
    _, health = client.json("GET", "/v1/health")
    return (health.get("compiled_shapes") or {}).get("training_ahead") or {}


def superseded_renders(client: Client, port: int, view: tuple, live: tuple, n: int, delay_s: float) -> dict:
    """``n`` times: a view request (new pose, session "bench") on a second connection, then ``delay_s``
    later a live request (new pose, same session) that supersedes it; the live requests are timed."""
    other = Client(port)
    statuses: list[int] = []
    times: list[float] = []
    for k in range(n):
        slow = {**render_body(80.0 + 7.0 * k, *view), "session": "bench"}
        fast = {**render_body(83.5 + 7.0 * k, *live), "session": "bench"}
        thread = threading.Thread(
            target=lambda body=slow: statuses.append(other.call("POST", "/v1/render", body, "image/png")[0])
        )
        thread.start()
        time.sleep(delay_s)
        times.append(timed_renders(client, [fast], "image/png")["client_p50_ms"])
        thread.join()
    ms = stats(times)
    return {
        "n": n,
        "delay_ms": round(delay_s * 1e3),
        "client_p50_ms": round(ms["p50"], 1),
        "client_max_ms": round(ms["max"], 1),
        "superseded_statuses": statuses,  # 409: the view was cut; 200: it finished before the live request came
    }


def wait_log_line(log_path: Path, text: str, timeout: float) -> float:
    """Seconds until the server's log has a line containing ``text``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if text in log_path.read_text(errors="replace"):
            return round(time.perf_counter() - t0, 2)
        time.sleep(0.05)
    raise RuntimeError(f"the server's log has no {text!r} after {timeout:.0f} s")


# a job's final states as GET /v1/jobs/{id} reports them (server/jobs.py TERMINAL_STATES; this script is a
# client and imports nothing from the server)
JOB_ENDED = ("done", "error", "cancelled", "interrupted")


def follow_events(port: int, job_id: str) -> str:
    """Read the job's event stream (``GET /v1/jobs/{id}/events``, as the add-on follows a job) until its
    final event; returns that event's name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        conn.request("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"events of job {job_id}: {resp.status} {resp.read()[:300]!r}")
        while line := resp.readline():
            name = line.decode().strip().removeprefix("event:").strip() if line.startswith(b"event:") else None
            if name in JOB_ENDED:
                return name
        raise RuntimeError(f"the event stream of job {job_id} ended without a final event")
    finally:
        conn.close()


def run_job(client: Client, path: str, body: dict) -> tuple[float, dict]:
    """A job (``POST path``), timed from its POST to its final event on the job's event stream (what the
    add-on waits for; polling the record every few ms would add requests no user sends)."""
    t0 = time.perf_counter()
    status, job = client.json("POST", path, body)
    if status != 202:
        raise RuntimeError(f"{path} failed: {status} {job}")
    follow_events(client.port, job["job_id"])
    seconds = time.perf_counter() - t0
    _, state = client.json("GET", f"/v1/jobs/{job['job_id']}")
    if state["state"] != "done":
        raise RuntimeError(f"{path} job ended {state['state']}: {state.get('error')}")
    return seconds, state


def run_sequence(client: Client, cameras: list[dict], steps: int) -> tuple[float, dict]:
    return run_job(client, "/v1/jobs/sequence", {"cameras": cameras, "steps": steps, "guidance": 7.5})


# Pauses between the live renders of the paused run during a job. The add-on sends a live request once
# the camera has been still for its Live Delay, at a time that has nothing to do with the job's steps;
# renders sent back to back instead arrive at the same point of the job's step each time (RESULTS.md §6).
LIVE_PAUSE_S = (0.05, 0.25)


def live_during_job(
    client: Client,
    port: int,
    path: str,
    body: dict,
    live: tuple,
    pause_s: tuple[float, float] | None = None,
) -> dict:
    """A job (``POST path`` with ``body``) submitted on a second connection, and live renders (a new pose
    each) sent one after another on ``client`` until it ends (with ``pause_s``, after a random pause in
    that range, seeded): the live renders' client times and the job's seconds.

    ``live_server_p50_ms`` is the live renders' server split (``X-Timings-Ms``); its ``outside_phases`` is
    ``total`` less ``queue``, the phases and ``image``: mostly the job's work that was on the GPU ahead of
    the live render's first kernel (its phases are timed by CUDA events that run after them), plus the
    server's own 1-4 ms a request."""
    other = Client(port)
    t0 = time.perf_counter()
    status, job = other.json("POST", path, body)
    if status != 202:
        raise RuntimeError(f"{path} failed: {status} {job}")
    times: list[float] = []
    splits: list[dict[str, float]] = []
    state: dict = {}
    pauses = random.Random(0)
    while True:
        _, state = other.json("GET", f"/v1/jobs/{job['job_id']}")
        if state["state"] in JOB_ENDED:
            break
        az = 200.0 + 3.0 * len(times)
        row = timed_renders(client, [render_body(az, *live)], "image/png")
        times.append(row["client_p50_ms"])
        split = dict(row["server_p50_ms"])  # one request: its own split
        outside = sum(split.get(k, 0.0) for k in ("queue", *RENDER_PHASES, "image"))
        split["outside_phases"] = split.get("total", 0.0) - outside
        splits.append(split)
        if pause_s is not None:
            time.sleep(pauses.uniform(*pause_s))
    seconds = time.perf_counter() - t0
    if state["state"] != "done":
        raise RuntimeError(f"{path} job ended {state['state']}: {state.get('error')}")
    keys = sorted({k for s in splits for k in s})
    return {
        "pause_s": list(pause_s) if pause_s is not None else None,
        "job_seconds": round(seconds, 2),
        "live_requests": len(times),
        "live_client_p50_ms": p50_ms(times),
        "live_client_max_ms": round(max(times), 1) if times else None,
        "live_server_p50_ms": {k: p50_ms([s[k] for s in splits if k in s]) for k in keys},
        # the job's GPU time by phase, where the job reports it (a sequence does, an inversion does not)
        **({"server_phase_ms": state["phase_ms"]} if state.get("phase_ms") is not None else {}),
    }


def live_during_sequence(
    client: Client,
    port: int,
    cameras: list[dict],
    steps: int,
    live: tuple,
    pause_s: tuple[float, float] | None = None,
) -> dict:
    """:func:`live_during_job` for a sequence job of ``cameras``."""
    body = {"cameras": cameras, "steps": steps, "guidance": 7.5}
    row = live_during_job(client, port, "/v1/jobs/sequence", body, live, pause_s)
    return {"frames": len(cameras), "sequence_seconds": row.pop("job_seconds"), **row}


def pixels(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# what can be timed after the cold start, the first view and the warm-up, in the order they run
SECTIONS = ("renders", "superseded", "sequence", "new-size", "asked-size", "inversion")


def parse_sections(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or [text]}: choose from {', '.join(SECTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU check of the script on the toy model (tiny sizes)")
    p.add_argument("--model", default=None, help="model folder (default: write SD 2.1-sized random weights)")
    p.add_argument("--work", type=Path, default=None, help="folder for the model and the server's data")
    p.add_argument(
        "--out", type=Path, default=BENCH_DIR / "server_gpu.json", help="the JSON report (under $OUT when set)"
    )
    p.add_argument("--repeats", type=int, default=10, help="requests per timed row")
    p.add_argument("--frames", type=int, default=24, help="frames of the sequence job")
    p.add_argument(
        "--invert-steps", type=int, default=None, help="steps of each timed inversion (default: 100; --smoke: 3)"
    )
    p.add_argument("--port", type=int, default=7871)
    p.add_argument(
        "--busy-s",
        type=float,
        default=30.0,
        help="seconds of live renders (and renders at the new size) sent while the new size compiles",
    )
    p.add_argument(
        "--compile-processes",
        type=int,
        default=None,
        help="passed to the server (default: the server's own default)",
    )
    p.add_argument(
        "--sections",
        type=parse_sections,
        default=SECTIONS,
        help=f"comma-separated sections to time after the cold start and the warm-up ({','.join(SECTIONS)}; "
        "default: all): a cold GPU machine needs about five minutes for the warm-up alone, so a run limited "
        "in time can time the rows it came for",
    )
    p.add_argument(
        "--training-ahead",
        choices=("wait", "during"),
        default="wait",
        help="wait: time the sections once the helpers have compiled the training graphs of likely inversions "
        "(a cold cache: ~3 minutes after the warm-up shapes); during: at once, while they may still compile",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=None,
        help="passed to the server (default: the server's own default, compiled on CUDA); "
        "off: every render runs uncompiled, its UNet replayed from CUDA graphs",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="server-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        live, view, new_size, asked_size, ref_size = (64, 64, 3), (64, 48, 4), (48, 32), (56, 40), (64, 64)
    else:
        live, view, new_size, asked_size, ref_size = (512, 512, 8), (768, 576, 30), (640, 480), (704, 528), (512, 512)
    if args.invert_steps is None:
        args.invert_steps = 3 if args.smoke else 100
    out = output_path(args.out)
    report: dict = {"command": command_line(), "machine": machine(), "sections": list(args.sections)}

    def save() -> None:  # after every section: a run stopped by a time limit keeps what it measured
        write_json(out, report)

    model = args.model
    if model is None and not args.smoke:
        import torch

        from benchmarks.sd21 import write_sd21_viewneti_model

        t0 = time.perf_counter()
        model = str(write_sd21_viewneti_model(work / "sd21-random", device="cuda"))
        report["model_write_s"] = round(time.perf_counter() - t0, 1)
        report["gpu"] = torch.cuda.get_device_name(0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "server", "--port", str(args.port), "--data-dir", str(work / "data")]
    if model:
        cmd += ["--model", model]
    if args.compile is not None:
        cmd += ["--compile", args.compile]
    if args.compile_processes is not None:
        cmd += ["--compile-processes", str(args.compile_processes)]
    log_path = work / "server.log"
    t_start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(args.port)
        health = wait_health(client, proc, timeout=900, log_path=log_path)
        report["ready_s"] = round(time.perf_counter() - t_start, 1)
        report["health_at_ready"] = health
        report["compile_processes"] = (health.get("compiled_shapes") or {}).get("helper_processes")
        warm = (health.get("compiled_shapes") or {}).get("queued", [])
        compiling = (health.get("compiled_shapes") or {}).get("compiling")
        warm_shapes = ([compiling] if compiling else []) + list(warm)

        # the first view at the native size, while its graph is (probably) still compiling
        first = timed_renders(client, [render_body(10.0, view[0], view[1], view[2])], "image/png")
        report["first_view_after_ready"] = first
        save()

        health = wait_compiled(client, warm_shapes, timeout=1200)
        report["warmup_compiled_s"] = round(time.perf_counter() - t_start, 1)
        report["compiled_shapes"] = health.get("compiled_shapes")
        save()
        if args.training_ahead == "wait":
            ahead = wait_training_ahead(client, timeout=900)
            report["training_ahead_done_s"] = round(time.perf_counter() - t_start, 1) if ahead else None
        report["training_ahead_at"] = {}

        def section(name: str) -> bool:
            """Whether ``name`` is to be timed; if so, note where the training-graph helpers are now."""
            if name not in args.sections:
                return False
            report["training_ahead_at"][name] = training_ahead_state(client)
            return True

        n = args.repeats
        if section("renders"):
            time_render_rows(client, report, live, view, n)
            save()

        if section("superseded"):
            # the camera moves during a refinement: what the user waits for the live frame of the new pose
            report["live_after_superseded_view"] = superseded_renders(client, args.port, view, live, n, delay_s=0.15)
            save()

        if section("sequence"):
            time_sequences(client, report, args, health, view, live, save)

        if section("new-size"):
            health = time_new_size(client, report, args, health, new_size, live, view)
            save()

        if section("asked-size"):
            time_asked_size(client, report, log_path, asked_size, view)
            save()

        if section("inversion"):
            time_inversion(client, report, args, live, ref_size, save, t_start)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    report["server_log_compile_lines"] = [
        line.strip()
        for line in log_path.read_text().splitlines()
        if "compil" in line or "ready" in line or "failed" in line or "first-use" in line
    ][-20:]
    save()
    print_table(report)


def time_render_rows(client: Client, report: dict, live: tuple, view: tuple, n: int) -> None:
    """Live and view renders, new pose and same pose, in PNG and JPEG."""
    rows: dict = {}
    for accept, tag in (("image/png", "png"), ("image/jpeg", "jpeg")):
        for (w, h, steps), name in ((live, "live"), (view, "view")):
            same = [render_body(30.0, w, h, steps)] * (n + 1)
            # poses no earlier row used (the server caches text encodings per pose)
            offset = 0.0 if tag == "png" else 3.5
            new = [render_body(40.0 + offset + 7.0 * k, w, h, steps) for k in range(n + 1)]
            timed_renders(client, same[:1], accept)  # encodings of 'same' cached; warm
            rows[f"{name}_{w}x{h}_{steps}steps_{tag}_new_pose"] = timed_renders(client, new[1:], accept)
            rows[f"{name}_{w}x{h}_{steps}steps_{tag}_same_pose"] = timed_renders(client, same[1:], accept)
    report["renders"] = rows


def time_sequences(
    client: Client,
    report: dict,
    args: argparse.Namespace,
    health: dict,
    view: tuple,
    live: tuple,
    save: Callable[[], None],
) -> None:
    """A sequence job at the view size, its frames against one-by-one renders, then the same job while
    live renders are sent (``health``: the server's, once the warm-up shapes compiled)."""
    cams = [
        {"camera_to_anchor": orbit(360.0 * k / args.frames), "fov_y_deg": 40.0, "width": view[0], "height": view[1]}
        for k in range(args.frames)
    ]
    batch = max(1, int(health.get("sequence_batch") or 1))
    run_sequence(client, cams[:batch], view[2])  # warm the sequence path (batched shape compiled at start)
    seconds, state = run_sequence(client, cams, view[2])
    report["sequence"] = {
        "frames": args.frames,
        "size": f"{view[0]}x{view[1]}",
        "steps": view[2],
        "seconds": round(seconds, 2),
        "ms_per_frame": round(seconds * 1e3 / args.frames, 1),
        "sequence_batch": health.get("sequence_batch"),
        # the job's GPU time by phase, summed over its renders (text encoder, denoise, VAE decode)
        "server_phase_ms": state.get("phase_ms"),
    }
    # frames of the job against one-by-one renders of the same cameras (same seed)
    diffs = []
    for k in range(min(4, args.frames)):
        _, _, frame, _ = client.call("GET", f"/v1/jobs/{state['job_id']}/frames/{k}", accept="image/png")
        _, _, single, _ = client.call(
            "POST", "/v1/render", {"camera": cams[k], "seed": 0, "steps": view[2], "guidance": 7.5}, "image/png"
        )
        d = abs(pixels(frame) - pixels(single))
        diffs.append({"frame": k, "max_abs_diff": int(d.max()), "fraction_differing": round(float((d > 0).mean()), 5)})
    report["sequence"]["vs_single_renders"] = diffs
    save()

    # the user keeps moving the camera while a camera path renders (new poses, so neither the job nor the
    # live renders find cached encodings); before the new-size section, which on a machine with a cold
    # compile cache can outlast a 10-minute call. A failure here is recorded, not fatal.
    # Sent back to back, then with pauses between them (as the add-on sends them), other poses each time.
    for key, shift, pause_s in (
        ("live_during_sequence", 7.5, None),
        ("live_during_sequence_paused", 15.0, LIVE_PAUSE_S),
    ):
        moved = [{**c, "camera_to_anchor": orbit(360.0 * k / args.frames + shift)} for k, c in enumerate(cams)]
        try:
            report[key] = live_during_sequence(client, args.port, moved, view[2], live, pause_s)
        except (RuntimeError, OSError, http.client.HTTPException) as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        save()


def time_new_size(
    client: Client, report: dict, args: argparse.Namespace, health: dict, new_size: tuple, live: tuple, view: tuple
) -> dict:
    """A size nobody warmed up: answered uncompiled at once, compiled in the background while live renders
    and more requests at the new size go on. Returns the health once it is compiled."""
    w, h = new_size
    body = render_body(50.0, w, h, view[2])
    t0 = time.perf_counter()
    report["new_size_first_request"] = timed_renders(client, [body], "image/png")
    label = f"{w}x{h}"
    if health.get("compiled_shapes"):
        live_ms, new_ms = [], []
        k = 0
        while True:
            _, state = client.json("GET", "/v1/health")
            shapes = state["compiled_shapes"]
            if label in shapes["ready"] or label in shapes["failed"] or time.perf_counter() - t0 > args.busy_s:
                break
            live_ms.append(timed_renders(client, [render_body(60.0 + k, live[0], live[1], live[2])], "image/png"))
            if k % 5 == 4:
                new_ms.append(timed_renders(client, [render_body(60.0 + k, w, h, view[2])], "image/png"))
            k += 1
        report["while_new_size_compiles"] = {
            "live_requests": len(live_ms),
            "live_client_p50_ms": p50_ms([r["client_p50_ms"] for r in live_ms]),
            "live_client_max_ms": max((r["client_max_ms"] for r in live_ms), default=None),
            "new_size_requests": len(new_ms),
            "new_size_client_p50_ms": p50_ms([r["client_p50_ms"] for r in new_ms]),
        }
        health = wait_compiled(client, [label], timeout=1200)
    report["new_size_compile_s"] = round(time.perf_counter() - t0, 1)
    report["compiled_shapes_at_end"] = health.get("compiled_shapes")
    timed_renders(client, [body], "image/png")  # first compiled call records the CUDA graph
    report["new_size_after_compile"] = timed_renders(client, [body] * 3, "image/png")
    return health


def time_asked_size(client: Client, report: dict, log_path: Path, asked_size: tuple, view: tuple) -> None:
    """A size the client asked to compile first (the add-on's resolution): on CUDA the server does its
    first-use work while idle, so the first request there (still uncompiled) does not pay it."""
    aw, ah = asked_size
    asked = f"{aw}x{ah}"
    status, answer = client.json("POST", "/v1/compile", {"width": aw, "height": ah})
    if status != 202:
        raise RuntimeError(f"POST /v1/compile {asked}: {status} {answer}")
    primes = str(report["health_at_ready"].get("device", "")).startswith("cuda")
    report["asked_size"] = {
        "size": asked,
        "compile_status": answer["status"],
        # from the request to the server's log line saying it is done (None: nothing to do on a CPU)
        "first_use_done_s": wait_log_line(log_path, f"first-use work of {asked} done ahead", 60) if primes else None,
        "first_request": timed_renders(client, [render_body(70.0, aw, ah, view[2])], "image/png"),
    }


def time_inversion(
    client: Client,
    report: dict,
    args: argparse.Namespace,
    live: tuple,
    ref_size: tuple,
    save: Callable[[], None],
    t_start: float,
) -> None:
    """An inversion (the panel's "invert a reference"), alone and then while live renders are sent, back
    to back and with pauses: what the live preview costs while a token is fitted (served between two
    optimisation steps) and what it costs the inversion. References: two views of the built-in object
    rendered by the server at the training size; a first short inversion compiles the training graph.
    Each new object is deleted after its run."""
    w, h = ref_size
    cams = [{"camera_to_anchor": orbit(az), "fov_y_deg": 40.0, "width": w, "height": h} for az in (0.0, 90.0)]
    images = []
    for cam in cams:
        status, _, png, _ = client.call(
            "POST", "/v1/render", {"camera": cam, "seed": 0, "steps": live[2], "guidance": 7.5}, "image/png"
        )
        if status != 200:
            raise RuntimeError(f"reference render failed: {status} {png[:300]!r}")
        images.append(base64.b64encode(png).decode())
    tag = f"{os.getpid()}-{int(time.time())}"  # a --work folder reused by another run keeps no name clash

    def body(name: str, steps: int) -> dict:
        return {"name": f"bench-{name}-{tag}", "images": images, "cameras": cams, "steps": steps, "preview_every": 0}

    def delete(b: dict) -> None:
        status, answer = client.json("DELETE", f"/v1/objects/{b['name']}")
        if status != 204:
            raise RuntimeError(f"DELETE /v1/objects/{b['name']}: {status} {answer}")

    # the helpers compile the likely training sizes ahead (on big GPUs): the first inversion then compiles
    # its training graphs from their cache; waited for, so that it times that case
    ahead = wait_training_ahead(client, timeout=900)
    ahead_done_s = round(time.perf_counter() - t_start, 1)
    first = body("first", 2)
    first_s, _ = run_job(client, "/v1/jobs/invert", first)  # compiles the training graph on a GPU
    delete(first)
    alone = body("alone", args.invert_steps)
    seconds, _ = run_job(client, "/v1/jobs/invert", alone)
    delete(alone)
    report["inversion"] = {
        "images": len(images),
        "size": f"{w}x{h}",
        "steps": args.invert_steps,
        "training_ahead": ahead,  # {size: done | failed: ...}; {} when none is compiled ahead
        "training_ahead_done_s": ahead_done_s if ahead else None,  # since the server started
        "first_2_steps_s": round(first_s, 1),
        "seconds": round(seconds, 2),
        "ms_per_step": round(seconds * 1e3 / args.invert_steps, 1),  # the job's setup included
    }
    save()
    for key, pause_s in (("live_during_inversion", None), ("live_during_inversion_paused", LIVE_PAUSE_S)):
        b = body(key.replace("_", "-"), args.invert_steps)
        try:
            report[key] = {
                "steps": args.invert_steps,
                **live_during_job(client, args.port, "/v1/jobs/invert", b, live, pause_s),
            }
        except (RuntimeError, OSError, http.client.HTTPException) as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        save()
        if "error" not in report[key]:  # a failed inversion added no object
            delete(b)


def print_live_during(d: dict | None, key: str) -> None:
    """One live-during-a-job row of the table (nothing for a section that did not run)."""
    how = "with random pauses" if key.endswith("_paused") else "one after another"
    if d and "error" in d:
        print(f"  again with live renders sent {how}: failed, {d['error']}")
    elif d:
        seconds = d.get("sequence_seconds", d.get("job_seconds"))
        print(
            f"  again with {d['live_requests']} live renders sent {how}: {seconds} s; the live "
            f"renders p50 {d['live_client_p50_ms']} ms (max {d['live_client_max_ms']})"
        )
        print(f"    their server split (p50 ms): {d.get('live_server_p50_ms')}")


def print_table(report: dict) -> None:
    """The report as text; sections that were not run (``--sections``) are left out."""
    print(f"\nserver start -> ready {report['ready_s']} s, warm-up shapes compiled at {report['warmup_compiled_s']} s")
    if report.get("training_ahead_done_s") is not None:
        print(f"training graphs compiled ahead by the helpers at {report['training_ahead_done_s']} s; timed after that")
    busy = [k for k, v in report.get("training_ahead_at", {}).items() if training_ahead_pending(v)]
    if busy:
        print(f"sections begun while the helpers compiled training graphs: {', '.join(busy)}")
    f = report["first_view_after_ready"]
    print(f"first view right after ready: {f['client_p50_ms']} ms (server {f['server_p50_ms']})")
    if "renders" in report:
        print(f"\n{'request':58s} {'client p50':>10s} {'min':>7s} {'max':>7s}  server split (p50 ms)")
        for name, row in report["renders"].items():
            split = {k: v for k, v in row["server_p50_ms"].items() if k != "total"}
            print(
                f"{name:58s} {row['client_p50_ms']:10.1f} {row['client_min_ms']:7.1f} {row['client_max_ms']:7.1f}  "
                f"{split}"
            )
    c = report.get("live_after_superseded_view")
    if c:
        print(
            f"live request superseding a view {c['delay_ms']} ms into it: p50 {c['client_p50_ms']} ms "
            f"(max {c['client_max_ms']}), the views answered {c['superseded_statuses']}"
        )
    s = report.get("sequence")
    if s:
        print(
            f"\nsequence {s['frames']} x {s['size']}, {s['steps']} steps: {s['seconds']} s "
            f"({s['ms_per_frame']} ms a frame)"
        )
        print(f"  server split (ms, all frames): {s.get('server_phase_ms')}")
        print(f"  vs one-by-one renders: {s['vs_single_renders']}")
    for key in ("live_during_sequence", "live_during_sequence_paused"):
        print_live_during(report.get(key), key)
    n = report.get("new_size_first_request")
    if n:
        compiled = (
            f"compiled in the background in {report['new_size_compile_s']} s"
            if report.get("compiled_shapes_at_end")
            else "not compiled (an uncompiled server)"
        )
        print(
            f"new size: first request {n['client_p50_ms']} ms, {compiled}, "
            f"then {report['new_size_after_compile']['client_p50_ms']} ms"
        )
    during = report.get("while_new_size_compiles")
    if during:
        print(
            f"  while it compiled ({report.get('compile_processes')} helper processes): "
            f"{during['live_requests']} live renders p50 {during['live_client_p50_ms']} ms "
            f"(max {during['live_client_max_ms']}), {during['new_size_requests']} at the new size "
            f"p50 {during['new_size_client_p50_ms']} ms"
        )
    a = report.get("asked_size")
    if a:
        primed = "" if a["first_use_done_s"] is None else f", its first-use work done {a['first_use_done_s']} s after"
        print(
            f"size asked for by POST /v1/compile ({a['size']}, {a['compile_status']}{primed}): "
            f"first request {a['first_request']['client_p50_ms']} ms"
        )
    inv = report.get("inversion")
    if inv:
        print(
            f"\ninversion of {inv['images']} x {inv['size']}, {inv['steps']} steps: {inv['seconds']} s "
            f"({inv['ms_per_step']} ms a step, setup included; the first, 2 steps: {inv['first_2_steps_s']} s)"
        )
        if inv.get("training_ahead"):
            print(
                f"  training graphs compiled ahead by the helpers: {inv['training_ahead']}, "
                f"{inv['training_ahead_done_s']} s after start"
            )
    for key in ("live_during_inversion", "live_during_inversion_paused"):
        print_live_during(report.get(key), key)


if __name__ == "__main__":
    main()
