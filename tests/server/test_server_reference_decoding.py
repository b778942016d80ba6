"""Inversion references are decoded as the camera saw them (issue 25), checked through a real server:
POST /v1/jobs/invert with a 16-bit greyscale PNG, an EXIF-rotated JPEG and an RGBA image.

The observable is the fitted token itself. An inversion is deterministic (same image, camera, steps and
seed give the same weights), so an upload that the server decodes right gives exactly the token of a plain
8-bit RGB PNG holding the pixels it should decode to, and a wrong decoding (16 bits clipped to white, the
EXIF orientation ignored, the alpha channel dropped) gives the token of that wrong image: each test also
fits that wrong image and checks that its token differs, so the comparison can fail.
"""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from srvutil import wait_job, wire_camera

STEPS = 2  # enough for the weights to depend on the image; ~1.5 s a step on the CPU toy model


def _b64(im: Image.Image, fmt: str = "PNG", **save) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


def _rgb(arr: np.ndarray) -> str:
    return _b64(Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB"))


class Inverter:
    """Fits a token to one reference on the session server and returns its weights (the object is deleted)."""

    def __init__(self, client, server) -> None:
        self.client, self.server = client, server

    def weights(self, image_b64: str, camera: dict, tag: str) -> dict:
        from safetensors.torch import load_file

        from viewneti_backend.mapper import WEIGHTS_NAME

        name = f"dec_{tag}_{time.monotonic_ns() % 10**9}"
        body = {"name": name, "images": [image_b64], "cameras": [camera], "steps": STEPS, "seed": 3}
        r = self.client.post("/v1/jobs/invert", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        job = wait_job(self.client, job_id, timeout=300)
        assert job["state"] == "done", job
        self.last_request = json.loads((self.server.data_dir / "jobs" / job_id / "request.json").read_text())
        try:
            return {k: v.clone() for k, v in load_file(self.server.data_dir / "objects" / name / WEIGHTS_NAME).items()}
        finally:
            assert self.client.delete(f"/v1/objects/{name}").status_code == 204


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def inverter(client, server) -> Inverter:
    return Inverter(client, server)


def _pattern(h: int, w: int) -> np.ndarray:
    """An 8-bit greyscale image with structure (a gradient and a bright square)."""
    grey = np.tile(np.linspace(20, 200, w).astype(np.uint8), (h, 1))
    grey[h // 4 : h // 2, w // 4 : w // 2] = 250
    return grey


def test_a_sixteen_bit_grey_png_is_scaled_not_clipped(inverter):
    grey8 = _pattern(64, 64)
    im16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # the same picture in 16 bits: 0..65535
    assert im16.mode.startswith("I;16")
    buf = io.BytesIO()
    im16.save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")  # a real 16-bit PNG on the wire
    cam = wire_camera()
    decoded = inverter.weights(base64.b64encode(buf.getvalue()).decode(), cam, "g16")
    expected = inverter.weights(_rgb(np.repeat(grey8[..., None], 3, axis=2)), cam, "g8")
    clipped = inverter.weights(_rgb(np.repeat(np.where(grey8 > 0, 255, 0)[..., None], 3, axis=2)), cam, "clip")
    assert _same(decoded, expected), "the 16-bit PNG was not decoded as its 8-bit equivalent"
    assert not _same(decoded, clipped)


def test_an_exif_rotated_jpeg_is_fitted_upright(inverter):
    # the sensor's rows: 64 wide, 32 high; EXIF orientation 6 = turn 90 degrees clockwise to view (32x64)
    sensor = np.zeros((32, 64, 3), np.uint8)
    sensor[:, :32] = (220, 40, 40)
    sensor[:, 32:] = (40, 60, 200)
    sensor[4:12, 40:56] = (250, 250, 60)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _b64(Image.fromarray(sensor), "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(io.BytesIO(base64.b64decode(jpeg))) as im:
        as_stored = np.asarray(im.convert("RGB"))  # the JPEG's pixels in sensor order (no EXIF applied)
    assert as_stored.shape == (32, 64, 3)
    upright = np.rot90(as_stored, k=-1)  # 90 degrees clockwise: 64 high, 32 wide
    cam = wire_camera(size=32, height=64)  # the camera that took the upright picture
    decoded = inverter.weights(jpeg, cam, "exif")
    assert inverter.last_request["image_sizes"] == [[32, 64]]  # width x height after the EXIF rotation
    expected = inverter.weights(_rgb(upright), cam, "upright")
    sideways = inverter.weights(_rgb(as_stored), cam, "sideways")
    assert _same(decoded, expected), "the JPEG's EXIF orientation was not applied"
    assert not _same(decoded, sideways)


def test_an_rgba_reference_is_composited_on_the_model_background(inverter, client):
    background = client.get("/v1/health").json()["reference_background"]
    bg = tuple(int(background[i : i + 2], 16) for i in (1, 3, 5))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (30, 200, 30)  # what the transparent part holds underneath: green
    rgba[16:48, 16:48] = (200, 40, 40, 255)  # an opaque red object
    opaque = rgba[..., 3] == 255
    composited = np.where(opaque[..., None], rgba[..., :3], np.array(bg, np.uint8))
    cam = wire_camera()
    decoded = inverter.weights(_b64(Image.fromarray(rgba, "RGBA")), cam, "rgba")
    expected = inverter.weights(_rgb(composited), cam, "flat")
    alpha_dropped = inverter.weights(_rgb(rgba[..., :3]), cam, "noalpha")
    assert _same(decoded, expected), f"the transparent part was not replaced by the model's background {background}"
    assert not _same(decoded, alpha_dropped)
