"""Job records (sequence renders and inversions), persisted as JSON and published as events.

Layout: ``<data_dir>/jobs/<job_id>/job.json`` (state), ``request.json`` (the request without images),
``reference_NN.bin`` (an inversion's uploaded image files while it waits or runs; decoded only when
it starts, removed when it ends), ``frame_{frame:06d}.png`` (sequence frames). Every file is written
to a temporary name and renamed into place, so a crash never leaves a half-written record or frame.
On startup, jobs found ``queued`` or ``running`` (the server died under them) are marked
``interrupted``, and a sequence's ``frames_done`` is read from the frame files present (the record is
saved at most once a second while frames arrive).

Finished jobs are deleted on request (``DELETE /v1/jobs/{id}``) and pruned to the newest ``keep_jobs``
(``--keep-jobs``) whenever a job ends and at startup, so a long-running server does not fill its disk
with old frames. A deleted job's folder is first renamed to ``.deleting-<id>`` (one atomic step, under
the store's lock), then removed: a crash in between leaves only a hidden folder that the next startup
removes, never a half-deleted job that would still be listed.

A full or read-only disk never hides a job's fate: state changes are published to subscribers before
the record is saved, a failed save is logged and retried with the next change, and GET reports the
in-memory state. A data dir that cannot be written at startup leaves the server serving renders and
refusing new jobs with 507 and a message that says what to fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viewneti_backend.atomic_files import atomic_write_bytes
from viewneti_backend.cameras import Camera
from viewneti_backend.progress import Progress

from .config import MIN_KEEP_JOBS
from .errors import ApiError
from .events import Event, EventHub

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("viewneti.server")

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("done", "error", "cancelled", "interrupted")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FRAME_FILE = re.compile(r"^frame_(\d{6,7})\.png$")
PERSIST_INTERVAL_S = 1.0
INSUFFICIENT_STORAGE = 507
DELETING_PREFIX = ".deleting-"  # a deleted job's folder while it is being removed (see the module docstring)


def reference_filename(index: int) -> str:
    return f"reference_{index:02d}.bin"


def storage_error(dir: Path, exc: OSError) -> ApiError:
    reason = exc.strerror or type(exc).__name__
    return ApiError(
        INSUFFICIENT_STORAGE,
        f"cannot write the job to the server's data directory {dir} ({reason}): free disk space or make it "
        "writable (or restart the server with another --data-dir); renders still work",
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def frame_filename(frame: int) -> str:
    return f"frame_{frame:06d}.png"


@dataclass(frozen=True)
class SequenceSpec:
    """What a sequence job renders, as the handler validated and resolved it (memory only: the
    persisted request record keeps the cameras as sent)."""

    cameras: tuple[Camera, ...]
    frames: tuple[int, ...]  # one frame number per camera: the output files' names
    object: str | None
    seed: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class InvertSpec:
    """What an inversion fits, besides the job's name and total steps; its images are spooled to the
    job's folder and decoded only when it starts (memory only)."""

    cameras: tuple[Camera, ...]  # one per reference image
    seed: int
    preview_every: int
    max_pixels: int  # the decoded references' limit (--max-image-pixels)


JobSpec = SequenceSpec | InvertSpec


@dataclass(eq=False)
class JobRun:
    """A job's mutable state while it waits and runs (memory only)."""

    references: int = 0  # spooled image files of an inversion (reference_NN.bin), until it ends
    images: list[Image] | None = None  # an inversion's decoded references, while it runs
    t_start: float = 0.0  # perf_counter when it started running
    next_index: int = 0  # sequence: the next camera to render
    writes: list[Future] = field(default_factory=list)  # sequence: frames being encoded and stored
    # sequence: why a frame could not be stored (a full disk): the job fails at once, its render is cut
    write_error: Exception | None = None


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
    # what the job goes ahead despite, computed when it is created: a sequence's are the strings a
    # single render of its cameras sends as X-Warnings (Engine.render_warnings), an inversion's those of
    # its cameras at the training size (Engine.invert_warnings)
    warnings: list[str] = field(default_factory=list)
    # sequence: the GPU time of its renders so far by phase (ms: "encode", "denoise", "decode"), summed over
    # its engine calls as X-Timings-Ms gives one render's; where a job's time went, from the server's side
    phase_ms: dict[str, float] | None = None
    # -- runtime only (not persisted) ---------------------------------------------------------------
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    spec: JobSpec | None = field(default=None, repr=False)  # None for the records read back at startup
    run: JobRun = field(default_factory=JobRun, repr=False)
    last_preview: dict[str, Any] | None = field(default=None, repr=False)
    persisted_at: float = field(default=0.0, repr=False)
    deleted: bool = field(default=False, repr=False)  # its folder is gone: a late save must not bring it back

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
        "warnings",
        "phase_ms",
    )

    def public(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self._PUBLIC}
        d["frames_done"] = list(self.frames_done)
        d["warnings"] = list(self.warnings)
        d["phase_ms"] = None if self.phase_ms is None else dict(self.phase_ms)
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

    Thread-safe: the worker thread updates progress while handlers create, read, cancel and delete.
    ``keep_jobs``: how many finished jobs are kept (``--keep-jobs``); None keeps them all.
    """

    def __init__(self, jobs_dir: Path, hub: EventHub, *, keep_jobs: int | None = None) -> None:
        if keep_jobs is not None and keep_jobs < MIN_KEEP_JOBS:
            raise ValueError(f"keep_jobs must be at least {MIN_KEEP_JOBS}, got {keep_jobs}")
        self.dir = Path(jobs_dir)
        self.hub = hub
        self.keep_jobs = keep_jobs
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self.storage_problem: str | None = None  # why new jobs are refused (read-only / full data dir)
        self._removals: list[threading.Thread] = []  # threads removing pruned jobs' files (see prune)

    # -- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Read every job record; mark those that were queued/running as interrupted. Returns their ids.
        Then remove what a crash left of deleted jobs and prune the finished jobs beyond ``keep_jobs``.

        Never fails on an unwritable data dir: the records are read, and ``storage_problem`` says why
        new jobs are refused."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-probe"
            atomic_write_bytes(probe, b"ok", fsync=False)
            probe.unlink()
            self.storage_problem = None
        except OSError as exc:
            self.storage_problem = storage_error(self.dir, exc).message
            log.warning("the jobs folder is not writable: %s", self.storage_problem)
        for trash in self.dir.glob(DELETING_PREFIX + "*"):
            self._remove_folder(trash)  # a delete that a crash cut short: the job was gone already
        for folder in self._unrecorded_job_folders():
            log.info("removing %s: a job whose creation a crash cut short (it was never accepted)", folder)
            self._remove_folder(folder)
        interrupted = []
        for rec_path in sorted(self.dir.glob("*/job.json")):
            if rec_path.parent.name.startswith(DELETING_PREFIX):
                continue  # a deleted job's folder that could not be removed (a read-only data dir)
            for tmp in [*rec_path.parent.glob(".*.tmp"), *rec_path.parent.glob("reference_*.bin")]:
                try:  # leftovers of a crash mid-write, references of jobs that will not run
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
            if job.kind == "sequence":
                self._frames_from_disk(job)
            if job.state in ACTIVE_STATES:
                job.state = "interrupted"
                job.error = "the server stopped while this job was queued or running; submit it again"
                job.updated = now_iso()
                self._try_persist(job, fsync=True)
                interrupted.append(job.job_id)
            self._jobs[job.job_id] = job
        if interrupted:
            log.info("marked %d job(s) interrupted after a restart: %s", len(interrupted), ", ".join(interrupted))
        self.prune()
        return interrupted

    def _unrecorded_job_folders(self) -> list[Path]:
        """Job folders without a record: ``create`` saves the record (fsync) before the 202, so such a
        folder (its request, maybe reference images) belongs to a request that was never answered."""
        try:
            entries = list(self.dir.iterdir())
        except OSError:
            return []
        return [p for p in entries if _JOB_ID.match(p.name) and p.is_dir() and not (p / "job.json").exists()]

    def job_dir(self, job: Job | str) -> Path:
        return self.dir / (job if isinstance(job, str) else job.job_id)

    def _frames_from_disk(self, job: Job) -> None:
        """frames_done = the frame files present, in the request's order (a SIGKILL may have cut the
        record's last save; a frame file exists only once it is complete)."""
        d = self.job_dir(job)
        try:
            present = {int(m.group(1)) for p in d.iterdir() if (m := _FRAME_FILE.match(p.name))}
        except OSError:
            return
        try:
            order = [int(f) for f in json.loads((d / "request.json").read_text()).get("frames") or []]
        except (OSError, ValueError, TypeError, AttributeError):
            order = []
        frames = [f for f in order if f in present] or sorted(present)
        if frames != job.frames_done:
            job.frames_done = frames
            job.step = max(job.step, len(frames))

    def _persist(self, job: Job, *, fsync: bool) -> None:
        job.persisted_at = time.monotonic()
        data = json.dumps(job.public(), indent=1).encode()
        atomic_write_bytes(self.job_dir(job) / "job.json", data, fsync=fsync)

    def _try_persist(self, job: Job, *, fsync: bool) -> bool:
        """Save the record; a full or read-only disk is logged, not raised (the state lives on in memory
        and the next change retries). A deleted job is not saved (call with the lock held)."""
        if job.deleted:
            return False
        try:
            self._persist(job, fsync=fsync)
            return True
        except OSError as exc:
            job.persisted_at = 0.0  # retry at the next progress report
            log.warning("could not save job %s (%s): %s", job.job_id, job.state, exc)
            return False

    # -- creation and lookup -------------------------------------------------------------------------
    def create(
        self,
        kind: str,
        total: int,
        request: dict[str, Any],
        *,
        name: str | None = None,
        request_id: str | None = None,
        spec: JobSpec | None = None,
        references: list[bytes] | None = None,
        max_active: int | None = None,
        warnings: list[str] | None = None,
        check: Callable[[], None] | None = None,
    ) -> Job:
        """Create and save a job; ``references`` (image files) are spooled into its folder.

        The checks that depend on the other jobs (one active inversion per name: 409; at most
        ``max_active`` active jobs: 429), ``check`` (raises ApiError to refuse: an inversion's name must
        not be an object's) and the reservation happen under one lock, so concurrent requests cannot
        both pass them, and an inversion of the same name that finishes meanwhile is seen either as
        active or as its object (the worker lists the object before it marks the job done)."""
        if self.storage_problem and not self._storage_ok_again():
            raise ApiError(INSUFFICIENT_STORAGE, self.storage_problem)
        job = Job(
            job_id=uuid.uuid4().hex,
            kind=kind,
            total=total,
            name=name,
            request_id=request_id,
            spec=spec,
            warnings=list(warnings or []),
        )
        with self._lock:
            active = [j for j in self._jobs.values() if j.state in ACTIVE_STATES]
            if kind == "invert" and name is not None and self.inversion_active(name):
                raise ApiError(409, f"an inversion for {name!r} is already queued or running: pick another name")
            if check is not None:
                check()
            if max_active is not None and len(active) >= max_active:
                raise ApiError(
                    429,
                    f"too many active jobs ({max_active}): wait for some to finish or "
                    "cancel them (POST /v1/jobs/{id}/cancel)",
                )
            self._jobs[job.job_id] = job  # reserved: the name and the slot are taken from here on
        d = self.job_dir(job)
        try:
            d.mkdir(parents=True, exist_ok=False)
            atomic_write_bytes(d / "request.json", json.dumps(request).encode(), fsync=False)
            for i, data in enumerate(references or []):
                atomic_write_bytes(d / reference_filename(i), data, fsync=False)
            job.run.references = len(references or [])
            with self._lock:
                self._persist(job, fsync=True)
        except OSError as exc:
            with self._lock:
                self._jobs.pop(job.job_id, None)
            shutil.rmtree(d, ignore_errors=True)
            raise storage_error(self.dir, exc) from None
        return job

    def _storage_ok_again(self) -> bool:
        """Re-probe a data dir that was unwritable (space freed, remounted read-write)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-probe"
            atomic_write_bytes(probe, b"ok", fsync=False)
            probe.unlink()
        except OSError:
            return False
        self.storage_problem = None
        return True

    def read_references(self, job: Job) -> list[bytes]:
        """The spooled image files of an inversion, in request order."""
        d = self.job_dir(job)
        return [(d / reference_filename(i)).read_bytes() for i in range(job.run.references)]

    def drop_references(self, job: Job) -> None:
        """Remove an inversion's spooled images (it has ended: they are not needed again)."""
        n, job.run.references = job.run.references, 0
        for i in range(n):
            try:
                (self.job_dir(job) / reference_filename(i)).unlink()
            except OSError:
                pass

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

    def reservations(self) -> AbstractContextManager[Any]:
        """Hold while changing what :meth:`create`'s checks read (the library's object names, as a
        rename does): no job is reserved meanwhile, so a check made under it stays true."""
        return self._lock

    def inversion_active(self, name: str) -> bool:
        """Whether an inversion that will add an object called ``name`` is queued or running."""
        with self._lock:
            return any(j.kind == "invert" and j.name == name and j.state in ACTIVE_STATES for j in self._jobs.values())

    # -- deletion and retention ---------------------------------------------------------------------
    def delete(self, job_id: str) -> None:
        """Delete a finished job: its record and its folder (frames included). 404 for an unknown id,
        409 for a queued or running job, 507 when its folder cannot be moved (a read-only data dir)."""
        with self._lock:  # the worker cannot end (or save) the job while it is checked and detached
            job = self.get(job_id)
            if not job.terminal:
                raise ApiError(
                    409,
                    f"job {job.job_id} is {job.state}: cancel it first (POST /v1/jobs/{job.job_id}/cancel), wait "
                    f"until it ends (its event stream ends; GET /v1/jobs/{job.job_id} shows its final state), then "
                    "delete it",
                )
            try:
                trash = self._detach(job)
            except OSError as exc:
                raise ApiError(
                    INSUFFICIENT_STORAGE,
                    f"cannot remove job {job.job_id} from the server's data directory {self.dir} "
                    f"({exc.strerror or type(exc).__name__}): make it writable, then delete the job again",
                ) from None
        if trash is not None:
            self._remove_folder(trash)
        log.info("deleted job %s (%s %s)", job.job_id, job.kind, job.state)

    def prune(self, *, background: bool = False) -> list[str]:
        """Delete the oldest finished jobs (by ``updated``, then ``created``) beyond ``keep_jobs``;
        queued and running jobs are never pruned. Returns the ids deleted.

        The jobs are gone (their folders renamed) on return; with ``background`` their files are removed
        by a thread, so that the worker, which prunes when a job ends, does not spend the next render's
        time removing an old sequence's frames (a removal cut short is finished at the next start)."""
        if self.keep_jobs is None:
            return []
        pruned: list[str] = []
        trash: list[Path] = []
        with self._lock:
            finished = [j for j in self._jobs.values() if j.terminal]
            finished.sort(key=lambda j: (j.updated, j.created), reverse=True)
            for job in finished[self.keep_jobs :]:
                try:
                    folder = self._detach(job)
                except OSError as exc:  # a read-only data dir: kept, and tried again at the next prune
                    log.warning("could not prune job %s: %s", job.job_id, exc)
                    continue
                pruned.append(job.job_id)
                if folder is not None:
                    trash.append(folder)
        if trash and background:
            remover = threading.Thread(target=self._remove_folders, args=(trash,), name="viewneti-prune", daemon=True)
            with self._lock:
                self._removals = [t for t in self._removals if t.is_alive()] + [remover]
            remover.start()
        else:
            self._remove_folders(trash)
        if pruned:
            log.info(
                "pruned %d finished job(s) beyond the newest %d (--keep-jobs): %s",
                len(pruned),
                self.keep_jobs,
                ", ".join(pruned),
            )
        return pruned

    def _detach(self, job: Job) -> Path | None:
        """Rename the job's folder to its ``.deleting-`` name (atomic) and forget the job (call with the
        lock held). Returns the renamed folder to remove, None when there was no folder. Raises OSError
        (the job stays) when the folder cannot be renamed."""
        trash = self.dir / f"{DELETING_PREFIX}{job.job_id}"
        try:
            os.rename(self.job_dir(job), trash)
            moved: Path | None = trash
        except FileNotFoundError:
            moved = None  # removed by hand already: only the record in memory is left
        job.deleted = True
        del self._jobs[job.job_id]
        return moved

    def wait_for_removals(self, timeout: float | None = None) -> bool:
        """Wait for the background removals of pruned jobs' files; True when none is left running."""
        with self._lock:
            removals = list(self._removals)
        for remover in removals:
            remover.join(timeout)
        return not any(t.is_alive() for t in removals)

    def _remove_folders(self, folders: list[Path]) -> None:
        for folder in folders:
            self._remove_folder(folder)

    @staticmethod
    def _remove_folder(folder: Path) -> None:
        """Remove a deleted job's folder; what cannot be removed now is removed at the next startup."""
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s (removed at the next start): %s", folder, exc)

    # -- updates (worker thread and handlers) --------------------------------------------------------
    def set_state(self, job: Job, state: str, **fields: Any) -> None:
        """Change the state, publish it, then save it: subscribers learn the outcome even when the disk
        is full (the save failure is logged; GET reports the in-memory state)."""
        with self._lock:
            job.state = state
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated = now_iso()
        if state in TERMINAL_STATES:
            self.drop_references(job)
        self._publish_state(job, state)
        with self._lock:
            self._try_persist(job, fsync=state in TERMINAL_STATES)
        if state in TERMINAL_STATES:
            self.prune(background=True)

    def _publish_state(self, job: Job, state: str) -> None:
        if state == "running":
            self._publish_progress(job)
        elif state == "done":
            self.hub.publish(job.job_id, "done", {"result": job.result})
        elif state == "error":
            self.hub.publish(job.job_id, "error", {"error": job.error})
        elif state in ("cancelled", "interrupted"):
            self.hub.publish(job.job_id, state, {})

    def progress(self, job: Job, p: Progress) -> None:
        """Record and publish a progress report (its preview goes through :meth:`preview`); a report
        without a phase keeps the job's last one."""
        with self._lock:
            job.step = int(p.step)
            job.loss = None if p.loss is None else float(p.loss)
            job.eta_s = None if p.eta_s is None else float(p.eta_s)
            if p.phase is not None:
                job.phase = p.phase
            job.updated = now_iso()
        self._publish_progress(job)
        with self._lock:
            if time.monotonic() - job.persisted_at >= PERSIST_INTERVAL_S:
                self._try_persist(job, fsync=False)

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
        self.progress(job, Progress(step=len(job.frames_done), total=job.total, eta_s=eta_s))

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
            "warnings": list(job.warnings),
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
