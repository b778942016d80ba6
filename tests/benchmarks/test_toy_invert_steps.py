"""benchmarks/toy_invert_steps.py end to end on the embedded toy model (1 step, 1 render step): the
script behind RESULTS.md §1's augmentation-pool quality tables must keep running (here with the pool
option on), start at the held-out object it is given, and record its settings."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_toy_invert_steps_scores_the_objects_it_is_given_with_the_pool_option(tmp_path):
    out = tmp_path / "steps.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.toy_invert_steps",
        "--objects",
        "1",
        "--first-object",
        "1000003",
        "--checkpoints",
        "1",
        "--render-steps",
        "1",
        "--augmentation-pool",
        "9",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    run = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["object"], r["seed"]) for r in report["rows"]] == [("obj_1000003", 0)]
    assert report["config"]["benchmark"]["first_seed"] == 1000003 and report["config"]["augmentation_pool"] == 9
    assert math.isfinite(report["rows"][0]["checkpoints"]["1"]["psnr"])
    assert report["command"].startswith("python -m benchmarks.toy_invert_steps --objects 1")
