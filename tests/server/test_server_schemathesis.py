"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis CLI), issue 20.

Every check (``--checks all``: server errors, status codes, content types, response schemas, positive data
accepted, negative data rejected, auth ignored, use after free, ...) and every phase (examples, coverage,
fuzzing, stateful) must report 0 failures and 0 errors. The server runs the real engine with a token (so
the auth checks run) and small caps (so that the valid requests the fuzzer builds stay cheap on a CPU; the
served schema states those caps). tests/server/schemathesis.toml and schemathesis_hooks.py say what the
fuzzer is told beyond the schema, and why.

CI runs a fixed seed and ``VIEWNETI_SCHEMATHESIS_EXAMPLES`` (default 8) examples per operation; a larger run
by hand: ``VIEWNETI_SCHEMATHESIS_EXAMPLES=200 VIEWNETI_SCHEMATHESIS_SEED=<n> pytest -m slow -k schemathesis``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from srvutil import HERE, REPO, png_size, render_body

MAX_EXAMPLES = int(os.environ.get("VIEWNETI_SCHEMATHESIS_EXAMPLES", "8"))
SEED = os.environ.get("VIEWNETI_SCHEMATHESIS_SEED", "20240601")
MIN_CASES = 400
TOKEN = "schemathesis-test-token-0123456789"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the CI run takes ~3 min; room for larger runs by hand
def test_schemathesis_all_checks_find_nothing(make_server, tmp_path):
    srv = make_server(
        args=["--max-size", "64", "--max-steps", "4", "--max-jobs", "4", "--max-body-mb", "8"], token=TOKEN
    ).start()
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{srv.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "120",
        "--workers",
        "1",
        "--seed",
        SEED,
        "--no-color",
    ]
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "SCHEMATHESIS_TELEMETRY": "false",
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        # the hooks import viewneti_backend: this checkout's, not whichever one the venv has installed
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500, env=env)
    wall = time.monotonic() - t0
    out = p.stdout + p.stderr
    tail = "\n".join(out.splitlines()[-120:])
    m = re.search(r"^\s*(\d+) generated, (.*)$", out, re.MULTILINE)
    assert m, f"no summary in schemathesis output:\n{tail}"
    generated, rest = int(m.group(1)), m.group(2)
    print(f"schemathesis: {generated} generated, {rest} in {wall:.0f} s (seed {SEED}, {MAX_EXAMPLES} examples)")
    assert p.returncode == 0, f"schemathesis failed (exit {p.returncode}):\n{tail}"
    assert "found" not in rest and "errored" not in rest, tail
    assert generated >= MIN_CASES, f"only {generated} cases generated:\n{tail}"
    assert re.search(r"Stateful .*\n\s*\n\s*Scenarios:\s+[1-9]", out), f"no stateful scenarios ran:\n{tail}"
    log = srv.log_tail(1000000).split("model ready", 1)[-1]  # (health is 503 while the model loads)
    assert not re.search(r"\s5\d\d rid=", log), "5xx in the server log"
    assert "Traceback" not in log, log[-4000:]
    # the server is still healthy and renders
    with srv.client() as c:
        assert c.get("/v1/health").status_code == 200
        r = c.post("/v1/render", json=render_body(seed=1))
        assert r.status_code == 200 and png_size(r.content) == (64, 64)
        # cancel whatever the fuzzer queued, so the teardown is quick
        for job in c.get("/v1/jobs").json()["jobs"]:
            if job["state"] in ("queued", "running"):
                c.post(f"/v1/jobs/{job['job_id']}/cancel")
