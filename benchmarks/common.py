"""What every benchmark script shares: timing, FLOPs, peak memory, JSON reports, toy-engine setup.

Run the scripts as modules from the repository root, so that this tree (not an installed copy) is
imported: ``.venv/bin/python -m benchmarks.cpu_render --threads 2``. Heavy imports (torch, the
engine) happen inside the functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from viewneti_backend.engine import Engine

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
TOY_RESULTS = BENCH_DIR / "toyworld"
T_START = time.perf_counter()


# ---- command line and output ---------------------------------------------------------------------
def kernel_choice_env() -> dict[str, str]:
    """The environment variables set for this run that choose the library's kernels (they change timings,
    so a report's command must carry them). Only these: others, such as the server's token, stay out."""
    from viewneti_backend.attention import KEYS_AHEAD_ENV, SDPA_ENV
    from viewneti_backend.group_norm import GROUP_NORM_ENV

    names = (GROUP_NORM_ENV, KEYS_AHEAD_ENV, SDPA_ENV)
    return {name: os.environ[name] for name in names if name in os.environ}


def command_line() -> str:
    """The command that reproduces this run, as a user types it: ``[VIEWNETI_...=X] python -m benchmarks.NAME
    ARGS``, with the kernel-choosing variables of :func:`kernel_choice_env` in front."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = ["-m", spec.name] if spec is not None else [os.path.relpath(sys.argv[0], REPO)]
    env = [f"{name}={shlex.quote(value)}" for name, value in kernel_choice_env().items()]
    return " ".join([*env, "python", *prog, shlex.join(sys.argv[1:])]).rstrip()


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (an argparse ``type=``)."""
    return [int(s) for s in text.split(",") if s.strip()]


def output_path(out: str | Path) -> Path:
    """Where to write ``out``: under ``$OUT`` when set (the GPU device machine returns only that folder)."""
    target = Path(os.environ["OUT"]) / Path(out).name if os.environ.get("OUT") else Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_json(path: str | Path, report: Any, **dumps: Any) -> Path:
    """Write ``report`` as indented JSON, atomically (a run stopped mid-write keeps the previous file)."""
    from viewneti_backend.atomic_files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, **dumps))
    return path


def log(msg: str) -> None:
    """Print with the seconds since the run started (the device allows 10 minutes per command)."""
    print(f"[{time.perf_counter() - T_START:5.0f} s] {msg}", flush=True)


# ---- torch and the toy engine --------------------------------------------------------------------
def set_threads(threads: int | None) -> None:
    """Offline Hugging Face, and ``threads`` torch CPU threads (None: torch's own choice)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def toy_engine(model: str | None = None, device: str = "cpu", **load: Any) -> Iterator[Engine]:
    """An engine over ``model`` (None: the embedded toy model) with a fresh, temporary object library,
    so only the model's built-in objects are there and nothing is left behind."""
    from viewneti_backend.engine import Engine

    with tempfile.TemporaryDirectory() as library:
        yield Engine.load(model, device=device, library_dir=library, **load)


def machine() -> dict:
    """The host, Python, the CPU and its cores, torch's threads and version, and the GPU (when CUDA
    has one: a report's numbers depend on which card ran them), for a report."""
    import platform

    import torch

    info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---- timing, FLOPs, memory -----------------------------------------------------------------------
def sync() -> None:
    """Wait for the GPU (a no-op without CUDA), so a wall-clock time covers the queued kernels."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_each(fn: Callable[[int], Any], repeats: int = 3, warmup: int = 1) -> list[float]:
    """The wall time of ``fn(i)`` for ``i`` in ``0..repeats-1`` (s), after warm-up calls with negative
    indices (``-warmup..-1``); the index lets each call pick its own seed or pose."""
    for i in range(-warmup, 0):
        fn(i)
    sync()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """The median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls, and every time (s)."""
    times = timed_each(lambda _: fn(), repeats, warmup)
    return float(statistics.median(times)), times


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(values: list[float]) -> dict:
    """p50 / p95 / mean / min / max of ``values`` (in their own unit) and their count."""
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of ``fn()`` by torch.utils.flop_counter (works on the meta device: no weights needed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def peak_memory_gib(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory allocated during ``fn()`` in GiB (NaN without CUDA, after running ``fn``)."""
    import torch

    if not torch.cuda.is_available():
        fn()
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() / 2**30
