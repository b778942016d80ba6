"""Long-running backend jobs (camera-path sequences, reference inversion) as poll-driven state machines.

A worker thread submits the job, follows its Server-Sent Events stream (reconnecting when the
stream stalls: the server replays the state on connect) and does the blocking side work that needs
no bpy: encoding reference pixels, downloading frames and writing them atomically. Everything the
UI needs is handed to the main thread through a queue and applied by `poll()`, which the timer (or
a headless test) calls.

A stream that completes no event for `max_silence` seconds (keep-alives only, or one line trickled
without end) is dropped for polling ``GET /v1/jobs/{id}`` (progress and frames come from the job
record), and reopened once the record shows a change: a job can't stay "running" in the panel after
the backend has finished it. Cancel closes the stream at once and polls the record until the backend
confirms; one that does not confirm within `cancel_timeout` seconds is let go (the job ends here).
"""

import base64
import binascii
import http.client
import os
import queue
import threading
import time
import uuid

from .client import BackendError, BackendUnavailable, StreamSilent, check_png

TERMINAL = ("done", "error", "cancelled", "interrupted")
FRAME_PATTERN = "frame_{:06d}.png"


class Job:
    """Common life cycle: pending -> submitting -> running -> done | error | cancelled | interrupted."""

    kind = ""

    def __init__(
        self,
        client,
        request,
        stream_timeout=30.0,
        max_reconnects=5,
        max_silence=60.0,
        poll_s=1.0,
        cancel_timeout=60.0,
    ):
        self.client = client
        self.request = request
        self.stream_timeout = stream_timeout
        self.max_reconnects = max_reconnects
        self.max_silence = max_silence  # seconds without a complete event before polling the job instead
        self.poll_s = poll_s
        self.cancel_timeout = cancel_timeout  # seconds the backend has to confirm a cancel
        self.state = "pending"
        self.job_id = ""
        self.step = 0
        self.total = 0
        self.loss = None
        self.eta_s = None
        self.phase = None  # invert: "compiling" (first inversion at this size on the backend), "training"
        self.message = ""
        self.warnings = []  # what the backend runs the job despite (202 answer, events, job record)
        self.result = None
        self.backend_down = False  # the job failed because the backend stopped answering
        self._updates = queue.Queue()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._stream = None
        self._thread = None
        self._cancel_deadline = None  # worker: when an unconfirmed cancel ends the job here

    # -- main thread -------------------------------------------------------------------------

    @property
    def finished(self):
        return self.state in TERMINAL

    @property
    def cancelling(self):
        return self._cancel.is_set() and not self.finished

    def start(self):
        self.state = "submitting"
        self._thread = threading.Thread(target=self._run, name=f"viewneti-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def cancel(self):
        """Ask the server to stop the job; returns at once, the job ends `cancelled` via `poll()`.

        The event stream is closed now (a stuck one must not hold the job): the worker follows the job
        record until the backend confirms."""
        if self.finished or self._cancel.is_set():
            return
        self._cancel.set()
        self.message = "Cancelling…"
        if self.job_id:
            threading.Thread(target=self._send_cancel, name="viewneti-cancel", daemon=True).start()
        self._close_stream()

    def stop(self):
        """Stop following the job without touching it on the server (add-on unloading)."""
        self._stop.set()
        self._close_stream()

    def _close_stream(self):
        stream = self._stream
        if stream is not None:
            stream.close()

    def poll(self):
        """Apply what the worker reported; True if anything changed (redraw the panel)."""
        changed = False
        while True:
            try:
                name, data = self._updates.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            self._apply(name, data)

    def wait(self, timeout=None, interval=0.02):
        """Blocking poll loop for headless Blender, where timers never fire."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if self.finished or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(interval)
        self.poll()
        return self.finished

    def _apply(self, name, data):
        warnings = data.get("warnings")
        if isinstance(warnings, list):  # on the 202 answer, every progress event and the job record
            self.warnings = [str(w) for w in warnings]
        if name == "submitted":
            self.job_id = data.get("job_id", "")
            self.total = int(data.get("total") or self.total or 0)
            if self.state == "submitting":
                self.state = "running"
        elif name == "progress":
            if self.state in ("submitting", "pending"):
                self.state = "running"
            self.step = int(data.get("step", self.step))
            self.total = int(data.get("total") or self.total)
            self.loss = data.get("loss", self.loss)
            self.eta_s = data.get("eta_s", self.eta_s)
            self.phase = data.get("phase") or self.phase
        elif name == "done":
            self.state = "done"
            self.result = data.get("result")
            self.step = self.total or self.step
            self.message = "Done"
        elif name == "error":
            self.state = "error"
            self.message = str(data.get("error") or "The job failed: see the backend's log.")
            self.backend_down = bool(data.get("backend_down"))
        elif name == "cancelled":
            self.state = "cancelled"
            self.message = str(data.get("message") or "Cancelled")
        elif name == "interrupted":
            self.state = "interrupted"
            self.message = "The backend restarted while the job ran: start it again."

    # -- worker thread -----------------------------------------------------------------------

    def _post(self, name, data=None):
        self._updates.put((name, data or {}))

    def _send_cancel(self):
        try:
            self.client.cancel(self.job_id)
        except BackendError as exc:
            self._post("error", {"error": f"Could not cancel the job: {exc}"})

    def _run(self):
        try:
            info = self._submit()
            job_id = info.get("job_id")
            if not job_id:
                raise BackendError("The backend accepted the job but returned no job id: check its version.")
            self.job_id = job_id  # read by cancel() on the main thread; a str assignment is atomic
            self._post("submitted", info)
            if self._cancel.is_set():
                self._send_cancel()
            self._follow(job_id)
        except Exception as exc:  # never let a worker die silently: the panel shows it
            if isinstance(exc, BackendError):
                message = str(exc)
            else:
                message = f"ViewNeTI add-on error ({type(exc).__name__}: {exc}); please report it."
            self._post("error", {"error": message, "backend_down": isinstance(exc, BackendUnavailable)})
            if self.job_id and not self._stop.is_set():
                try:  # nobody follows the job any more: do not let it occupy the GPU
                    self.client.cancel(self.job_id)
                except BackendError:
                    pass

    def _follow(self, job_id):
        """Read the event stream until a terminal event; a stream that stalls or breaks is reopened.

        Silence is normal (a job queued behind a long one sends nothing), so a stalled stream only
        triggers a state check; only a backend that stops answering that check ends the job here.
        After a cancel only the job record is read, until it is final or `cancel_timeout` has passed.
        """
        failures = 0
        silent = False
        last = None
        while not self._stop.is_set():
            if not silent and not self._cancel.is_set():
                try:
                    self._stream = self.client.events(job_id, timeout=self.stream_timeout, max_silence=self.max_silence)
                    if self._cancel.is_set() or self._stop.is_set():
                        self._stream.close()  # cancel() came while the stream was opening
                    for event in self._stream:
                        if self._stop.is_set():
                            return
                        if self.handle_event(event.event, event.data if isinstance(event.data, dict) else {}):
                            return
                except StreamSilent:
                    silent = True  # poll the job record until it changes
                except (BackendUnavailable, OSError, ValueError, http.client.HTTPException):
                    pass  # stalled or broken: the state check below decides what to do
                finally:
                    if self._stream is not None:
                        self._stream.close()
                        self._stream = None
            if self._stop.is_set():
                return
            try:
                state = self.client.job(job_id)
            except BackendUnavailable:
                failures += 1
                if failures > self.max_reconnects:
                    raise
                time.sleep(min(5.0, 0.5 * failures))
                continue
            failures = 0
            if state.get("state") in TERMINAL:
                self._handle_state(state)
                return
            if self._cancel.is_set():
                if self._cancel_unconfirmed(state):
                    return
                continue
            seen = (state.get("state"), state.get("step"), len(state.get("frames_done") or ()))
            if silent:
                self._handle_running_state(state)
                if last is not None and seen != last:
                    silent = False  # news on the record: the stream may be working again
                else:
                    self._stop.wait(self.poll_s)
            else:
                time.sleep(0.2)  # still running: reopen the stream (the server replays the state)
            last = seen

    def _cancel_unconfirmed(self, state):
        """While a cancel waits for the backend: progress from the record, then wait; True once the
        backend has had `cancel_timeout` seconds (the job then ends here, cancelled)."""
        if self._cancel_deadline is None:
            self._cancel_deadline = time.monotonic() + self.cancel_timeout
        self._handle_running_state(state)
        if time.monotonic() >= self._cancel_deadline:
            self._post(
                "cancelled",
                {
                    "message": f"Cancelled here: the backend did not confirm within {self.cancel_timeout:g} s "
                    "(it may still be finishing the job; see its log)"
                },
            )
            return True
        self._stop.wait(min(self.poll_s, 0.5))
        return False

    def _handle_running_state(self, state):
        """Progress from a job record (GET /v1/jobs/{id}), used while the stream is silent."""
        data = {
            k: state[k] for k in ("step", "total", "loss", "eta_s", "phase", "warnings") if state.get(k) is not None
        }
        if data:
            self.handle_event("progress", data)

    def _handle_state(self, state):
        name = state["state"]
        if name == "done":
            self.handle_event("done", {"result": state.get("result"), "warnings": state.get("warnings")})
        elif name == "error":
            self.handle_event("error", {"error": state.get("error")})
        else:
            self.handle_event(name, {})

    def handle_event(self, name, data):
        """Handle one event of the job's stream (or one derived from its record) as the worker thread does:
        its effects reach the main thread through `poll()`. True when the event ends the job.

        Public so that the backend's events can be replayed, e.g. by a test, without a server."""
        if name in ("progress", "done", "error", "cancelled", "interrupted"):
            self._post(name, data)
        return name in TERMINAL

    def _submit(self):
        raise NotImplementedError


class SequenceJob(Job):
    """Render many cameras; every frame is written as ``frame_NNNNNN.png`` into `output_dir` on arrival."""

    kind = "sequence"

    def __init__(self, client, request, output_dir, **kwargs):
        super().__init__(client, request, **kwargs)
        self.output_dir = output_dir
        frames = request.get("frames") or list(range(len(request["cameras"])))
        self.frames = [int(f) for f in frames]
        self.total = len(self.frames)
        self.written = {}  # frame number -> path, main-thread view
        self._seen = set()  # worker-side: frames already written (events replay on reconnect)
        self._sizes = {
            f: (int(c["width"]), int(c["height"]))
            for f, c in zip(self.frames, request["cameras"])
            if isinstance(c, dict) and "width" in c and "height" in c
        }

    def frame_path(self, frame):
        return os.path.join(self.output_dir, FRAME_PATTERN.format(frame))

    def _submit(self):
        os.makedirs(self.output_dir, exist_ok=True)
        return self.client.submit_sequence(self.request)

    def handle_event(self, name, data):
        if name == "frame":
            frame = int(data.get("frame", data.get("index", 0)))
            if frame not in self._seen:
                url = data.get("url") or f"/v1/jobs/{self.job_id}/frames/{frame}"
                path = self.frame_path(frame)
                write_atomic(path, self._checked(frame, self.client.get_bytes(url)))
                self._seen.add(frame)
                self._post("frame", {"frame": frame, "path": path})
            return False
        if name == "done" and not self._cancel.is_set():
            # a replayed stream may have skipped frame events: make sure every frame is on disk
            for frame in self.frames:
                if frame not in self._seen:
                    path = self.frame_path(frame)
                    write_atomic(path, self._checked(frame, self.client.frame(self.job_id, frame)))
                    self._seen.add(frame)
                    self._post("frame", {"frame": frame, "path": path})
        return super().handle_event(name, data)

    def _checked(self, frame, png):
        """The frame's PNG, refused (BackendError) unless it has the size its camera asked for."""
        check_png(png, self._sizes.get(frame), f"frame {frame}")
        return png

    def _handle_running_state(self, state):
        super()._handle_running_state(state)
        for frame in state.get("frames_done") or ():
            if isinstance(frame, int) and frame in self._sizes and frame not in self._seen:
                self.handle_event("frame", {"frame": frame})

    def _apply(self, name, data):
        if name == "frame":
            self.written[data["frame"]] = data["path"]
            self.step = max(self.step, len(self.written))
            return
        super()._apply(name, data)
        if name == "done":
            self.message = f"{len(self.written)} frames written to {self.output_dir}"
        elif name == "cancelled":
            self.message = f"Cancelled: {len(self.written)} frames kept in {self.output_dir}"


class InvertJob(Job):
    """Fit a new object token to reference image(s) + camera(s); previews arrive as PNG bytes."""

    kind = "invert"

    def __init__(self, client, request, **kwargs):
        super().__init__(client, request, **kwargs)
        self.total = int(request.get("steps") or 0)
        self.name = request.get("name", "")
        self.preview_png = None
        self.preview_step = 0
        self.preview_serial = 0  # bumps on every new preview so the UI knows to refresh

    def _submit(self):
        return self.client.submit_invert(encoded_invert_request(self.request))

    def handle_event(self, name, data):
        if name == "preview":
            try:
                png = base64.b64decode(data.get("png_base64", ""), validate=True)
                check_png(png, what="preview")  # read from its header: never decode a bomb
            except (binascii.Error, ValueError, BackendError):
                return False  # a broken preview is not worth failing the job for
            self._post("preview", {"step": data.get("step", 0), "png": png})
            return False
        return super().handle_event(name, data)

    def _apply(self, name, data):
        if name == "preview":
            self.preview_png = data["png"]
            self.preview_step = int(data.get("step", 0))
            self.preview_serial += 1
            return
        super()._apply(name, data)
        if name == "done":
            self.message = f"New object '{self.name}' is ready"


def encoded_invert_request(request):
    """The request with every image as base64 text: bytes are encoded, and objects with ``to_png()``
    (``images.PixelSnapshot``: pixels copied on the main thread) are converted here, on the job's
    worker thread, so that a large float image never blocks Blender's UI."""
    encoded = []
    for item in request.get("images", []):
        if not isinstance(item, str):
            data = item.to_png() if hasattr(item, "to_png") else bytes(item)
            item = base64.b64encode(data).decode("ascii")
        encoded.append(item)
    return {**request, "images": encoded}


def write_atomic(path, data):
    """Write a file so that readers see either nothing or all of it (temp file + rename)."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
