"""Binding and access token. Traffic only ever goes to loopback addresses."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from srvutil import REPO, render_body, server_env


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "myhost.example"])
def test_non_loopback_bind_without_token_refuses_to_start(tmp_path, host):
    p = subprocess.run(
        [sys.executable, "-m", "server", "--host", host, "--port", "1", "--data-dir", str(tmp_path / "d")],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "token" in p.stderr.lower() and host in p.stderr
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_help_reads_like_documentation():
    p = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0
    for opt in (
        "--model",
        "--view-mapper",
        "--host",
        "--port",
        "--device",
        "--dtype",
        "--data-dir",
        "--token",
        "--max-body-mb",
        "--log-level",
        "VIEWNETI_TOKEN",
        "VIEWNETI_DATA_DIR",
        "--allowed-host",
        "--token-file",
        "VIEWNETI_ALLOWED_HOSTS",
        "--token auto",
        "--header-timeout",
        "--body-timeout",
        "--max-jobs",
        "127.0.0.1",
        "7860",
    ):
        assert opt in p.stdout, opt


def test_token_is_required_when_set(make_server):
    srv = make_server(host="127.0.0.2", token="s3cret-token")
    srv.start()  # 127.0.0.0/8 is all loopback on Linux: a non-127.0.0.1 bind that stays on this machine
    url = srv.url
    r = httpx.get(url + "/v1/health")
    assert r.status_code == 401 and "token" in r.json()["error"] and r.headers["x-request-id"]
    r = httpx.get(url + "/v1/health", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]
    r = httpx.post(url + "/v1/render", json=render_body())
    assert r.status_code == 401
    r = httpx.get(url + "/openapi.json")
    assert r.status_code == 401
    with srv.client() as c:
        assert c.get("/v1/health").status_code == 200
        assert c.post("/v1/render", json=render_body()).status_code == 200
