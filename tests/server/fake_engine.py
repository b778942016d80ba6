"""A fake Engine with the real interface, for fast tests of the server's queue/supersede/SSE logic.

Deterministic images from (seed, pose, object); every denoising or inversion step sleeps
``VIEWNETI_FAKE_STEP_S`` seconds (default 0.01) and polls ``should_stop``. The token library is a
folder of JSON files written atomically. A server process runs it through ``fake_server.py``
(``python -m fake_server`` with this folder on PYTHONPATH), which injects :func:`load` as the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from viewneti_backend.cameras import size_for_long_side
from viewneti_backend.errors import Cancelled, InputError, NotFoundError
from viewneti_backend.progress import Progress

BUILTIN = "toy_000"
NATIVE = 64  # the fake model's native size
SAMPLING = {"guidance": 2.0, "steps": 5, "live_steps": 2}  # like a model's viewneti/sampling.json


class FakeEngine:
    def __init__(self, library_dir: str | Path | None = None, step_s: float | None = None) -> None:
        self.library_dir = Path(library_dir) if library_dir else None
        if self.library_dir:
            self.library_dir.mkdir(parents=True, exist_ok=True)
        self.step_s = float(os.environ.get("VIEWNETI_FAKE_STEP_S", "0.01")) if step_s is None else step_s
        # views per render call in sequence jobs, as a GPU engine batches them
        self.sequence_batch = int(os.environ.get("VIEWNETI_FAKE_SEQUENCE_BATCH", "1"))
        self.render_calls: list[int] = []  # views per call, for tests
        self.lockstep_seen: list[bool] = []  # lockstep() at each step of calls given one, for tests
        load_s = float(os.environ.get("VIEWNETI_FAKE_LOAD_S", "0"))
        if load_s:
            time.sleep(load_s)

    @classmethod
    def load(cls, model=None, view_mapper=None, device=None, dtype=None, library_dir=None, compile=None) -> FakeEngine:
        if model is not None and model != "fake":
            raise InputError(f"fake engine: unknown model {model!r}")
        return cls(library_dir)

    def info(self) -> dict:
        return {
            "version": "0.1.0",
            "base_model": "fake-prior",
            "device": "cpu",
            "dtype": "float32",
            "view_mapper": "fake-view-mapper",
            "default_object": BUILTIN,
            "native_size": NATIVE,
            "sequence_batch": self.sequence_batch,
            "invert_steps": 150,  # like the engine on a CPU (sampling_defaults.default_invert_steps)
            "max_size": 2048,
            "sampling_defaults": dict(SAMPLING),
        }

    def _custom(self) -> list[dict]:
        if not self.library_dir:
            return []
        out = []
        for p in sorted(self.library_dir.glob("*.json")):
            out.append(json.loads(p.read_text()))
        return out

    def list_objects(self) -> list[dict]:
        return [
            {"name": BUILTIN, "builtin": True, "base_model": "fake-prior", "created": None, "steps": 0}
        ] + self._custom()

    def has_object(self, name: str) -> bool:
        return any(o["name"] == name for o in self.list_objects())

    def delete_object(self, name: str) -> None:
        if name == BUILTIN:
            raise InputError(f"{name!r} is built into the model and cannot be deleted")
        if not self.has_object(name):
            raise NotFoundError(f"unknown object {name!r}")
        assert self.library_dir is not None, "this fake engine was made without a library folder"
        (self.library_dir / f"{name}.json").unlink()

    def rename_object(self, name: str, new_name: str) -> dict:
        from viewneti_backend.errors import NameTakenError

        if name == BUILTIN:
            raise InputError(f"{name!r} is built into the model and cannot be renamed")
        if self.has_object(new_name):
            raise NameTakenError(f"an object named {new_name!r} already exists")
        assert self.library_dir is not None, "this fake engine was made without a library folder"
        entry = json.loads((self.library_dir / f"{name}.json").read_text())
        entry["name"] = new_name
        tmp = self.library_dir / f".{new_name}.json.tmp"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self.library_dir / f"{new_name}.json")
        (self.library_dir / f"{name}.json").unlink()
        return entry

    def render(
        self,
        cameras,
        object_name=None,
        seed=0,
        steps=None,
        guidance=None,
        *,
        should_stop=None,
        on_step=None,
        lockstep=None,
        timings=None,
        warnings=None,
        use_rig=True,
    ):
        steps = SAMPLING["steps"] if steps is None else steps
        guidance = SAMPLING["guidance"] if guidance is None else guidance
        obj = object_name or BUILTIN
        if not self.has_object(obj):
            raise NotFoundError(f"unknown object {obj!r}")
        t0 = time.perf_counter()
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            if lockstep is not None:
                self.lockstep_seen.append(bool(lockstep()))
            time.sleep(self.step_s)
            if on_step:
                on_step(i + 1, steps)
        t1 = time.perf_counter()
        out = []
        for cam in cameras:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(cam.camera_to_anchor, dtype=np.float64).tobytes())
            h.update(f"{seed}|{obj}|{steps}|{guidance}|{cam.fov_y_deg}".encode())
            rng = np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))
            arr = rng.integers(0, 256, size=(cam.height, cam.width, 3), dtype=np.uint8)
            out.append(Image.fromarray(arr, "RGB"))
        if timings is not None:
            timings.update({"encode": 0.1, "denoise": (t1 - t0) * 1000.0, "decode": 0.1})
        if warnings is not None:
            warnings.extend(self.render_warnings(cameras))
        return out

    def render_warnings(self, cameras, *, with_view=True, use_rig=True):
        """Like the engine's: one string for sizes above 2x the fake model's native size (64 px)."""
        big = [c for c in cameras if max(c.width, c.height) > 2 * NATIVE]
        return [f"{big[0].width}x{big[0].height}: larger than 2x the fake model's native size (64 px)"] if big else []

    def invert_warnings(self, cameras, reference_size):
        """Like the engine's: the render warnings of the cameras at the training size (long side 64)."""
        width, height = size_for_long_side(reference_size[0], reference_size[1], NATIVE)
        return self.render_warnings([c.with_size(width, height) for c in cameras])

    def invert(
        self,
        images,
        cameras,
        name,
        steps,
        *,
        seed=0,
        on_progress=None,
        should_stop=None,
        lockstep=None,
        preview_every=0,
    ):
        if self.has_object(name):
            raise InputError(f"an object named {name!r} already exists")
        t0 = time.perf_counter()
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            if lockstep is not None:
                self.lockstep_seen.append(bool(lockstep()))
            time.sleep(self.step_s)
            if on_progress:
                step = i + 1
                preview = None
                if preview_every and step % preview_every == 0:
                    preview = Image.new("RGB", (32, 32), (step % 256, 0, 0))
                el = time.perf_counter() - t0
                on_progress(
                    Progress(
                        step=step,
                        total=steps,
                        loss=1.0 / step,
                        eta_s=el / step * (steps - step),
                        phase="training",
                        preview=preview,
                    )
                )
        entry = {
            "name": name,
            "builtin": False,
            "base_model": "fake-prior",
            "created": datetime.now(UTC).isoformat(),
            "steps": steps,
        }
        assert self.library_dir is not None, "this fake engine was made without a library folder"
        tmp = self.library_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self.library_dir / f"{name}.json")
        return entry


def load(**kwargs) -> FakeEngine:
    return FakeEngine.load(**kwargs)
