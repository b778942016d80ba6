"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis CLI).

>= 500 generated cases over every operation (examples, coverage, fuzzing and stateful phases);
no response may be a 5xx, and the server must still render afterwards. It runs against its own
server (the real engine) with small operational caps so that the valid requests the fuzzer builds
from the schema's example camera stay cheap on a CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from srvutil import png_size, render_body

MAX_EXAMPLES = int(os.environ.get("VIEWNETI_SCHEMATHESIS_EXAMPLES", "60"))
MIN_CASES = 500


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(make_server, tmp_path):
    srv = make_server(args=["--max-size", "128", "--max-steps", "30", "--max-body-mb", "8"]).start()
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "run",
        f"{srv.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--request-timeout",
        "120",
        "--workers",
        "1",
        "--seed",
        os.environ.get("VIEWNETI_SCHEMATHESIS_SEED", "20240601"),
        "--no-color",
    ]
    p = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out = p.stdout + p.stderr
    tail = "\n".join(out.splitlines()[-80:])
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m, f"no summary in schemathesis output:\n{tail}"
    generated, passed = int(m.group(1)), int(m.group(2))
    assert p.returncode == 0, f"schemathesis failed (exit {p.returncode}):\n{tail}"
    assert generated >= MIN_CASES, f"only {generated} cases generated:\n{tail}"
    assert passed == generated, tail
    print(tail)
    log = srv.log_tail(100000).split("model ready", 1)[-1]  # (health is 503 while the model loads)
    assert not re.search(r'" 5\d\d |\s5\d\d rid=', log), "5xx in the server log"
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
