"""A hostile ViewNeTI-like backend for the add-on's tests, run as its own process: it accepts one job
(``j1``) and its event stream trickles one line without end, a byte every 0.2 s, so neither a socket
timeout nor a line-length cap ever ends the read.

``python stuck_stream_server.py MODE`` prints its port on the first line, then serves until killed.
MODE says what the job record (``GET /v1/jobs/j1``) answers:

- ``finish``: running for the first 3 polls, then done;
- ``cancel``: running until ``POST /v1/jobs/j1/cancel``, then cancelled;
- ``ignore``: running, whatever happens (a backend that never confirms a cancel).

``GET /stats`` says what the client did: polls, cancels, streams opened and streams it hung up on.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRICKLE_S = 0.2
STREAM_LIMIT_S = 120.0  # the server's own bound: a test that hangs still ends


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"polls": 0, "cancels": 0, "streams": 0, "closed_streams": 0}

    def add(self, name):
        with self.lock:
            self.counts[name] += 1
            return self.counts[name]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StuckServer"  # type: ignore[assignment]

    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path in ("/v1/jobs/invert", "/v1/jobs/sequence"):
            self._json(202, {"job_id": "j1", "kind": "invert", "state": "queued", "total": 3})
        elif self.path == "/v1/jobs/j1/cancel":
            self.server.stats.add("cancels")
            self._json(202, {"job_id": "j1", "state": "cancelling"})
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_GET(self):
        if self.path == "/v1/jobs/j1/events":
            self._trickle()
        elif self.path == "/v1/jobs/j1":
            self._json(200, self._record(self.server.stats.add("polls")))
        elif self.path == "/stats":
            with self.server.stats.lock:
                self._json(200, dict(self.server.stats.counts))
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def _record(self, polls):
        record = {"job_id": "j1", "kind": "invert", "state": "running", "step": 1, "total": 3}
        mode = self.server.mode
        if mode == "finish" and polls >= 3:
            record.update(state="done", step=3, result={"name": "mug", "steps": 3})
        elif mode == "cancel" and self.server.stats.counts["cancels"] > 0:
            record.update(state="cancelled")
        return record

    def _trickle(self):
        self.server.stats.add("streams")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        deadline = time.monotonic() + STREAM_LIMIT_S
        try:
            self.wfile.write(b"data: ")
            while time.monotonic() < deadline:
                self.wfile.write(b"y")
                self.wfile.flush()
                time.sleep(TRICKLE_S)
        except OSError:
            self.server.stats.add("closed_streams")  # the client hung up: what the tests want
        self.close_connection = True


class StuckServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = mode
        self.stats = Stats()


def main(argv):
    (mode,) = argv
    if mode not in ("finish", "cancel", "ignore"):
        raise SystemExit(f"unknown mode {mode!r}: use finish, cancel or ignore")
    server = StuckServer(mode)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main(sys.argv[1:])
