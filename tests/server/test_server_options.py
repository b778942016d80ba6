"""Cost-bounding server options set on the command line do what they say (issue 25), on a real server:
``--max-invert-steps`` below the default, and ``--header-timeout`` / ``--body-timeout`` short enough to watch."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from srvutil import png_b64, wait_job, wire_camera

from viewneti_backend import limits

MAX_INVERT_STEPS = 7  # far below limits.DEFAULT_MAX_INVERT_STEPS
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def capped(tmp_path_factory, test_model):
    from srvutil import ServerProcess

    srv = ServerProcess(
        tmp_path_factory.mktemp("capped") / "data",
        args=[
            "--max-invert-steps",
            str(MAX_INVERT_STEPS),
            "--header-timeout",
            str(HEADER_TIMEOUT_S),
            "--body-timeout",
            str(BODY_TIMEOUT_S),
        ],
    ).start()
    yield srv
    srv.stop()


def _invert(name: str, steps: int | None) -> dict:
    body = {"name": name, "images": [png_b64()], "cameras": [wire_camera()]}
    if steps is not None:
        body["steps"] = steps
    return body


def test_max_invert_steps_is_reported_and_enforced(capped):
    assert MAX_INVERT_STEPS < limits.DEFAULT_MAX_INVERT_STEPS
    with capped.client() as c:
        health = c.get("/v1/health").json()
        assert health["max_invert_steps"] == MAX_INVERT_STEPS
        steps = c.get("/openapi.json").json()["components"]["schemas"]["InvertRequest"]["properties"]["steps"]
        assert steps["maximum"] == MAX_INVERT_STEPS
        r = c.post("/v1/jobs/invert", json=_invert("over", MAX_INVERT_STEPS + 1))
        assert r.status_code == 422, r.text
        msg = r.json()["error"]
        assert f"({MAX_INVERT_STEPS}," in msg and "max_invert_steps" in msg and "--max-invert-steps" in msg, msg
        assert c.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        # at the cap: accepted; without steps: the device's default, cut to the cap
        for name, given in (("at_cap", MAX_INVERT_STEPS), ("default", None)):
            r = c.post("/v1/jobs/invert", json=_invert(name, given))
            assert r.status_code == 202, r.text
            assert r.json()["total"] == MAX_INVERT_STEPS, (given, r.json())
            assert c.post(f"/v1/jobs/{r.json()['job_id']}/cancel").status_code == 202
            assert wait_job(c, r.json()["job_id"])["state"] in ("cancelled", "done")


def _closed_after(sock: socket.socket, limit_s: float, feed: bytes = b"", every_s: float = 0.0) -> float:
    """Seconds until the server closes ``sock`` (reads EOF), sending ``feed`` one byte every ``every_s``
    meanwhile; fails if it is still open after ``limit_s``."""
    t0 = time.monotonic()
    sock.settimeout(every_s or limit_s)
    fed = 0
    while time.monotonic() - t0 < limit_s:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if fed < len(feed):
                try:
                    sock.sendall(feed[fed : fed + 1])
                except OSError:
                    return time.monotonic() - t0  # closed under us
                fed += 1
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
        if data == b"":
            return time.monotonic() - t0
        raise AssertionError(f"the server answered instead of closing: {data[:200]!r}")
    raise AssertionError(f"the connection is still open after {limit_s} s")


@pytest.mark.parametrize("how", ["stalled", "trickled"])
def test_a_body_that_does_not_arrive_in_time_is_closed(capped, how):
    """Headers at once, then a body that stops (or comes a byte every 0.3 s): closed at --body-timeout,
    counted from the end of the headers, however the bytes trickle."""
    head = (
        f"POST /v1/render HTTP/1.1\r\nHost: 127.0.0.1:{capped.port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", capped.port), timeout=30) as s:
        s.sendall(head + b'{"camera": ')
        feed = b"x" * 100 if how == "trickled" else b""
        waited = _closed_after(s, limit_s=BODY_TIMEOUT_S + 10, feed=feed, every_s=0.3 if feed else 0.0)
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 6, waited
    assert "its request body did not arrive in time" in capped.log_path.read_text()
    assert httpx.get(capped.url + "/v1/health", timeout=10).status_code == 200  # the server is fine


def test_a_request_head_that_does_not_arrive_in_time_is_closed(capped):
    with socket.create_connection(("127.0.0.1", capped.port), timeout=30) as s:
        s.sendall(f"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{capped.port}\r\n".encode())  # no blank line
        waited = _closed_after(s, limit_s=HEADER_TIMEOUT_S + 10, feed=b"X-Slow: " + b"a" * 100, every_s=0.3)
    assert HEADER_TIMEOUT_S - 0.5 < waited < HEADER_TIMEOUT_S + 6, waited


@pytest.mark.parametrize("option", ["--header-timeout", "--body-timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_bad_timeouts_are_refused(tmp_path, option, value):
    import subprocess
    import sys

    from srvutil import REPO, server_env

    p = subprocess.run(
        [sys.executable, "-m", "server", "--port", "1", "--data-dir", str(tmp_path / "d"), option, value],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and option in p.stderr and "positive number of seconds" in p.stderr, p.stderr
    assert not (tmp_path / "d").exists()
