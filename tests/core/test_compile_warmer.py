"""The compile helper process (viewneti_backend/compile_warmer.py): what it compiles, the server's own
compile of that shape finds in torch's on-disk caches. Real processes, the embedded toy model, CPU."""

from __future__ import annotations

import os
import sys

import pytest

from viewneti_backend.compile_warmer import HELPER_NICENESS, TrainingSize, WarmError, WarmProcess
from viewneti_backend.render_shape import RenderShape


def test_a_helper_that_cannot_load_the_model_says_why(tmp_path):
    helper = WarmProcess(str(tmp_path / "no-such-model"), "cpu", "float32", "default")
    try:
        with pytest.raises(WarmError, match="could not load the model.*does not exist"):
            helper.warm("64x64")
        with pytest.raises(WarmError, match="could not load the model"):  # and again, without a restart
            helper.warm("64x48")
    finally:
        helper.close()


@pytest.mark.skipif(sys.platform == "win32", reason="process niceness is POSIX-only")
def test_the_helper_runs_at_a_lower_cpu_priority_than_the_server(tmp_path):
    helper = WarmProcess(str(tmp_path / "no-such-model"), "cpu", "float32", "default")
    try:
        with pytest.raises(WarmError):
            helper.warm("64x64")  # started, answered, and now waits for the next label
        proc = helper._proc
        assert proc is not None and proc.poll() is None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, ours + HELPER_NICENESS)
    finally:
        helper.close()


@pytest.mark.slow
def test_after_the_helper_compiled_a_shape_the_engine_compiles_it_from_the_cache(tmp_path, monkeypatch):
    from viewneti_backend.engine import Engine

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the helper inherits it
    engine = Engine.load(device="cpu", compile="default")
    helper = engine.compile_warmer()
    try:
        reply = helper.warm("64x64")
        assert reply["label"] == "64x64" and reply["seconds"] > 0 and reply["load_s"] > 0
        assert any((tmp_path / "inductor").rglob("*")), "the helper wrote nothing to the cache"
    finally:
        helper.close()
    stats: dict[str, int] = {}
    engine.compile_shape(RenderShape(1, 64, 64), cache_stats=stats)
    assert stats["hits"] >= 1 and stats["misses"] == 0, stats  # nothing compiled again in this process
    assert RenderShape(1, 64, 64) in engine.ready_shapes


def test_an_uncompiled_engine_has_no_helper():
    from viewneti_backend.engine import Engine
    from viewneti_backend.errors import InputError

    engine = Engine.load(device="cpu", compile="off")
    with pytest.raises(InputError, match="not compiled"):
        engine.compile_warmer()


def test_training_size_labels_round_trip_and_bad_ones_fail():
    assert TrainingSize(512, 384).label() == "train:512x384"
    assert TrainingSize.parse("train:512x384") == TrainingSize(512, 384)
    for bad in ("512x384", "train:512", "train:0x384", "train:axb", "train:512x384x2"):
        with pytest.raises(ValueError, match="train:WIDTHxHEIGHT"):
            TrainingSize.parse(bad)


def test_training_sizes_to_compile_ahead():
    """A square reference's and a native 4:3 view's training sizes, on a compiled engine with a
    view-mapper only (the toy model: native 64)."""
    from viewneti_backend.engine import Engine

    assert Engine.load(device="cpu", compile="default").training_warmup_sizes() == [(64, 64), (64, 48)]
    assert Engine.load(device="cpu", compile="off").training_warmup_sizes() == []


@pytest.mark.slow
def test_after_the_helper_compiled_a_training_size_the_first_inversion_compiles_from_the_cache(tmp_path, monkeypatch):
    """The helper's one throwaway optimisation step (Engine.compile_training) compiles the same graphs as
    the server's first inversion at that size: the inversion then finds them all in the on-disk cache."""
    from PIL import Image
    from torch._dynamo.utils import counters

    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the helper inherits it
    engine = Engine.load(device="cpu", compile="default", library_dir=tmp_path / "lib")
    helper = engine.compile_warmer()
    try:
        reply = helper.warm(TrainingSize(64, 48).label())
        assert reply["label"] == "train:64x48" and reply["seconds"] > 0
    finally:
        helper.close()
    reference = Image.new("RGB", (64, 48), (180, 60, 40))
    camera = Camera(orbit_pose(30.0, 20.0, 4.0), 40.0, 64, 48)
    before = dict(counters["inductor"])
    entry = engine.invert([reference], [camera], "warmed", steps=1)
    after = counters["inductor"]
    hits, misses = (int(after.get(k, 0)) - int(before.get(k, 0)) for k in ("fxgraph_cache_hit", "fxgraph_cache_miss"))
    assert entry["name"] == "warmed" and (64, 48) in engine.compiled_training_sizes
    assert hits >= 1 and misses == 0, (hits, misses)  # nothing compiled again in this process


def test_the_docs_quote_the_gpu_memory_for_training_ahead():
    from pathlib import Path

    from viewneti_backend.engine import TRAINING_AHEAD_MIN_GPU_GIB as gib

    root = Path(__file__).resolve().parents[2]
    for doc, quote in (("server/API.md", f"only on GPUs with at least {gib} GiB"), ("README.md", f"GPUs of {gib} GiB")):
        assert quote in " ".join((root / doc).read_text().split()), doc


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (T: stopped), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _settled_state(pid: int, stopped: bool) -> str:
    """The process state once a signal sent to it took effect (signals are delivered asynchronously)."""
    import time

    deadline = time.monotonic() + 5.0
    while (_process_state(pid) == "T") != stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    return _process_state(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process state from /proc (Linux)")
def test_a_paused_helper_is_stopped_until_resumed_and_still_closes(tmp_path):
    helper = WarmProcess(str(tmp_path / "no-such-model"), "cpu", "float32", "default")
    try:
        assert helper.pause() is False and not helper.paused  # no process yet: nothing to stop
        with pytest.raises(WarmError):
            helper.warm("64x64")  # started; now waits for the next label
        proc = helper._proc
        assert proc is not None
        assert helper.pause() is True and helper.paused
        assert helper.pause() is False  # once
        assert _settled_state(proc.pid, stopped=True) == "T"
        helper.resume()
        assert not helper.paused and _settled_state(proc.pid, stopped=False) in ("S", "R")
        with pytest.raises(WarmError, match="could not load the model"):  # it answers again
            helper.warm("64x48")
        assert helper.pause() is True
    finally:
        helper.close()  # resumed first: it reads the end of its input and exits by itself
    assert proc.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="pauses with SIGSTOP (POSIX)")
def test_close_does_not_wait_for_a_compile_in_progress(tmp_path):
    """The server's stop closes helpers with timeout=0: a helper mid-compile is killed at once, and the
    warm() call waiting on it raises, instead of close() waiting for the compile (minutes)."""
    import threading
    import time

    helper = WarmProcess(str(tmp_path / "no-such-model"), "cpu", "float32", "default")
    with pytest.raises(WarmError):
        helper.warm("64x64")  # started
    assert helper.pause()  # a stopped helper stands in for one busy compiling: it answers nothing
    errors: list[Exception] = []

    def warm() -> None:
        try:
            helper.warm("64x48")
        except WarmError as exc:
            errors.append(exc)

    thread = threading.Thread(target=warm)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for an answer
    t0 = time.perf_counter()
    helper.close(timeout=0)
    assert time.perf_counter() - t0 < 5.0
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1 and "exited" in str(errors[0])
