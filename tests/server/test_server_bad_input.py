"""Every kind of bad input gets a 4xx with a message that says what to fix, and writes nothing."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from srvutil import png_b64, render_body, wire_camera

GOOD_POSE = wire_camera()["camera_to_anchor"]


def _pose(edits):
    m = [row[:] for row in GOOD_POSE]
    for (i, j), v in edits.items():
        m[i][j] = v
    return m


def _scaled(s):
    return [[v * s if (i < 3 and j < 3) else v for j, v in enumerate(row)] for i, row in enumerate(GOOD_POSE)]


def _reflected():
    return [[-v if (j == 0 and i < 3) else v for j, v in enumerate(row)] for i, row in enumerate(GOOD_POSE)]


def _png_header_only(width: int, height: int, rows: int = 4) -> bytes:
    """A valid PNG whose header claims width x height (a decompression-bomb shape), with a few rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _gif() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    return _b64(buf.getvalue())


@pytest.fixture(scope="module")
def data_snapshot(server, client):
    def snap():
        jobs = (
            sorted(p.name for p in (server.data_dir / "jobs").iterdir()) if (server.data_dir / "jobs").exists() else []
        )
        objs = sorted(str(p.relative_to(server.data_dir)) for p in (server.data_dir / "objects").rglob("*"))
        names = sorted(o["name"] for o in client.get("/v1/objects").json()["objects"])
        return jobs, objs, names

    return snap, snap()


def _cam(**kw):
    c = wire_camera()
    c.update(kw)
    return c


RENDER_CASES = {
    "non-orthonormal (scaled) pose": ({"camera": _cam(camera_to_anchor=_scaled(2.0))}, "orthonormal"),
    "sheared pose": ({"camera": _cam(camera_to_anchor=_pose({(0, 1): 0.3}))}, "orthonormal"),
    "reflection": ({"camera": _cam(camera_to_anchor=_reflected())}, "det"),
    "bad bottom row": ({"camera": _cam(camera_to_anchor=_pose({(3, 0): 1.0}))}, "bottom row"),
    "3x4 pose": ({"camera": _cam(camera_to_anchor=GOOD_POSE[:3])}, "camera_to_anchor"),
    "non-numeric pose": ({"camera": _cam(camera_to_anchor=[["a"] * 4] * 4)}, "camera_to_anchor"),
    "missing camera": ({"camera": None}, "camera"),
    "fov 0": ({"camera": _cam(fov_y_deg=0)}, "fov_y_deg"),
    "fov 180": ({"camera": _cam(fov_y_deg=180)}, "fov_y_deg"),
    "width too small": ({"camera": _cam(width=8)}, "width"),
    "width too large": ({"camera": _cam(width=4096)}, "width"),
    "width not multiple of 8": ({"camera": _cam(width=60)}, "width"),
    "height string": ({"camera": _cam(height="big")}, "height"),
    "fx zero": ({"camera": _cam(fx=0)}, "fx"),
    "cy negative": ({"camera": _cam(cy=-3.0)}, "cy"),
    "fy disagrees with fov": ({"camera": _cam(fy=10.0)}, "disagrees with fy"),
    "steps 0": ({"steps": 0}, "steps"),
    "steps 151": ({"steps": 151}, "steps"),
    "guidance negative": ({"guidance": -1}, "guidance"),
    "guidance too high": ({"guidance": 31}, "guidance"),
    "seed negative": ({"seed": -1}, "seed"),
    "seed too large": ({"seed": 2**31}, "seed"),
    "seed float": ({"seed": 1.5}, "seed"),
    "session too long": ({"session": "s" * 129}, "session"),
    "object path traversal": ({"object": "../x"}, "object"),
    "object with slash": ({"object": "a/b"}, "object"),
    "object dot": ({"object": "."}, "object"),
    "object with NUL": ({"object": "a\x00b"}, "object"),
    "object empty": ({"object": ""}, "object"),
}


@pytest.mark.parametrize("case", sorted(RENDER_CASES))
def test_bad_render_request(client, data_snapshot, case):
    patch, needle = RENDER_CASES[case]
    body = render_body()
    body.update(patch)
    if body["camera"] is None:
        del body["camera"]
    r = client.post("/v1/render", json=body)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err, str) and len(err) > 10
    assert needle.lower() in err.lower(), (case, err)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_pose_is_rejected(client, literal):
    pose = [[repr(float(v)) for v in row] for row in GOOD_POSE]
    pose[0][3] = literal
    pose_txt = "[" + ",".join("[" + ",".join(r) + "]" for r in pose) + "]"
    raw = f'{{"camera": {{"camera_to_anchor": {pose_txt}, "fov_y_deg": 39.6, "width": 64, "height": 64}}, "steps": 2}}'
    r = client.post("/v1/render", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert "finite" in err or "nan" in err.lower(), err


def test_unknown_object_is_404(client):
    r = client.post("/v1/render", json=render_body(object="no_such_object"))
    assert r.status_code == 404
    assert "GET /v1/objects" in r.json()["error"]


@pytest.mark.parametrize(
    "raw,ctype",
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (json.dumps(render_body()).encode(), "text/plain"),
    ],
)
def test_malformed_bodies(client, raw, ctype):
    r = client.post("/v1/render", content=raw, headers={"Content-Type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_oversized_body_by_content_length(server, client):
    big = b"x" * (9 * 1024 * 1024)  # the session server runs with --max-body-mb 8
    r = client.post("/v1/jobs/invert", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["error"]


def test_oversized_body_streamed_without_content_length(client):
    def gen():
        chunk = b" " * (1024 * 1024)
        for _ in range(12):
            yield chunk

    r = client.post("/v1/jobs/invert", content=gen(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "too large" in r.json()["error"]


def _invert_body(**kw):
    body = {"name": "bad_input_probe", "images": [png_b64()], "cameras": [wire_camera()], "steps": 3}
    body.update(kw)
    return body


INVERT_CASES = {
    "not base64": (_invert_body(images=["this is not base64!!"]), "base64"),
    "undecodable image": (_invert_body(images=[_b64(b"\x89PNG\r\n\x1a\n" + b"garbage" * 100)]), "image"),
    "random bytes": (_invert_body(images=[_b64(bytes(range(256)) * 10)]), "image"),
    "gif": (_invert_body(images=[_gif()]), "PNG, JPEG or WebP"),
    "too many pixels": (_invert_body(images=[_b64(_png_header_only(4100, 16))]), "4096"),
    "decompression bomb": (_invert_body(images=[_b64(_png_header_only(60000, 60000))]), "pixels"),
    "truncated png": (_invert_body(images=[png_b64((64, 64))[:200]]), "image"),
    "images/cameras mismatch": (_invert_body(cameras=[wire_camera(), wire_camera()]), "camera"),
    "no images": (_invert_body(images=[], cameras=[]), "images"),
    "bad camera": (_invert_body(cameras=[_cam(camera_to_anchor=_scaled(3.0))]), "orthonormal"),
    "steps 0": (_invert_body(steps=0), "steps"),
    "name traversal": (_invert_body(name="../x"), "name"),
    "name slash": (_invert_body(name="a/b"), "name"),
    "name dot": (_invert_body(name="."), "name"),
    "name dotdot": (_invert_body(name=".."), "name"),
    "name NUL": (_invert_body(name="a\x00b"), "name"),
    "name empty": (_invert_body(name=""), "name"),
    "name too long": (_invert_body(name="n" * 65), "name"),
    "name with space": (_invert_body(name="my mug"), "name"),
    "existing builtin name": (None, "exists"),
}


@pytest.mark.parametrize("case", sorted(INVERT_CASES))
def test_bad_invert_request(client, data_snapshot, case):
    body, needle = INVERT_CASES[case]
    if body is None:
        default = client.get("/v1/health").json()["default_object"]
        body = _invert_body(name=default)
    r = client.post("/v1/jobs/invert", json=body)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert needle.lower() in err.lower(), (case, err)


SEQUENCE_CASES = {
    "no cameras": ({"cameras": []}, "cameras"),
    "bad second camera": ({"cameras": [wire_camera(), _cam(camera_to_anchor=_scaled(0.5))]}, "cameras[1]"),
    "frames length": ({"cameras": [wire_camera()], "frames": [1, 2]}, "frames"),
    "duplicate frames": ({"cameras": [wire_camera(), wire_camera()], "frames": [3, 3]}, "unique"),
    "negative frame": ({"cameras": [wire_camera()], "frames": [-1]}, "frame"),
    "unknown object": ({"cameras": [wire_camera()], "object": "nope_not_here"}, "unknown object"),
    "path object": ({"cameras": [wire_camera()], "object": "../../etc"}, "object"),
}


@pytest.mark.parametrize("case", sorted(SEQUENCE_CASES))
def test_bad_sequence_request(client, data_snapshot, case):
    body, needle = SEQUENCE_CASES[case]
    r = client.post("/v1/jobs/sequence", json=body)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert needle.lower() in r.json()["error"].lower(), (case, r.json())


@pytest.mark.parametrize(
    "path,status",
    [
        ("/v1/objects/%2e%2e%2fx", 400),  # ../x
        ("/v1/objects/a%2Fb", 400),  # a/b
        ("/v1/objects/%2e", 400),  # .
        ("/v1/objects/a%00b", 404),  # NUL: a control character, no route has one (API.md, Paths)
        ("/v1/objects/toy_000%0A", 404),  # not the built-in toy_000 (a route pattern's $ matches before \n)
        ("/v1/objects/..%2F..%2Fetc%2Fpasswd", 400),
        ("/v1/objects/no_such_object", 404),
    ],
)
def test_bad_delete(client, data_snapshot, path, status):
    r = client.delete(path)
    assert r.status_code == status, (path, r.text)
    assert r.json()["error"]


def test_builtin_object_cannot_be_deleted(client):
    default = client.get("/v1/health").json()["default_object"]
    r = client.delete(f"/v1/objects/{default}")
    assert r.status_code == 409, r.text  # a conflict with the loaded model, not bad input
    assert "built-in" in r.json()["error"]


def test_every_error_is_json_with_request_id(client):
    for method, path in (("GET", "/nope"), ("PUT", "/v1/render"), ("GET", "/v1/jobs/zzz")):
        r = client.request(method, path)
        assert 400 <= r.status_code < 500
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] and r.headers["x-request-id"]


def test_nothing_was_written_by_bad_input(data_snapshot):
    snap, before = data_snapshot
    assert snap() == before
