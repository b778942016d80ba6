"""A web page must not drive the local server (issue 20): Host allowlist, Origin / Sec-Fetch-Site checks,
``--token auto``, log lines that a request path cannot forge. Real server processes; traffic to 127.0.0.1 only
(other names are only ever sent as a ``Host`` header)."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import httpx
import pytest
from srvutil import LONG_INVERT, png_b64, render_body, wait_job, wire_camera

from blender_addon.client import BackendError
from blender_addon.client import Client as AddonClient


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client fills in a Host) and return (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def finished_job(client) -> str:
    """A done sequence job of the session server: its events stream and frame are real routes to probe."""
    r = client.post("/v1/jobs/sequence", json={"cameras": [wire_camera()], "steps": 2})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert wait_job(client, job_id)["state"] == "done"
    return job_id


# -- Host ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}", "[0:0:0:0:0:0:0:1]:{port}"],
)
def test_own_host_names_are_served(server, host):
    r = httpx.get(server.url + "/v1/health", headers={"Host": host.format(port=server.port)})
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    "host",
    [
        "evil.example.com:{port}",  # DNS rebinding: the attacker's own name, re-resolved to 127.0.0.1
        "evil.example.com",
        "localhost",  # no port = port 80, not this server's
        "127.0.0.1:{other}",  # the wrong port
        "[::1]:{other}",
        "127.0.0.1.evil.example.com:{port}",
        "localhost.:{port}",
        "0.0.0.0:{port}",
    ],
)
def test_foreign_host_is_refused_with_what_to_set(server, client, finished_job, host):
    h = host.format(port=server.port, other=server.port + 1)
    body = render_body()
    assert client.get(f"/v1/jobs/{finished_job}/frames/0").status_code == 200  # served under our own name
    for method, path, json_body in (
        ("GET", "/v1/health", None),
        ("GET", "/v1/objects", None),
        ("GET", "/v1/jobs", None),
        ("GET", f"/v1/jobs/{finished_job}", None),
        ("GET", f"/v1/jobs/{finished_job}/events", None),  # the SSE stream
        ("GET", f"/v1/jobs/{finished_job}/frames/0", None),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("GET", "/redoc", None),
        ("POST", "/v1/render", body),
        ("DELETE", "/v1/objects/toy_000", None),
    ):
        r = httpx.request(method, server.url + path, headers={"Host": h}, json=json_body, timeout=30)
        assert r.status_code == 421, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        msg = r.json()["error"]
        assert "--allowed-host" in msg and "127.0.0.1" in msg and "rebinding" in msg, msg
        assert r.headers["x-request-id"]
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/health HTTP/1.0\r\n\r\n",  # HTTP/1.0 may leave Host out: the server must not
        b"GET /v1/health HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
    ],
)
def test_missing_or_empty_host_is_refused(server, request_bytes):
    status, body = raw_request(server.port, request_bytes)
    assert status == 421, body
    assert b"Host" in body and b'"error"' in body


def test_http11_without_host_is_refused(server):
    status, _ = raw_request(server.port, b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 400  # uvicorn's HTTP parser refuses it before the application (RFC 9112: 400)


def test_malformed_host_is_refused(server):
    for host in (f"[::1:{server.port}", f"127.0.0.1:{server.port}:1", "127.0.0.1:", f"a b:{server.port}"):
        status, body = raw_request(
            server.port, f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        assert status in (400, 421), (host, status, body)
        if status == 421:
            assert b'"error"' in body


# -- Origin / Sec-Fetch-Site -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example.com",
        "https://evil.example.com",
        "http://evil.example.com:{port}",  # rebinding page, right port, wrong name
        "null",  # sandboxed iframe, file://, data: URL, cross-origin redirect
        "http://127.0.0.1:{other}",  # another local service
        "http://localhost",
        "file://",
        "garbage",
    ],
)
def test_foreign_origin_is_refused(server, origin):
    o = origin.format(port=server.port, other=server.port + 1)
    r = httpx.get(server.url + "/v1/objects", headers={"Origin": o})
    assert r.status_code == 403, r.text
    assert "Origin" in r.json()["error"]
    r = httpx.post(server.url + "/v1/render", json=render_body(), headers={"Origin": o})
    assert r.status_code == 403, r.text
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://[::1]:{port}"])
def test_own_origin_is_served(server, origin):
    r = httpx.get(server.url + "/v1/objects", headers={"Origin": origin.format(port=server.port)})
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers  # never any CORS header


def test_sec_fetch_site(server):
    r = httpx.get(server.url + "/v1/health", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    for value in ("same-origin", "same-site", "none"):
        assert httpx.get(server.url + "/v1/health", headers={"Sec-Fetch-Site": value}).status_code == 200


def test_cors_preflight_gets_no_cors_headers(server):
    r = httpx.options(
        server.url + "/v1/render",
        headers={"Origin": "http://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403
    assert not [k for k in r.headers if k.lower().startswith("access-control-")]


def test_cross_site_simple_requests_are_still_refused(server):
    """text/plain, form and multipart bodies (what a page can send without a preflight) never render."""
    import json

    body = json.dumps(render_body()).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(server.url + "/v1/render", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 422, (ctype, r.status_code)  # without an Origin: the JSON route refuses it
        r = httpx.post(
            server.url + "/v1/render", content=body, headers={"Content-Type": ctype, "Origin": "http://evil.example"}
        )
        assert r.status_code == 403, (ctype, r.status_code)


def test_cross_site_cancel_without_body_is_refused(client, server):
    """A page can POST with no body and no preflight (fetch no-cors, a form): the job must keep running
    (issue 25). A long inversion, so that the job is still running when the refused cancels arrive."""
    name = f"xsite{time.monotonic_ns()}"
    body = {"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": LONG_INVERT}
    r = client.post("/v1/jobs/invert", json=body)
    assert r.status_code == 202, r.text
    jid = r.json()["job_id"]
    try:
        wait_job(client, jid, states=("running",), timeout=120)
        for headers, status in (
            ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, 403),
            ({"Origin": "https://evil.example"}, 403),
            ({"Sec-Fetch-Site": "cross-site"}, 403),
            ({"Origin": "null"}, 403),
            ({"Host": f"evil.example.com:{server.port}"}, 421),
        ):
            r = httpx.post(server.url + f"/v1/jobs/{jid}/cancel", headers=headers)  # no body, no Content-Type
            assert r.status_code == status, (headers, r.status_code, r.text)
            assert r.json()["error"] and "access-control-allow-origin" not in r.headers
            assert client.get(f"/v1/jobs/{jid}").json()["state"] == "running", headers
        time.sleep(0.5)  # a cancel that slipped through would have stopped it by now (steps are ~10 ms)
        job = client.get(f"/v1/jobs/{jid}").json()
        assert job["state"] == "running" and not job.get("error"), job
    finally:
        r = client.post(f"/v1/jobs/{jid}/cancel")  # the same request without Origin: accepted
        assert r.status_code == 202 and r.json()["state"] in ("cancelling", "cancelled"), r.text
    assert wait_job(client, jid)["state"] == "cancelled"


# -- object names --------------------------------------------------------------------------------------------------
def test_a_name_with_a_trailing_newline_is_refused(client, server):
    """'$' in a Python regex matches before a final newline: "mug\n" passed the name check, and a rename
    created the folder "mug\n" (issue 20's fuzzing). Rename, delete and invert must all refuse it; in a path,
    Starlette's routes (also anchored with '$') took ``/v1/objects/mug%0A`` for ``mug``."""
    name = f"nl{time.monotonic_ns() % 10**9}"
    r = client.post(
        "/v1/jobs/invert", json={"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": 2}
    )
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job_id"])["state"] == "done"
    try:
        for bad in (name + "\n", name + "\r\n"):
            r = client.post(f"/v1/objects/{name}/rename", json={"new_name": bad})
            assert r.status_code == 400 and "invalid new_name" in r.json()["error"], (bad, r.status_code, r.text)
        for method, path, body in (
            ("DELETE", f"/v1/objects/{name}%0A", None),
            ("DELETE", f"/v1/objects/{name}%0D%0A", None),
            ("POST", f"/v1/objects/{name}%0A/rename", {"new_name": name + "x"}),
            ("GET", "/v1/objects%0A", None),
            ("GET", "/v1/health%0A", None),
        ):
            r = client.request(method, path, json=body)
            assert r.status_code == 404 and "control character" in r.json()["error"], (path, r.status_code, r.text)
        invert = {"name": name + "2\n", "images": [png_b64()], "cameras": [wire_camera()], "steps": 2}
        r = client.post("/v1/jobs/invert", json=invert)
        assert r.status_code == 422 and "name" in r.json()["error"], r.text
        names = [o["name"] for o in client.get("/v1/objects").json()["objects"]]
        assert name in names and not [n for n in names if "\n" in n or n.startswith(name + "2")], names
        assert sorted(p.name for p in (server.data_dir / "objects").iterdir() if p.name.startswith(name)) == [name]
    finally:
        assert client.delete(f"/v1/objects/{name}").status_code == 204


# -- the access log ------------------------------------------------------------------------------------------------
def test_control_characters_in_a_path_cannot_forge_log_lines(server):
    forged = "2026-01-01 00:00:00,000 INFO viewneti.server.access: GET /v1/objects 200 rid=forged"
    marker = f"zz{time.monotonic_ns()}"
    path = f"/v1/{marker}%0A{forged.replace(' ', '%20')}%0D%1B[2J%00"
    r = httpx.get(server.url + path)
    assert r.status_code == 404
    deadline = time.monotonic() + 10
    while marker not in server.log_path.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if marker in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\\n2026-01-01" in line and "\\r\\x1b[2J\\x00" in line, line
    assert not any(raw.startswith("2026-01-01 00:00:00,000") for raw in server.log_path.read_text().splitlines())


# -- the served schema is this server's ----------------------------------------------------------------------------
def test_served_schema_tells_the_caps_health_reports(client):
    """/openapi.json states the inversion step cap, the device-aware size cap (also on /v1/compile) and the
    render formats, and the server does what it says (issue 25's caps, issue 20's truthful schema)."""
    from viewneti_backend import limits

    h = client.get("/v1/health").json()
    spec = client.get("/openapi.json").json()
    comps = spec["components"]["schemas"]
    invert_steps = comps["InvertRequest"]["properties"]["steps"]
    assert invert_steps["maximum"] == h["max_invert_steps"] < limits.MAX_INVERT_STEPS, invert_steps
    assert str(h["max_invert_steps"]) in invert_steps["description"]
    assert h["max_size"] == limits.device_max_size(h["device"], h["native_size"])
    for model in ("CameraIn", "CompileRequest"):
        for side in ("width", "height"):
            assert comps[model]["properties"][side]["maximum"] == h["max_size"], (model, side)
    assert comps["ReferenceCameraIn"]["properties"]["width"]["maximum"] == limits.MAX_SIZE
    assert set(comps["CompileOut"]["properties"]["status"]["enum"]) == {"ready", "queued", "compiling", "eager"}
    assert set(spec["paths"]["/v1/compile"]["post"]["responses"]) >= {"202", "403", "421", "422"}
    render = spec["paths"]["/v1/render"]["post"]
    assert set(render["responses"]["200"]["content"]) == {"image/png", "image/jpeg"}
    assert "Accept" in render["description"] and "Vary" in render["responses"]["200"]["headers"]

    # ... and each of those is what the server does
    name = f"cap{time.monotonic_ns()}"
    over = {"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": h["max_invert_steps"] + 1}
    r = client.post("/v1/jobs/invert", json=over)
    assert r.status_code == 422 and "max_invert_steps" in r.json()["error"], r.text
    if h["max_size"] < limits.MAX_SIZE:  # a CPU server: one multiple of 8 past the cap is refused
        r = client.post("/v1/compile", json={"width": h["max_size"] + 8, "height": 64})
        assert r.status_code == 422 and "max_size" in r.json()["error"], r.text
    r = client.post("/v1/compile", json={"width": 64, "height": 64})
    assert r.status_code == 202 and r.json()["status"] in comps["CompileOut"]["properties"]["status"]["enum"], r.text
    for accept, media, magic in (("image/jpeg", "image/jpeg", b"\xff\xd8"), (None, "image/png", b"\x89PNG")):
        headers = {"Accept": accept} if accept else {}
        r = client.post("/v1/render", json=render_body(), headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == media and r.content.startswith(magic)
        assert r.headers["vary"] == "Accept"


# -- --token auto, --allowed-host ----------------------------------------------------------------------------------
def wait_for_file(path: Path, srv, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if srv.proc.poll() is not None:
            raise AssertionError(f"server exited with {srv.proc.returncode}:\n{srv.log_tail()}")
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    return path.read_text().strip()


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory, test_model):
    """One server with --token auto and two --allowed-host entries (a bare name and NAME:PORT); the
    command line's names replace $VIEWNETI_ALLOWED_HOSTS (test_allowed_host_names checks envonly.lan)."""
    from srvutil import ServerProcess

    data = tmp_path_factory.mktemp("auto") / "data"
    srv = ServerProcess(
        data,
        args=["--token", "auto", "--allowed-host", "mybox.lan", "--allowed-host", "proxy.lan:8443"],
        env={"VIEWNETI_ALLOWED_HOSTS": "envonly.lan"},
    )
    srv.start(wait=False)
    try:
        srv.token = wait_for_file(data / "token", srv)
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_token_auto_writes_a_private_file_and_requires_it(auto_server):
    srv = auto_server
    path = srv.data_dir / "token"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert path.stat().st_uid == os.getuid()
    token = path.read_text().strip()
    assert len(token) >= 40 and token == srv.token
    log = srv.log_path.read_text()
    assert token not in log  # stderr goes to logs others may read (the add-on's backend.log): only the path
    assert f"access token of this launch is in {path.resolve()}" in log
    assert not list(srv.data_dir.glob(".token*"))  # no temp file left behind
    for path_ in ("/v1/health", "/v1/objects", "/openapi.json", "/v1/jobs"):
        r = httpx.get(srv.url + path_)
        assert r.status_code == 401 and "token" in r.json()["error"], (path_, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(srv.url + "/v1/health", headers={"Authorization": "Bearer " + token[:-1] + "x"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]
    r = httpx.post(srv.url + "/v1/render", json=render_body())
    assert r.status_code == 401
    with srv.client() as c:
        assert c.get("/v1/health").status_code == 200
        assert c.post("/v1/render", json=render_body()).status_code == 200
    # the schema declares the bearer scheme when a token is required
    spec = httpx.get(srv.url + "/openapi.json", headers=srv.headers()).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_host_checks_come_before_the_token(auto_server):
    srv = auto_server
    r = httpx.get(srv.url + "/v1/health", headers={"Host": f"evil.example.com:{srv.port}"})
    assert r.status_code == 421  # a rebinding page learns nothing, not even that a token is wanted
    r = httpx.get(srv.url + "/v1/health", headers={"Origin": "null", **srv.headers()})
    assert r.status_code == 403


def test_allowed_host_names(auto_server):
    srv = auto_server
    h = srv.headers()
    ok = [
        f"mybox.lan:{srv.port}",
        f"MyBox.lan:{srv.port}",
        "mybox.lan",
        "proxy.lan:8443",
        f"localhost:{srv.port}",
    ]
    for host in ok:
        r = httpx.get(srv.url + "/v1/health", headers={"Host": host, **h})
        assert r.status_code == 200, (host, r.text)
    for host in ("mybox.lan:9999", "proxy.lan", f"proxy.lan:{srv.port}", f"other.lan:{srv.port}", "envonly.lan"):
        r = httpx.get(srv.url + "/v1/health", headers={"Host": host, **h})
        assert r.status_code == 421, (host, r.text)
    r = httpx.get(srv.url + "/v1/health", headers={"Origin": f"http://mybox.lan:{srv.port}", **h})
    assert r.status_code == 200
    r = httpx.get(srv.url + "/v1/health", headers={"Origin": "https://proxy.lan:8443", **h})
    assert r.status_code == 200
    r = httpx.get(srv.url + "/v1/health", headers={"Origin": f"http://evil.lan:{srv.port}", **h})
    assert r.status_code == 403


def test_addon_client_works_with_a_token(auto_server):
    srv = auto_server
    good = AddonClient(srv.url, timeout=120, token=srv.token)
    assert good.health()["api"] == "v1"
    assert any(o["name"] == "toy_000" for o in good.objects())
    body = render_body()
    result = good.render(body)
    assert result.png.startswith(b"\x89PNG")
    with pytest.raises(BackendError) as err:
        AddonClient(srv.url, timeout=30).health()
    assert err.value.status == 401 and "access token" in str(err.value)
    with pytest.raises(BackendError) as err:
        AddonClient(f"http://localhost:{srv.port}", timeout=30, token="wrong").health()
    assert err.value.status == 401


def test_environment_sets_token_auto_and_allowed_hosts(make_server):
    """VIEWNETI_TOKEN=auto and VIEWNETI_ALLOWED_HOSTS do what --token auto and --allowed-host do."""
    srv = make_server(env={"VIEWNETI_TOKEN": "auto", "VIEWNETI_ALLOWED_HOSTS": "envbox.lan, proxy2.lan:9443"})
    srv.start(wait=False)
    try:
        path = srv.data_dir / "token"
        token = wait_for_file(path, srv)
        assert len(token) >= 40 and token != "auto" and stat.S_IMODE(path.stat().st_mode) == 0o600
        srv.token = token
        srv.wait_ready()
        assert token not in srv.log_path.read_text()
        for headers in ({}, {"Authorization": "Bearer auto"}):  # "auto" itself is no token
            r = httpx.get(srv.url + "/v1/health", headers=headers)
            assert r.status_code == 401, (headers, r.text)
        auth = srv.headers()
        for host in (f"envbox.lan:{srv.port}", "envbox.lan", "proxy2.lan:9443", f"127.0.0.1:{srv.port}"):
            r = httpx.get(srv.url + "/v1/health", headers={"Host": host, **auth})
            assert r.status_code == 200, (host, r.text)
        for host in ("envbox.lan:9999", f"proxy2.lan:{srv.port}", f"other.lan:{srv.port}"):
            r = httpx.get(srv.url + "/v1/jobs", headers={"Host": host, **auth})
            assert r.status_code == 421 and "--allowed-host" in r.json()["error"], (host, r.text)
        r = httpx.get(srv.url + "/v1/health", headers={"Origin": f"http://envbox.lan:{srv.port}", **auth})
        assert r.status_code == 200, r.text
    finally:
        assert srv.stop() in (0, 143)
    assert not (srv.data_dir / "token").exists()


def test_token_file_is_removed_when_the_server_stops(make_server, tmp_path):
    path = tmp_path / "elsewhere" / "launch.token"
    srv = make_server(args=["--token", "auto", "--token-file", str(path)])
    srv.start(wait=False)
    try:
        token = wait_for_file(path, srv)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(token) >= 40
        assert not (srv.data_dir / "token").exists()
        srv.token = token
        srv.wait_ready()
    finally:
        # uvicorn re-raises SIGTERM after its graceful shutdown; the server turns it into exit(143) via atexit
        assert srv.stop() in (0, 143)
    assert not path.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--allowed-host", "a/b"], "--allowed-host"),
        (["--allowed-host", "host.lan:99999"], "port"),
        (["--token-file", "x"], "--token auto"),
    ],
)
def test_bad_security_options_are_refused(tmp_path, args, needle):
    import subprocess
    import sys

    from srvutil import REPO, server_env

    p = subprocess.run(
        [sys.executable, "-m", "server", "--port", "1", "--data-dir", str(tmp_path / "d"), *args],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and needle in p.stderr, p.stderr
    assert not (tmp_path / "d").exists()


# -- the pieces, without a server ------------------------------------------------------------------------------------
def test_host_parsing_units():
    from server.host_origin import HostOriginMiddleware, parse_allowed_host, split_host_header

    assert split_host_header("LOCALHOST:7860") == ("localhost", 7860)
    assert split_host_header("[0:0::1]:80") == ("[::1]", 80)
    assert split_host_header("127.0.0.1") == ("127.0.0.1", 80)  # no port = the http default
    for bad in ("[::1", "[::1]x", "a:b", "h:0", "h:65536", "h:", "", "a/b:1", "a@b:1"):
        with pytest.raises(ValueError):
            split_host_header(bad)
    assert parse_allowed_host("MyBox.LAN") == ("mybox.lan", None)
    assert parse_allowed_host("[::2]:8080") == ("[::2]", 8080)
    assert parse_allowed_host("::2") == ("[::2]", None)
    mw = HostOriginMiddleware(None, bind_host="0.0.0.0", extra_hosts=["box.lan", "proxy.lan:8443"])  # type: ignore[arg-type]
    assert mw.host_allowed("localhost", 7860, 7860) and not mw.host_allowed("0.0.0.0", 7860, 7860)
    assert mw.host_allowed("box.lan", 80, 7860) and mw.host_allowed("box.lan", 7860, 7860)
    assert not mw.host_allowed("box.lan", 9000, 7860) and not mw.host_allowed("proxy.lan", 7860, 7860)
    assert mw.origin_allowed("https://proxy.lan:8443", 7860) and mw.origin_allowed("https://box.lan", 7860)
    assert not mw.origin_allowed("http://localhost:7860/", 7860)  # an Origin never has a path
    assert not mw.origin_allowed("null", 7860) and not mw.origin_allowed("ws://localhost:7860", 7860)
    assert HostOriginMiddleware(None, bind_host="192.0.2.7").host_allowed("192.0.2.7", 1, 1)  # type: ignore[arg-type]


def _run_asgi(app, scope) -> tuple[bool, list[dict]]:
    """Call an ASGI middleware with ``scope``; returns (whether the inner app was reached, messages sent)."""
    import asyncio

    sent: list[dict] = []
    reached: list[bool] = []

    async def inner(scope, receive, send):
        reached.append(True)

    async def receive():
        return {"type": "websocket.connect"} if scope["type"] == "websocket" else {"type": "http.request"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(inner)(scope, receive, send))
    return bool(reached), sent


def _ws_scope(headers: dict[str, str], denial: bool = False) -> dict:
    return {
        "type": "websocket",
        "path": "/v1/ws",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("127.0.0.1", 7860),
        "extensions": {"websocket.http.response": {}} if denial else {},
    }


def test_websocket_handshakes_get_the_host_origin_and_token_checks():
    """A page can open a websocket to any origin (no CORS): the handshake must pass the same checks as a request."""
    import json

    from server.auth import BearerTokenMiddleware
    from server.host_origin import HostOriginMiddleware

    def host_origin(inner):
        return HostOriginMiddleware(inner, bind_host="127.0.0.1")

    def token(inner):
        return BearerTokenMiddleware(inner, token="s3cret")

    own = {"Host": "127.0.0.1:7860"}
    for headers, status in (
        ({"Host": "evil.example.com:7860"}, 421),  # DNS rebinding
        ({**own, "Origin": "http://evil.example.com"}, 403),
        ({**own, "Origin": "null"}, 403),
        ({**own, "Sec-Fetch-Site": "cross-site"}, 403),
        ({}, 421),
    ):
        reached, sent = _run_asgi(host_origin, _ws_scope(headers))
        assert not reached and sent == [{"type": "websocket.close", "code": 1008, "reason": sent[0]["reason"]}]
        assert sent[0]["reason"] and len(sent[0]["reason"].encode()) <= 123, sent
        reached, sent = _run_asgi(host_origin, _ws_scope(headers, denial=True))  # the server can send a body
        assert not reached and [m["type"] for m in sent] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]
        assert sent[0]["status"] == status and json.loads(sent[1]["body"])["error"], (headers, sent)
    reached, sent = _run_asgi(host_origin, _ws_scope({**own, "Origin": "http://127.0.0.1:7860"}))
    assert reached and sent == []

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reached, sent = _run_asgi(token, _ws_scope(headers, denial=True))
        assert not reached and sent[0]["status"] == 401 and (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        reached, sent = _run_asgi(token, _ws_scope(headers))
        assert not reached and sent[0]["type"] == "websocket.close"
    assert _run_asgi(token, _ws_scope({"Authorization": "Bearer s3cret"})) == (True, [])


def test_unknown_scope_types_fail_closed():
    from server.auth import BearerTokenMiddleware
    from server.host_origin import HostOriginMiddleware

    for middleware in (
        lambda inner: HostOriginMiddleware(inner),
        lambda inner: BearerTokenMiddleware(inner, token="s3cret"),
        lambda inner: BearerTokenMiddleware(inner, token=None),
    ):
        assert _run_asgi(middleware, {"type": "lifespan"}) == (True, [])  # startup/shutdown: no peer
        with pytest.raises(RuntimeError, match="'webtransport' scope"):
            _run_asgi(middleware, {"type": "webtransport", "headers": [], "server": ("127.0.0.1", 7860)})


def test_the_app_refuses_a_websocket_from_a_foreign_host(tmp_path):
    """The whole middleware stack, in process: a foreign Host's handshake gets 421 before any routing."""
    from fake_engine import FakeEngine
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse
    from starlette.websockets import WebSocketDisconnect

    from server.app import create_app
    from server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path), lambda: FakeEngine(tmp_path / "objects"))
    url = "ws://127.0.0.1:7860/v1/health"  # websocket_connect does not use base_url
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with c.websocket_connect(url, headers={"Host": "evil.example.com:7860"}):
                pass
        assert denied.value.status_code == 421 and "rebinding" in denied.value.json()["error"]
        with pytest.raises(WebSocketDenialResponse) as denied:
            with c.websocket_connect(url, headers={"Origin": "https://evil.example.com"}):
                pass
        assert denied.value.status_code == 403
        with pytest.raises(WebSocketDisconnect):  # our own name: no check refuses it; there is no websocket route
            with c.websocket_connect(url):
                pass


def test_log_safe_escapes_control_characters():
    from server.middleware import log_safe

    assert log_safe("/v1/a\nb\r\x1b[0m\x00\\\u2028é") == "/v1/a\\nb\\r\\x1b[0m\\x00\\\\\\u2028é"


def test_served_schema_states_this_servers_caps():
    from server.openapi_doc import REFERENCE_CAMERA, patch_schema

    base = {
        "paths": {"/v1/objects/{name}": {"delete": {"parameters": [{"name": "name", "in": "path"}], "responses": {}}}},
        "components": {
            "schemas": {
                "CameraIn": {
                    "properties": {
                        "width": {"maximum": 2048.0, "default": 512},
                        "height": {"maximum": 2048.0, "default": 512},
                    },
                    "required": ["camera_to_anchor"],
                },
                "RenderRequest": {"properties": {"steps": {"anyOf": [{"type": "integer", "maximum": 150}]}}},
                "InvertRequest": {
                    "properties": {
                        "cameras": {"items": {"$ref": "#/components/schemas/CameraIn"}},
                        "steps": {"maximum": 100000.0, "default": 300},
                    },
                    "required": ["name"],
                },
                "CompileRequest": {"properties": {"width": {"maximum": 2048.0, "default": 512}}},
            }
        },
    }
    s = patch_schema(base, max_size=64, max_steps=4, max_invert_steps=100, token_required=True)
    comps = s["components"]["schemas"]
    assert comps["CameraIn"]["properties"]["width"]["maximum"] == 64 and "width" in comps["CameraIn"]["required"]
    assert comps["CompileRequest"]["properties"]["width"]["maximum"] == 64 and comps["CompileRequest"]["required"]
    assert comps[REFERENCE_CAMERA]["properties"]["width"]["maximum"] == 2048.0  # inversion references keep theirs
    assert comps["InvertRequest"]["properties"]["cameras"]["items"]["$ref"].endswith(REFERENCE_CAMERA)
    assert comps["RenderRequest"]["properties"]["steps"]["anyOf"][0]["maximum"] == 4
    invert_steps = comps["InvertRequest"]["properties"]["steps"]
    assert invert_steps["maximum"] == 100 and "default" not in invert_steps  # the default 300 would be refused
    assert comps["InvertRequest"]["required"] == ["name", "steps"]
    op = s["paths"]["/v1/objects/{name}"]["delete"]
    assert {"401", "403", "421"} <= set(op["responses"]) and op["parameters"][0]["schema"]["pattern"]
    assert s["security"] == [{"bearerAuth": []}]
    s = patch_schema(base, max_size=1024, max_steps=150, max_invert_steps=5000, token_required=False)
    assert "width" not in s["components"]["schemas"]["CameraIn"]["required"] and "security" not in s
    invert_steps = s["components"]["schemas"]["InvertRequest"]["properties"]["steps"]
    assert invert_steps == {**invert_steps, "maximum": 5000, "default": 300}


def test_request_numbers_follow_json_schema():
    """Found by the fuzzer: pydantic's lax mode took ``"guidance": false`` as 0.0 (a schema-violating request
    accepted) and strict mode refused ``"height": 64.0`` (an integer for JSON Schema)."""
    from pydantic import ValidationError

    from server.schemas import RenderRequest

    cam = {"camera_to_anchor": [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]], "width": 64.0, "height": 64}
    ok = RenderRequest.model_validate({"camera": cam, "steps": 3.0, "seed": 7, "guidance": 2})
    assert (ok.camera.width, ok.steps, ok.guidance) == (64, 3, 2.0) and isinstance(ok.steps, int)
    for bad in ({"guidance": False}, {"guidance": "2"}, {"steps": "3"}, {"seed": True}, {"steps": 3.5}):
        with pytest.raises(ValidationError):
            RenderRequest.model_validate({"camera": cam, **bad})
    with pytest.raises(ValidationError):
        RenderRequest.model_validate({"camera": {**cam, "fov_y_deg": 5e-324}})  # crashed the camera features
