"""A render outside the view-mapper's training range: the server's X-Warnings header (a JSON array of
strings) reaches the client's result and the panel's status line (never a silent, meaningless view)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from addon_testutil import addon_module

from blender_addon.client import Client, RenderResult

pytestmark = pytest.mark.blender

WARNING = "camera 0: outside the view-mapper's training range (feature 3 is +4.20, trained on -1..1)"
SECOND = "the camera is 9.00 units from the anchor \u2013 clamped"  # non-ASCII: \u-escaped on the wire


def test_the_warnings_header_reaches_the_result():
    from blender_addon.images import encode_png

    png = encode_png(8, 8, bytes([1, 2, 3, 255]) * 64)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.send_header("X-Seed", "3")
            self.send_header("X-Warnings", json.dumps([WARNING, SECOND], ensure_ascii=True))
            self.end_headers()
            self.wfile.write(png)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = Client(f"http://127.0.0.1:{server.server_address[1]}").render({"camera": {}, "seed": 3})
    finally:
        server.shutdown()
        server.server_close()
    assert result.warnings == [WARNING, SECOND] and result.seed == 3


def test_the_panel_status_shows_the_warning(scene):
    from blender_addon.images import encode_png

    renders = addon_module("renders")
    request = {"camera": {"width": 8, "height": 8}, "object": "x", "seed": 0}
    png = encode_png(8, 8, bytes([1, 2, 3, 255]) * 64)
    renders.apply_render(scene, scene.camera, request, RenderResult(png, 0, "", {}, [WARNING, SECOND]))
    assert scene.viewneti.status_message.startswith("Rendered") and WARNING in scene.viewneti.status_message
    assert scene.viewneti.last_warnings.split("\n") == [WARNING, SECOND]  # all of them, under the buttons
    renders.apply_render(scene, scene.camera, request, RenderResult(png, 0, "", {}))
    assert "Warning" not in scene.viewneti.status_message
