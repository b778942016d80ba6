"""The compile helper process (viewneti_backend/compile_warmer.py): what it compiles, the server's own
compile of that shape finds in torch's on-disk caches. Real processes, the embedded toy model, CPU."""

from __future__ import annotations

import os
import sys

import pytest

from viewneti_backend.compile_warmer import HELPER_NICENESS, WarmError, WarmProcess
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
