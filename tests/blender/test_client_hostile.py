"""The add-on's client against a hostile HTTP server (stdlib, 127.0.0.1, every loop bounded): huge
bodies, trickled headers, redirects, oversized PNGs, endless event lines, keep-alive-only streams;
and job event streams trickled without end by a server in its own process (stuck_stream_server.py)."""

import json
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blender_addon import limits
from blender_addon.client import BackendError, BackendUnavailable, Client
from blender_addon.images import encode_png
from blender_addon.jobs import InvertJob, SequenceJob

pytestmark = pytest.mark.blender

STOP = threading.Event()  # set at teardown: every hostile loop ends


def png_header(width, height):
    """The first chunk of a PNG claiming width x height (a decompression-bomb shape), nothing to decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HostileServer"  # type: ignore[assignment]

    def log_message(self, *args):
        pass

    def _send_head(self, status=200, ctype="application/json", length=None, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def _write_for(self, chunk, total_bytes=None, seconds=None, pause=0.0):
        sent, t0 = 0, time.monotonic()
        try:
            while not STOP.is_set():
                if total_bytes is not None and sent >= total_bytes:
                    break
                if seconds is not None and time.monotonic() - t0 > seconds:
                    break
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client gave up: that is the point

    def do_GET(self):
        self._route()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route()

    def _route(self):
        p = self.path
        if p == "/v1/objects" and self.server.mode == "huge":  # no Content-Length, 40 MB of JSON-ish
            self._send_head(extra=[("Connection", "close")])
            self.wfile.write(b'{"objects": ["')
            self._write_for(b"x" * 65536, total_bytes=40 * 1024 * 1024)
        elif p == "/v1/objects" and self.server.mode == "declared":
            self._send_head(length=1_500_000_000)
            self._write_for(b"x" * 65536, total_bytes=1024 * 1024)
        elif p == "/v1/health" and self.server.mode == "trickle":  # a header byte every 0.3 s
            try:
                for b in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 200:
                    if STOP.is_set():
                        break
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
            self.close_connection = True
        elif p == "/v1/health" and self.server.mode == "body-trickle":
            self._send_head(length=10_000)
            self._write_for(b" ", seconds=20, pause=0.3)
        elif p == "/v1/health" and self.server.mode == "redirect":
            body = json.dumps({"status": "ok", "api": "v1"}).encode()
            self._send_head(307, length=len(body), extra=[("Location", "http://127.0.0.1:1/v1/health")])
            self.wfile.write(body)
        elif p == "/v1/render":
            png = png_header(12000, 12000) if self.server.mode == "bomb" else encode_png(64, 48, bytes(64 * 48 * 4))
            self._send_head(ctype="image/png", length=len(png))
            self.wfile.write(png)
        elif p.startswith("/v1/jobs/") and p.endswith("/events"):
            self._send_head(ctype="text/event-stream", extra=[("Connection", "close")])
            if self.server.mode == "endless-line":
                self.wfile.write(b"data: ")
                self._write_for(b"y" * 65536, total_bytes=limits.MAX_SSE_LINE_BYTES + 4 * 1024 * 1024)
            else:  # keep-alives only
                self._write_for(b": keepalive\n\n", seconds=30, pause=0.1)
            self.close_connection = True
        elif p == "/v1/jobs/invert" or p == "/v1/jobs/sequence":
            body = json.dumps({"job_id": "j1", "kind": "invert", "total": 3}).encode()
            self._send_head(202, length=len(body))
            self.wfile.write(body)
        elif p == "/v1/jobs/j1":
            self.server.polls += 1
            state = {"job_id": "j1", "state": "running", "step": 1, "total": 3, "frames_done": [0]}
            if self.server.polls >= 3:
                state.update(state="done", step=3, result={"name": "mug"}, frames_done=[0, 1])
            body = json.dumps(state).encode()
            self._send_head(length=len(body))
            self.wfile.write(body)
        elif p.startswith("/v1/jobs/j1/frames/"):
            png = encode_png(32, 24, bytes(32 * 24 * 4)) if self.server.mode != "wrong-frame" else png_header(9000, 10)
            self._send_head(ctype="image/png", length=len(png))
            self.wfile.write(png)
        else:
            self._send_head(404, length=2)
            self.wfile.write(b"{}")


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    mode = ""  # which misbehaviour the routes show
    polls = 0  # GET /v1/jobs/j1 count


@pytest.fixture
def hostile():
    STOP.clear()
    server = HostileServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    STOP.set()
    server.shutdown()
    server.server_close()


def test_a_huge_body_is_refused_at_the_cap(hostile):
    server, url = hostile
    for mode in ("huge", "declared"):
        server.mode = mode
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="larger than 8 MB"):
            Client(url, timeout=10).objects()
        assert time.monotonic() - t0 < 5


def test_a_trickling_server_cannot_outlive_the_timeout(hostile):
    server, url = hostile
    for mode in ("trickle", "body-trickle"):
        server.mode = mode
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="within 1.5 s"):
            Client(url, timeout=1.5).health()
        assert time.monotonic() - t0 < 3.5, mode


def test_a_redirect_is_not_success(hostile):
    server, url = hostile
    server.mode = "redirect"
    with pytest.raises(BackendError, match=r"redirect \(307") as err:
        Client(url, timeout=5).health()
    assert err.value.status == 307


def test_a_render_of_the_wrong_size_is_refused_before_decoding(hostile):
    server, url = hostile
    request = {"camera": {"width": 64, "height": 48}}
    assert Client(url, timeout=5).render(request).png.startswith(b"\x89PNG")  # the right size passes
    server.mode = "bomb"
    with pytest.raises(BackendError, match="12000x12000 render for a 64x48 request"):
        Client(url, timeout=5).render(request)


def test_an_endless_event_line_is_cut_at_the_cap(hostile):
    server, url = hostile
    server.mode = "endless-line"
    stream = Client(url, timeout=5).events("j1", timeout=5)
    with pytest.raises(BackendError, match="event is larger than"):
        list(stream)


def test_a_keepalive_only_stream_falls_back_to_polling(hostile):
    server, url = hostile
    job = InvertJob(Client(url, timeout=5), {"name": "mug", "steps": 3, "images": [b"png"]}, max_silence=0.5)
    job.start()
    assert job.wait(timeout=20), (job.state, job.message)
    assert job.state == "done" and job.result == {"name": "mug"}
    assert server.polls >= 3  # progress came from GET /v1/jobs/j1 while the stream was silent


def test_a_sequence_polls_frames_and_refuses_a_frame_of_the_wrong_size(hostile, tmp_path):
    server, url = hostile
    cams = [{"width": 32, "height": 24}, {"width": 32, "height": 24}]
    job = SequenceJob(Client(url, timeout=5), {"cameras": cams}, str(tmp_path), max_silence=0.5)
    job.start()
    assert job.wait(timeout=20) and job.state == "done", job.message
    assert sorted(job.written) == [0, 1]
    server.mode, server.polls = "wrong-frame", 0
    job = SequenceJob(Client(url, timeout=5), {"cameras": cams}, str(tmp_path / "b"), max_silence=0.5)
    job.start()
    assert job.wait(timeout=20) and job.state == "error"
    assert "9000x10 frame 0 for a 32x24 request" in job.message
    assert not (tmp_path / "b" / "frame_000000.png").exists()


def test_pixel_snapshot_encodes_off_the_main_thread_with_srgb():
    from blender_addon.images import PixelSnapshot, png_size
    from blender_addon.jobs import encoded_invert_request

    snap = PixelSnapshot(2, 1, [0.214, 0.214, 0.214, 1.0, 2.0, float("nan"), -1.0, 0.5], True)
    req = encoded_invert_request({"name": "x", "images": [snap, b"raw"]})
    import base64

    png = base64.b64decode(req["images"][0])
    assert png_size(png) == (2, 1) and base64.b64decode(req["images"][1]) == b"raw"
    raw = zlib.decompress(png[33 + 8 : -16])  # IDAT payload: one filter byte + 8 bytes
    assert abs(raw[1] - 128) <= 1 and raw[4] == 255  # linear 0.214 -> sRGB ~128; alpha linear
    assert tuple(raw[5:9]) == (255, 0, 0, 128)  # clamped, NaN -> 0, alpha 0.5 -> 128


# -- a job's event stream held by a server in another process ---------------------------------


@pytest.fixture
def stuck_server():
    """Starts `stuck_stream_server.py MODE` as its own process; returns (url, stats())."""
    procs = []

    def start(mode):
        script = Path(__file__).with_name("stuck_stream_server.py")
        proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}"

        def stats():
            with urllib.request.urlopen(url + "/stats", timeout=5) as response:
                return json.loads(response.read())

        return url, stats

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def eventually(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def running(job):
    job.poll()  # what the timer does: apply the worker's news
    return job.state == "running"


def test_a_trickled_event_line_cannot_hold_a_job(stuck_server):
    """One line trickled a byte at a time restarts the socket timeout with every byte and would take
    months to reach the line cap: the stream still ends after `max_silence`, and the job follows its
    record (GET /v1/jobs/j1) to the end."""
    url, stats = stuck_server("finish")
    job = InvertJob(
        Client(url, timeout=5), {"name": "mug", "steps": 3, "images": [b"png"]}, max_silence=1.0, poll_s=0.2
    )
    t0 = time.monotonic()
    job.start()
    assert job.wait(timeout=20), (job.state, job.message)
    assert job.state == "done" and job.result == {"name": "mug", "steps": 3}
    assert time.monotonic() - t0 < 10
    assert stats()["polls"] >= 3 and stats()["streams"] == 1  # silent: the record is polled, not the stream
    assert eventually(lambda: stats()["closed_streams"] == 1)  # the add-on hung up on the trickle


def test_cancel_closes_a_stuck_stream_and_ends_the_job(stuck_server):
    url, stats = stuck_server("cancel")
    job = InvertJob(Client(url, timeout=5), {"name": "mug", "steps": 3, "images": [b"png"]}, max_silence=60.0)
    job.start()
    assert eventually(lambda: stats()["streams"] == 1 and running(job))
    t0 = time.monotonic()
    job.cancel()  # the stream is stuck mid-line for another minute: only closing it frees the job's thread
    assert job.wait(timeout=5) and job.state == "cancelled", (job.state, job.message)
    assert time.monotonic() - t0 < 3
    assert stats()["cancels"] == 1 and stats()["streams"] == 1  # not reopened after the cancel
    assert eventually(lambda: stats()["closed_streams"] == 1)


def test_an_unconfirmed_cancel_ends_the_job_here(stuck_server):
    """A backend whose record says "running" after a cancel does not keep the job (and the panel) forever."""
    url, stats = stuck_server("ignore")
    request = {"name": "mug", "steps": 3, "images": [b"png"]}
    job = InvertJob(Client(url, timeout=5), request, max_silence=60.0, cancel_timeout=1.0)
    job.start()
    assert eventually(lambda: stats()["streams"] == 1 and running(job))
    job.cancel()
    assert job.wait(timeout=10) and job.state == "cancelled"
    assert "did not confirm within 1 s" in job.message and stats()["cancels"] == 1
