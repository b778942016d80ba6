"""Job records (sequence renders and inversions), persisted as JSON and published as events.

Layout: ``<data_dir>/jobs/<job_id>/job.json`` (state), ``request.json`` (the request without images),
``frame_{frame:06d}.png`` (sequence frames). Every file is written to a temporary name and renamed
into place, so a crash never leaves a half-written record or frame. On startup, jobs found
``queued`` or ``running`` (the server died under them) are marked ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from viewneti_backend.atomic_files import atomic_write_bytes

from .errors import ApiError
from .events import Event, EventHub

log = logging.getLogger("viewneti.server")

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("done", "error", "cancelled", "interrupted")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PERSIST_INTERVAL_S = 1.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def frame_filename(frame: int) -> str:
    return f"frame_{frame:06d}.png"


@dataclass
class Job:
    job_id: str
    kind: str
    total: int
    state: str = "queued"
    step: int = 0
    loss: float | None = None
    eta_s: float | None = None
    phase: str | None = None  # invert: "compiling" (first inversion at this size in this process), "training"
    error: str | None = None
    result: dict[str, Any] | None = None
    frames_done: list[int] = field(default_factory=list)
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    name: str | None = None  # invert: the new object's name
    request_id: str | None = None
    # -- runtime only (not persisted) ---------------------------------------------------------------
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    runtime: dict[str, Any] = field(default_factory=dict, repr=False)
    last_preview: dict[str, Any] | None = field(default=None, repr=False)
    persisted_at: float = field(default=0.0, repr=False)

    _PUBLIC = (
        "job_id",
        "kind",
        "state",
        "step",
        "total",
        "loss",
        "eta_s",
        "phase",
        "error",
        "result",
        "frames_done",
        "created",
        "updated",
        "name",
        "request_id",
    )

    def public(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self._PUBLIC}
        d["frames_done"] = list(self.frames_done)
        return d

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Job:
        kw = {k: rec[k] for k in cls._PUBLIC if k in rec}
        return cls(**kw)


class JobStore:
    """All jobs of this data dir: in memory, mirrored to disk, changes published to the event hub.

    Thread-safe: the worker thread updates progress while handlers create, read and cancel.
    """

    def __init__(self, jobs_dir: Path, hub: EventHub) -> None:
        self.dir = Path(jobs_dir)
        self.hub = hub
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Read every job record; mark those that were queued/running as interrupted. Returns their ids."""
        self.dir.mkdir(parents=True, exist_ok=True)
        interrupted = []
        for rec_path in sorted(self.dir.glob("*/job.json")):
            for tmp in rec_path.parent.glob(".*.tmp"):  # leftovers of a crash mid-write
                try:
                    tmp.unlink()
                except OSError:
                    pass
            try:
                job = Job.from_record(json.loads(rec_path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable job record %s: %s", rec_path, exc)
                continue
            if job.job_id != rec_path.parent.name:
                log.warning("skipping job record %s: its id does not match its folder", rec_path)
                continue
            if job.state in ACTIVE_STATES:
                job.state = "interrupted"
                job.error = "the server stopped while this job was queued or running; submit it again"
                job.updated = now_iso()
                self._persist(job, fsync=True)
                interrupted.append(job.job_id)
            self._jobs[job.job_id] = job
        if interrupted:
            log.info("marked %d job(s) interrupted after a restart: %s", len(interrupted), ", ".join(interrupted))
        return interrupted

    def job_dir(self, job: Job | str) -> Path:
        return self.dir / (job if isinstance(job, str) else job.job_id)

    def _persist(self, job: Job, *, fsync: bool) -> None:
        job.persisted_at = time.monotonic()
        data = json.dumps(job.public(), indent=1).encode()
        atomic_write_bytes(self.job_dir(job) / "job.json", data, fsync=fsync)

    # -- creation and lookup -------------------------------------------------------------------------
    def create(
        self,
        kind: str,
        total: int,
        request: dict[str, Any],
        *,
        name: str | None = None,
        request_id: str | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Job:
        job = Job(
            job_id=uuid.uuid4().hex, kind=kind, total=total, name=name, request_id=request_id, runtime=runtime or {}
        )
        d = self.job_dir(job)
        d.mkdir(parents=True, exist_ok=False)
        atomic_write_bytes(d / "request.json", json.dumps(request).encode(), fsync=False)
        with self._lock:
            self._persist(job, fsync=True)
            self._jobs[job.job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id) if _JOB_ID.match(job_id or "") else None
        if job is None:
            raise ApiError(404, f"no job with id {job_id!r}: GET /v1/jobs lists the jobs this server knows")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def active(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state in ACTIVE_STATES]

    # -- updates (worker thread and handlers) --------------------------------------------------------
    def set_state(self, job: Job, state: str, **fields: Any) -> None:
        with self._lock:
            job.state = state
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated = now_iso()
            self._persist(job, fsync=state in TERMINAL_STATES)
        if state == "running":
            self._publish_progress(job)
        elif state == "done":
            self.hub.publish(job.job_id, "done", {"result": job.result})
        elif state == "error":
            self.hub.publish(job.job_id, "error", {"error": job.error})
        elif state in ("cancelled", "interrupted"):
            self.hub.publish(job.job_id, state, {})

    def progress(
        self, job: Job, step: int, *, loss: float | None = None, eta_s: float | None = None, phase: str | None = None
    ) -> None:
        with self._lock:
            job.step, job.loss, job.eta_s = int(step), loss, eta_s
            if phase is not None:
                job.phase = phase
            job.updated = now_iso()
            if time.monotonic() - job.persisted_at >= PERSIST_INTERVAL_S:
                self._persist(job, fsync=False)
        self._publish_progress(job)

    def preview(self, job: Job, step: int, png_b64: str) -> None:
        data = {"step": int(step), "png_base64": png_b64}
        with self._lock:
            job.last_preview = data
        self.hub.publish(job.job_id, "preview", data)

    def frame_done(self, job: Job, index: int, frame: int, png: bytes, *, eta_s: float | None) -> None:
        atomic_write_bytes(self.job_dir(job) / frame_filename(frame), png, fsync=True)
        with self._lock:
            job.frames_done.append(frame)
        self.hub.publish(job.job_id, "frame", self._frame_event(job, index, frame))
        self.progress(job, len(job.frames_done), eta_s=eta_s)

    def frame_path(self, job: Job, frame: int) -> Path | None:
        with self._lock:
            if frame not in job.frames_done:
                return None
        p = self.job_dir(job) / frame_filename(frame)
        return p if p.is_file() else None

    # -- events --------------------------------------------------------------------------------------
    def _frame_event(self, job: Job, index: int, frame: int) -> dict[str, Any]:
        return {"index": index, "frame": frame, "url": f"/v1/jobs/{job.job_id}/frames/{frame}"}

    def _progress_data(self, job: Job) -> dict[str, Any]:
        return {
            "step": job.step,
            "total": job.total,
            "loss": job.loss,
            "eta_s": job.eta_s,
            "phase": job.phase,
            "state": job.state,
        }

    def _publish_progress(self, job: Job) -> None:
        self.hub.publish(job.job_id, "progress", self._progress_data(job))

    def snapshot_events(self, job: Job) -> list[Event]:
        """The job's current state as the events a client would have seen so far (for SSE replay)."""
        with self._lock:
            events: list[Event] = [("progress", self._progress_data(job))]
            for i, fr in enumerate(job.frames_done):  # frames are rendered in order: position == index
                events.append(("frame", self._frame_event(job, i, fr)))
            if job.last_preview:
                events.append(("preview", dict(job.last_preview)))
            if job.state == "done":
                events.append(("done", {"result": job.result}))
            elif job.state == "error":
                events.append(("error", {"error": job.error}))
            elif job.state in ("cancelled", "interrupted"):
                events.append((job.state, {}))
            return events
