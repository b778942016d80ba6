"""The stdlib HTTP client: SSE parsing and user-facing errors (no ViewNeTI server needed)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from addon_testutil import free_port

from blender_addon.client import (
    BackendError,
    BackendNotReady,
    BackendUnavailable,
    Client,
    SSEParser,
    Superseded,
    parse_sse,
)

pytestmark = pytest.mark.blender


def test_sse_basic_events():
    lines = [
        "event: progress\n",
        'data: {"step": 1, "total": 3}\n',
        "\n",
        ": keep-alive comment\n",
        "event: done\r\n",
        'data: {"result": {"name": "mug"}}\r\n',
        "\r\n",
    ]
    events = list(parse_sse(lines))
    assert [(e.event, e.data) for e in events] == [
        ("progress", {"step": 1, "total": 3}),
        ("done", {"result": {"name": "mug"}}),
    ]


def test_sse_multiline_data_default_name_id_and_bytes():
    parser = SSEParser()
    out = [parser.feed_line(line) for line in (b"id: 7\n", b"data: line one\n", b"data:line two\n", b"\n")]
    assert out[:3] == [None, None, None]
    assert out[3] is not None
    assert out[3].event == "message" and out[3].data == "line one\nline two" and out[3].id == "7"


def test_sse_ignores_empty_events_and_unknown_fields_and_flushes_at_end():
    events = list(parse_sse(["retry: 100", "", "foo: bar", "event: x", "", "event: cancelled", "data: {}"]))
    assert [(e.event, e.data) for e in events] == [("cancelled", {})]


class _Stub(BaseHTTPRequestHandler):
    """Answers every request with whatever the test put in `routes`."""

    routes = {}

    def log_message(self, *args):
        pass

    def _answer(self):
        status, body, ctype = self.routes.get(self.path, (404, b"", "text/plain"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _Stub.routes = {}
    yield f"http://127.0.0.1:{server.server_address[1]}", _Stub.routes
    server.shutdown()
    server.server_close()


def jbody(obj):
    return json.dumps(obj).encode()


def test_connection_refused_says_what_to_do():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable) as err:
        Client(url, timeout=2).health()
    assert url in str(err.value) and "Start" in str(err.value) and "preferences" in str(err.value)


def test_invalid_url_is_reported():
    with pytest.raises(BackendError, match="not valid"):
        Client("ftp://x")


def test_error_body_is_parsed(stub):
    url, routes = stub
    routes["/v1/render"] = (422, jbody({"error": "fov_y_deg must be in (0, 180): fix the camera"}), "application/json")
    with pytest.raises(BackendError) as err:
        Client(url).render({"camera": {}})
    assert str(err.value) == "fov_y_deg must be in (0, 180): fix the camera" and err.value.status == 422


def test_superseded_is_its_own_error(stub):
    url, routes = stub
    body = jbody({"error": "superseded by a newer request", "superseded": True})
    routes["/v1/render"] = (409, body, "application/json")
    with pytest.raises(Superseded):
        Client(url).render({"camera": {}})


def test_server_fault_without_json(stub):
    url, routes = stub
    routes["/v1/objects"] = (500, b"<html>Internal Server Error</html>", "text/html")
    with pytest.raises(BackendError, match=r"failed \(HTTP 500\).*log"):
        Client(url).objects()


def test_wrong_api_version_and_non_viewneti_server(stub):
    url, routes = stub
    routes["/v1/health"] = (200, jbody({"status": "ok", "api": "v2"}), "application/json")
    with pytest.raises(BackendError, match="speaks API 'v2'.*needs 'v1'"):
        Client(url).health()
    routes["/v1/health"] = (404, b"Not Found", "text/plain")
    with pytest.raises(BackendError, match="not a ViewNeTI v1 backend"):
        Client(url).health()


def test_cancel_of_finished_job_is_not_an_error(stub):
    url, routes = stub
    routes["/v1/jobs/abc/cancel"] = (409, jbody({"error": "job already finished"}), "application/json")
    assert Client(url).cancel("abc")["state"] == "finished"


def test_event_stream_over_http(stub):
    url, routes = stub
    routes["/v1/jobs/j1/events"] = (
        200,
        b'event: progress\ndata: {"step": 1, "total": 2}\n\nevent: done\ndata: {"result": {}}\n\n',
        "text/event-stream",
    )
    events = list(Client(url).events("j1", timeout=5))
    assert [e.event for e in events] == ["progress", "done"]


def test_backend_that_failed_to_load_says_so(stub):
    url, routes = stub
    body = jbody({"error": "the embedded toy model is missing", "status": "failed"})
    routes["/v1/health"] = (503, body, "application/json")
    with pytest.raises(BackendError, match="could not load its model: the embedded toy model is missing"):
        Client(url).health()
    routes["/v1/health"] = (503, jbody({"error": "loading", "status": "loading"}), "application/json")
    with pytest.raises(BackendNotReady, match="still loading"):
        Client(url).health()
