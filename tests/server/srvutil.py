"""Helpers for the server tests: run the real server as a subprocess, build requests, read events.

The session-wide ``server`` uses the real ``viewneti_backend.engine.Engine`` with its embedded toy
model. For quick iterations on the server alone, ``VIEWNETI_TEST_FAKE_ENGINE=1`` swaps in
``tests/server/fake_engine.py`` (the acceptance runs never set it).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
USE_FAKE = os.environ.get("VIEWNETI_TEST_FAKE_ENGINE") == "1"
STEPS = 4  # denoising steps used by the tests (tiny: CPU toy model)
SIZE = 64  # image side used by the tests
LONG_INVERT = 5000  # steps of an inversion that runs until the test cancels or kills it (<= --max-invert-steps)
STARTUP_TIMEOUT_S = float(os.environ.get("VIEWNETI_TEST_STARTUP_S", "300"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Filled by the session fixture in conftest.py (e.g. VIEWNETI_MODEL while the embedded model is missing).
EXTRA_ENV: dict[str, str] = {}


def server_env(extra: dict[str, str] | None = None, fake: bool = USE_FAKE) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    # One torch thread: the test machine has 2 cores shared with the test process itself, and
    # oversubscribed OpenMP threads make a tiny model many times slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(EXTRA_ENV)
    env.pop("VIEWNETI_TOKEN", None)
    if fake:  # fake_server.py (python -m fake_server) and fake_engine.py live next to this file
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


class ServerProcess:
    """One ``python -m server`` process with its own data dir and log file."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        token: str | None = None,
        fake: bool = USE_FAKE,
    ) -> None:
        """``fake``: run the server's CLI with the fake engine (``python -m fake_server``)."""
        self.data_dir = Path(data_dir)
        self.fake = fake
        self.host = host
        self.port = port or free_port()
        self.args = list(args or [])
        self.env = env or {}
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.data_dir.name}-{self.port}.log"
        # Never send traffic to a non-loopback address, whatever the bind.
        self.url = f"http://127.0.0.1:{self.port}" if host in ("0.0.0.0", "127.0.0.1") else f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fake_server" if self.fake else "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    def start(self, wait: bool = True) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = server_env(self.env, self.fake)
        if self.token:
            env["VIEWNETI_TOKEN"] = self.token
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=kw.pop("timeout", 120.0), **kw)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/v1/health", headers=self.headers(), timeout=5)
                last = r.status_code
                if r.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s (last: {last}):\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------------------------------
def wire_camera(
    azimuth: float = 30.0,
    elevation: float = 20.0,
    radius: float = 4.0,
    size: int = SIZE,
    height: int | None = None,
    fov: float = 39.6,
) -> dict[str, Any]:
    from viewneti_backend.cameras import orbit_pose

    return {
        "camera_to_anchor": orbit_pose(azimuth, elevation, radius).tolist(),
        "fov_y_deg": fov,
        "width": size,
        "height": height or size,
    }


def render_body(**kw: Any) -> dict[str, Any]:
    """A /v1/render body at the tests' few steps; guidance is left to the model's default unless given."""
    cam = kw.pop("camera", None) or wire_camera(
        **{k: kw.pop(k) for k in list(kw) if k in ("azimuth", "elevation", "radius", "size", "height")}
    )
    body = {"camera": cam, "seed": 0, "steps": STEPS}
    body.update(kw)
    return body


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_b64(size: tuple[int, int] = (64, 64), color=(200, 50, 50), fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.new("RGB", size, color)
    im.paste((20, 20, 200), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    im.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def read_events(
    client: httpx.Client, job_id: str, timeout: float = 600.0, stop_after: str | None = None
) -> list[tuple[str, dict]]:
    """Read a job's SSE stream to its end (or until an event named ``stop_after``)."""
    import json

    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                assert name is not None, f"a data line before any event line: {line!r}"
                events.append((name, json.loads(line[5:])))
                if name == stop_after or name in ("done", "error", "cancelled", "interrupted"):
                    break
    return events


def wait_job(
    client: httpx.Client, job_id: str, states=("done", "error", "cancelled", "interrupted"), timeout: float = 600.0
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout}s: {job}")
