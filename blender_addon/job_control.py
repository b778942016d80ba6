"""Render Camera Path and Invert Reference as session jobs: start, mirror into the scene, finish.

The job itself (`jobs.SequenceJob`, `jobs.InvertJob`) runs on its own thread and knows no bpy; the
:class:`ActiveJob` part of the session polls it each tick, mirrors its state into ``Scene.viewneti``
(the panel reads it there, and a saved file keeps a record of the last job) and applies previews
and the result on the main thread. One job at a time. In a synchronous session (headless Blender)
the operator that starts a job drives it to its end.
"""

import os
import tempfile
import time

import bpy

from . import connection, images
from .client import BackendError, BackendUnavailable
from .jobs import InvertJob, SequenceJob
from .properties import prefs
from .requests import build_invert_request, build_sequence_request
from .session import SESSION, TICK_FAST, ensure_timer
from .status import report_error, scene_named, set_status, tag_redraw


class JobNotDone(Exception):
    """A job driven to its end in a synchronous session ended otherwise than done; the text says how."""


class ActiveJob:
    """The running job as a part of the session: the job, where its results go, the last preview shown."""

    def __init__(self, job, scene_name, camera_name=""):
        self.job = job
        self.scene_name = scene_name
        self.camera_name = camera_name
        self.preview_serial = 0

    def step(self):
        """One tick: apply what the job reported; previews and the final result land in the scene."""
        job = self.job
        scene = scene_named(self.scene_name)
        changed = job.poll()
        if scene is None:
            job.stop()
            SESSION.job = None
            return
        if isinstance(job, InvertJob) and job.preview_serial != self.preview_serial and job.preview_png:
            self.preview_serial = job.preview_serial
            try:
                images.store_png(f"ViewNeTI preview {job.name}", job.preview_png, scene=scene)
            except ValueError:
                pass
        if changed:
            sync_job(scene, job)
        if job.finished:
            SESSION.job = None
            finish_job(scene, job, self.camera_name)

    def interval(self):
        return TICK_FAST

    def shutdown(self):
        """Before a file loads or the add-on unloads: its frames or object would have nowhere to go."""
        if not self.job.finished:
            self.job.cancel()
        self.job.stop()


def active_job():
    """The job the session runs (until its end has been applied to the scene), or None."""
    return SESSION.job.job if SESSION.job is not None else None


def job_running():
    job = active_job()
    return job is not None and not job.finished


def job_step():
    """Drive the running job one tick, as the timer does (scripts and tests where no timer fires)."""
    if SESSION.job is not None:
        SESSION.job.step()


def output_folder(settings):
    """Absolute output folder; ``//`` paths of an unsaved file go to the temp folder."""
    raw = settings.output_dir.strip()
    if not raw:
        return images.default_output_dir(bpy.data.filepath)
    if raw.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), raw[2:].strip("/\\") or "viewneti_frames")
    return os.path.normpath(bpy.path.abspath(raw))


def start_job(scene, job, camera_obj=None):
    """Remember the job, mirror it into the scene, start its worker and the timer."""
    if job_running():
        raise ValueError("Another ViewNeTI job is running: cancel it first.")
    SESSION.job = ActiveJob(job, scene.name, camera_obj.name if camera_obj is not None else "")
    job.start()
    sync_job(scene, job)
    ensure_timer()
    return job


def _run_if_synchronous(job, timeout):
    """A synchronous session has no timer: drive the job to its end here; its failure is returned."""
    if not SESSION.synchronous:
        return None
    run_job_blocking(job, timeout)
    return None if job.state == "done" else JobNotDone(job.message)


def start_sequence(scene, camera_obj):
    """Render Camera Path for the camera (after a health check if none was done yet).

    Returns the failure of a synchronous session's job, else None."""
    camera_name = camera_obj.name

    def start(target):
        camera = bpy.data.objects.get(camera_name)
        if camera is None:
            raise ValueError(f"The camera '{camera_name}' was deleted: pick a camera and try again.")
        request = build_sequence_request(target, camera)
        job = SequenceJob(connection.make_client(), request, output_folder(target.viewneti))
        start_job(target, job, camera)
        set_status(target, f"Rendering {job.total} frames to {job.output_dir}…")
        return _run_if_synchronous(job, timeout=prefs().timeout * max(1, job.total))

    return connection.when_backend_known(scene, start)


def start_invert(scene):
    """Invert Reference with the panel's image, camera and name.

    Returns the failure of a synchronous session's job, else None."""
    job = InvertJob(connection.make_client(), build_invert_request(scene))
    start_job(scene, job)
    steps = job.total or scene.viewneti.model_invert_steps
    set_status(scene, f"Inverting '{job.name}' ({steps or 'the backend default'} steps)…")
    return _run_if_synchronous(job, timeout=max(prefs().timeout, (steps or 0) * 10.0))


def cancel_job():
    job = active_job()
    if job is not None and not job.finished:
        job.cancel()
        scene = scene_named(SESSION.job.scene_name) if SESSION.job is not None else None
        if scene is not None:
            sync_job(scene, job)


def sync_job(scene, job):
    """Mirror the job into scene properties so the panel (and a saved file) shows it."""
    s = scene.viewneti
    s.job_kind = job.kind
    s.job_id = job.job_id
    s.job_state = "cancelling" if job.cancelling else job.state
    s.job_step = job.step
    s.job_total = job.total
    s.job_loss = float(job.loss) if isinstance(job.loss, (int, float)) else 0.0
    s.job_eta = float(job.eta_s) if isinstance(job.eta_s, (int, float)) else 0.0
    s.job_phase = job.phase or ""
    s.job_message = job.message
    s.job_warnings = "\n".join(job.warnings)
    tag_redraw()


def _with_warning(message, warnings):
    """The status line: the job's message, and its first warning (all of them are in the job's box)."""
    return message + (f". Warning: {warnings[0]}" if warnings else "")


def finish_job(scene, job, camera_name=""):
    """Apply the end of a job: frames behind the camera, the new object selected, or what went wrong."""
    settings = scene.viewneti
    if job.state == "error":
        report_error(scene, (BackendUnavailable if job.backend_down else BackendError)(job.message))
        return
    if job.state != "done":
        set_status(scene, job.message)
        return
    if isinstance(job, SequenceJob):
        camera = bpy.data.objects.get(camera_name)
        if job.written:
            first, last = min(job.written), max(job.written)
            image = images.load_image_sequence(
                job.written[first], first, last, f"ViewNeTI {camera_name} sequence", scene=scene
            )
            if camera is not None and camera.type == "CAMERA":
                images.set_camera_sequence_background(camera.data, image, first, last)
                camera.data.viewneti.sequence = image
        set_status(scene, _with_warning(job.message, job.warnings))
    elif isinstance(job, InvertJob):
        entry = job.result if isinstance(job.result, dict) else {"name": job.name}
        name = str(entry.get("name") or job.name)
        if name not in settings.objects:
            item = settings.objects.add()
            item.name = name
            item.steps = int(entry.get("steps") or job.total)
        settings.object_name = name
        set_status(scene, _with_warning(f"New object '{name}' is ready and selected", job.warnings))
        connection.refresh_backend(scene, announce=False)


def run_job_blocking(job, timeout):
    """Drive the job to its end on this thread, as the timer would in the UI (synchronous sessions)."""
    deadline = time.monotonic() + timeout
    while active_job() is job and time.monotonic() < deadline:
        job_step()
        time.sleep(0.02)
    if active_job() is job:
        job.cancel()
        job.wait(10.0)
        job_step()
    return job
