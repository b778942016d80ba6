"""benchmarks/helper_contention.py on the CPU (the toy model, uncompiled renders): rounds of renders with
the compile helper running and stopped, then alone, and the helper closed when the rounds run out of time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
def test_renders_are_timed_with_the_helper_running_stopped_and_gone(tmp_path):
    out = tmp_path / "hc.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    cmd = [sys.executable, "-m", "benchmarks.helper_contention", "--smoke", "--out", str(out), "--round", "2"]
    run = subprocess.run(
        [*cmd, "--max-s", "20", "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = report["summary"]
    for state in ("running", "stopped"):  # the helper loads a model and compiles for longer than 20 s here
        assert summary[f"{state}_new_pose"]["n"] >= 1 and summary[f"{state}_same_pose"]["n"] >= 1, summary
    assert summary["alone_new_pose"]["n"] == 2 and summary["alone_same_pose"]["n"] == 2
    assert report["helper_cut_at_s"] >= 20 and "error" in report["helper"]  # cut: closed mid-compile
    assert all(r["ms"] > 0 for r in report["renders"])
    assert "state" in run.stdout and "alone_new_pose" in run.stdout
