"""Compile render shapes in a helper process, so the server's own compile of a shape is a cache hit.

``torch.compile`` of an SD-sized UNet is a minute of pure Python (tracing, lowering, code generation).
In the server's process that minute holds the GIL and starves the renders that run meanwhile (an
uncompiled view took 19 s instead of ~1 s on an H200). A helper process that loads the same model
and compiles the same shape the same way fills inductor's on-disk caches (FX graph cache, AOT
autograd cache, Triton kernels) without touching the server's GIL; the server then compiles that
shape itself in seconds from the caches, and only that short part competes with its renders.

The same holds for an inversion's training graphs (the first inversion at a size compiled them for
125 s on an H200, 21 s from the caches): a label ``train:512x384`` (:class:`TrainingSize`) runs one
optimisation step of a throwaway token there (``Engine.compile_training``).

The helper is ``python -m viewneti_backend.compile_warmer`` with the engine's model, view-mapper, device,
dtype and compile mode; it reads one label per line on stdin (``768x576x4``, see
:class:`.render_shape.RenderShape`, or ``train:512x384``) and answers each with one JSON line on stdout,
prefixed :data:`REPLY_PREFIX` (anything else it prints is ignored). The parent side,
:class:`WarmProcess`, is stdlib-only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPLY_PREFIX = "viewneti-warm "
TRAINING_LABEL_PREFIX = "train:"
# The helper (and the compile workers it starts, which inherit it) yields the CPU to the server: renders
# that run uncompiled meanwhile launch their kernels from the server's Python thread (measured on an H100:
# a 768x576 view right after start took 4.2 s next to three full-priority helpers, 2.1 s alone).
HELPER_NICENESS = 10
_REPO_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class TrainingSize:
    """An inversion's training size (width, height) whose training graphs a helper compiles ahead."""

    width: int
    height: int

    def label(self) -> str:
        return f"{TRAINING_LABEL_PREFIX}{self.width}x{self.height}"

    @classmethod
    def parse(cls, label: str) -> TrainingSize:
        """``train:512x384`` -> TrainingSize(512, 384); ValueError for anything else."""
        size = label.removeprefix(TRAINING_LABEL_PREFIX)
        parts = size.split("x")
        if size == label or len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"not a training size label (train:WIDTHxHEIGHT): {label!r}")
        return cls(int(parts[0]), int(parts[1]))


class WarmError(RuntimeError):
    """The helper process failed to compile a shape, or died."""


class WarmProcess:
    """One helper process; :meth:`warm` blocks (without holding the GIL) until it compiled a shape.

    Started on first use; the model loads once per helper. Thread-safe: one shape at a time."""

    def __init__(
        self,
        model: str,
        device: str,
        dtype: str,
        mode: str,
        *,
        view_mapper: str | None = None,
        env: dict[str, str] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self._args = ["--model", model, "--device", device, "--dtype", dtype, "--mode", mode]
        if view_mapper is not None:
            self._args += ["--view-mapper", view_mapper]
        self._env = env
        self._log = log
        self._lock = threading.Lock()  # one warm() at a time: held for the whole compile
        self._state_lock = threading.Lock()  # _proc and _paused: held for moments, so close() never waits
        self._proc: subprocess.Popen[str] | None = None
        self._paused: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ if self._env is None else self._env)
        # the helper must import this package as the server does, installed or from a checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        return subprocess.Popen(
            [sys.executable, "-m", "viewneti_backend.compile_warmer", *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,  # None: the server's own stderr (torch's warnings, a traceback if it dies)
            text=True,
            bufsize=1,
            env=env,
        )

    def warm(self, label: str) -> dict[str, Any]:
        """Compile one shape in the helper; returns its reply (``seconds``, ``load_s`` on first use)."""
        with self._lock:
            with self._state_lock:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(label + "\n")
                proc.stdin.flush()
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        code = proc.wait()
                        raise WarmError(f"the compile helper exited (code {code}) while compiling {label}")
                    if line.startswith(REPLY_PREFIX):
                        reply = json.loads(line[len(REPLY_PREFIX) :])
                        break
            except (OSError, ValueError) as exc:  # ValueError: close() closed its input meanwhile
                raise WarmError(f"the compile helper is gone ({exc})") from None
        if reply.get("error"):
            raise WarmError(f"the compile helper could not compile {label}: {reply['error']}")
        return reply

    def pause(self) -> bool:
        """Stop the helper process where it is (SIGSTOP) until :meth:`resume`: neither its compiling (CPU)
        nor its GPU work competes with the server's renders meanwhile. False where nothing was stopped:
        no process running, already paused, or no SIGSTOP (Windows). A :meth:`warm` call waits meanwhile."""
        stop = getattr(signal, "SIGSTOP", None)
        with self._state_lock:
            proc = self._proc
            if stop is None or self._paused is not None or proc is None or proc.poll() is not None:
                return False
            try:
                proc.send_signal(stop)
            except ProcessLookupError:
                return False
            self._paused = proc
            return True

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def resume(self) -> None:
        """Let a paused helper go on (SIGCONT); nothing if it is not paused."""
        with self._state_lock:
            proc, self._paused = self._paused, None
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)  # pyright: ignore[reportAttributeAccessIssue]  POSIX: set with SIGSTOP
                except ProcessLookupError:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """End the helper: it exits after the shape it is compiling, or is killed after ``timeout``
        seconds (a :meth:`warm` call in progress then raises :class:`WarmError`)."""
        self.resume()  # a stopped process would never read the end of its input
        with self._state_lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the helper exits after the shape it is compiling
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def _reply(**fields: Any) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m viewneti_backend.compile_warmer",
        description="Helper process of viewneti-server: compiles render shapes (one label per line on "
        "stdin) into torch's on-disk compile caches. Started by the server; not a user command.",
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--mode", required=True, help="torch.compile mode, as the server's engine uses it")
    parser.add_argument("--view-mapper", default=None, help="the server engine's view-mapper (default: the model's)")
    args = parser.parse_args(argv)
    if hasattr(os, "nice"):  # POSIX; Windows has no niceness and keeps the default priority
        try:
            os.nice(HELPER_NICENESS)
        except OSError:
            pass

    t0 = time.perf_counter()
    import tempfile

    from .engine import Engine
    from .render_shape import RenderShape

    library = tempfile.TemporaryDirectory(prefix="viewneti-warm-")  # an engine needs one; nothing is saved
    engine, load_error = None, None
    try:
        # exactly what the server's Engine.load does: same graphs, same cache keys
        engine = Engine.load(
            args.model,
            view_mapper=args.view_mapper,
            device=args.device,
            dtype=args.dtype,
            library_dir=library.name,
            compile=args.mode,
        )
    except Exception as exc:  # noqa: BLE001 - answered to every request, so the server says why
        load_error = f"could not load the model: {type(exc).__name__}: {exc}"
    load_s = time.perf_counter() - t0
    for line in sys.stdin:
        label = line.strip()
        if not label:
            continue
        if engine is None:
            _reply(label=label, error=load_error)
            continue
        t1 = time.perf_counter()
        try:
            if label.startswith(TRAINING_LABEL_PREFIX):
                size = TrainingSize.parse(label)
                engine.compile_training(size.width, size.height)
            else:
                engine.pipeline.run_graphs(RenderShape.parse(label))
        except Exception as exc:  # noqa: BLE001 - reported to the server, which then compiles in-process
            _reply(label=label, error=f"{type(exc).__name__}: {exc}")
            continue
        _reply(label=label, seconds=round(time.perf_counter() - t1, 2), load_s=round(load_s, 2))
        load_s = 0.0
    library.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
