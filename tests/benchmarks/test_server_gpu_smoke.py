"""benchmarks/server_gpu.py (``python -m benchmarks.server_gpu``) end to end with --smoke on the CPU toy
model: the script behind RESULTS.md §6 starts the real server as a subprocess and times it from a
client. Nothing real is timed here; that it runs every section, and that a CPU sequence job (one frame
per UNet call) gives the same bytes as one-by-one renders, are what is tested."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_smoke(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "server_gpu.json"
    cmd = [sys.executable, "-m", "benchmarks.server_gpu", "--smoke", "--out", str(out), "--work", str(tmp_path / "w")]
    cmd += ["--repeats", "2", "--frames", "4", "--port", str(free_port()), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": ""}  # an $OUT would redirect --out
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run, json.loads(out.read_text())


@pytest.mark.slow
def test_server_gpu_smoke_runs_every_section(tmp_path):
    run, report = run_smoke(tmp_path)
    assert report["sections"] == ["renders", "superseded", "sequence", "new-size", "asked-size", "inversion"]
    # waited for the training graphs compiled ahead (none on a CPU server); each section notes their state
    assert report["training_ahead_done_s"] is None
    assert report["training_ahead_at"] == {s: {} for s in report["sections"]}
    assert report["command"].startswith("python -m benchmarks.server_gpu --smoke")
    assert {"host", "python", "cores", "torch"} <= set(report["machine"])
    assert report["ready_s"] > 0 and report["first_view_after_ready"]["n"] == 1
    rows = report["renders"]
    assert {k.rsplit("_", 2)[0] for k in rows} == {
        "live_64x64_3steps_png",
        "view_64x48_4steps_png",
        "live_64x64_3steps_jpeg",
        "view_64x48_4steps_jpeg",
    }
    assert rows["live_64x64_3steps_png_new_pose"]["media_type"] == "image/png"
    assert rows["live_64x64_3steps_jpeg_new_pose"]["media_type"] == "image/jpeg"
    assert all(row["n"] == 2 and row["client_p50_ms"] > 0 for row in rows.values())
    cut = report["live_after_superseded_view"]
    assert cut["n"] == 2 and cut["client_p50_ms"] > 0 and len(cut["superseded_statuses"]) == 2
    assert set(cut["superseded_statuses"]) <= {200, 409}  # cut, or done before the live request came
    seq = report["sequence"]
    assert seq["frames"] == 4 and seq["sequence_batch"] == 1
    assert set(seq["server_phase_ms"]) == {"encode", "denoise", "decode"} and seq["server_phase_ms"]["denoise"] > 0
    assert [d["max_abs_diff"] for d in seq["vs_single_renders"]] == [0, 0, 0, 0]
    during = report["live_during_sequence"]  # on the CPU a 4-frame job may end before the first live render
    assert "error" not in during, during
    assert during["frames"] == 4 and during["sequence_seconds"] > 0 and during["live_requests"] >= 0
    assert during["server_phase_ms"]["denoise"] > 0
    assert (during["live_client_p50_ms"] is None) == (during["live_requests"] == 0)
    split = during["live_server_p50_ms"]  # where the live renders' time went, incl. work queued ahead of them
    if during["live_requests"]:
        assert {"queue", "encode", "denoise", "decode", "image", "total", "outside_phases"} <= set(split)
        assert -1.0 < split["outside_phases"] < split["total"], split
    else:
        assert split == {}
    paused = report["live_during_sequence_paused"]  # the same with pauses, as the add-on sends live requests
    assert "error" not in paused, paused
    assert during["pause_s"] is None and paused["pause_s"] == [0.05, 0.25]
    assert paused["frames"] == 4 and paused["server_phase_ms"]["denoise"] > 0
    assert report["new_size_first_request"]["n"] == 1 and report["new_size_after_compile"]["n"] == 3
    asked = report["asked_size"]
    assert asked["size"] == "56x40" and asked["compile_status"] == "eager"  # the CPU server does not compile
    assert asked["first_use_done_s"] is None and asked["first_request"]["n"] == 1
    assert "server start -> ready" in run.stdout and "size asked for by POST /v1/compile (56x40" in run.stdout
    inv = report["inversion"]  # two 64x64 references rendered by the server, 3 steps (the --smoke default)
    assert inv["images"] == 2 and inv["size"] == "64x64" and inv["steps"] == 3 and inv["seconds"] > 0
    assert inv["training_ahead"] == {} and inv["training_ahead_done_s"] is None  # a CPU server compiles none
    for key, pause_s in (("live_during_inversion", None), ("live_during_inversion_paused", [0.05, 0.25])):
        row = report[key]
        assert "error" not in row, row
        assert row["steps"] == 3 and row["pause_s"] == pause_s and row["job_seconds"] > 0
        assert (row["live_client_p50_ms"] is None) == (row["live_requests"] == 0)
        assert "server_phase_ms" not in row  # an inversion reports no render phases
    assert "inversion of 2 x 64x64, 3 steps" in run.stdout


@pytest.mark.slow
def test_server_gpu_times_only_the_sections_asked_for(tmp_path):
    """``--sections sequence``: what a GPU run short of time came for, after the cold start and warm-up."""
    run, report = run_smoke(tmp_path, "--sections", "sequence", "--training-ahead", "during")
    assert report["sections"] == ["sequence"]
    assert "training_ahead_done_s" not in report and report["training_ahead_at"] == {"sequence": {}}
    assert report["sequence"]["frames"] == 4 and report["live_during_sequence"]["frames"] == 4
    assert report["live_during_sequence_paused"]["frames"] == 4
    assert not {"renders", "live_after_superseded_view", "new_size_first_request", "asked_size"} & set(report)
    assert "sequence 4 x 64x48" in run.stdout and "POST /v1/compile" not in run.stdout


def test_the_inversion_section_waits_for_the_training_sizes_compiled_ahead(monkeypatch):
    """On a GPU server the helpers compile training sizes ahead; the section times the first inversion
    once they are done (or failed), as health's training_ahead says."""
    from benchmarks import server_gpu

    states = [{"512x512": "queued"}, {"512x512": "compiling"}, {"512x512": "done", "512x384": "failed: oom"}]

    class Client(server_gpu.Client):  # answers health from ``states``; connects nowhere
        def __init__(self) -> None:
            super().__init__(port=9)

        def json(self, method, path, body=None):
            assert (method, path) == ("GET", "/v1/health")
            return 200, {"compiled_shapes": {"training_ahead": states.pop(0) if len(states) > 1 else states[0]}}

    monkeypatch.setattr(server_gpu.time, "sleep", lambda s: None)
    assert server_gpu.wait_training_ahead(Client(), timeout=5) == {"512x512": "done", "512x384": "failed: oom"}
    states[:] = [{"512x512": "compiling"}]
    with pytest.raises(RuntimeError, match="not compiled ahead"):
        server_gpu.wait_training_ahead(Client(), timeout=0.2)


def test_the_table_names_sections_begun_while_training_graphs_were_pending(capsys):
    """Queued counts as pending as much as compiling: both mean the helpers were not done."""
    from benchmarks import server_gpu

    assert server_gpu.training_ahead_pending({"512x512": "queued"})
    assert server_gpu.training_ahead_pending({"512x512": "done", "512x384": "compiling"})
    assert server_gpu.training_ahead_pending({"512x512": "done", "512x384": "paused"})  # stopped during renders
    assert not server_gpu.training_ahead_pending({"512x512": "done", "512x384": "failed: oom"})
    report = {
        "ready_s": 1.0,
        "warmup_compiled_s": 2.0,
        "first_view_after_ready": {"client_p50_ms": 3.0, "server_p50_ms": {}},
        "training_ahead_at": {"renders": {"512x512": "queued"}, "sequence": {"512x512": "done"}},
    }
    server_gpu.print_table(report)
    assert "sections begun while the helpers compiled training graphs: renders\n" in capsys.readouterr().out
