"""Job state machines against a scripted client: reconnects, dedupe, backend loss, early cancel."""

import base64
import os
import threading
import time

import pytest

from blender_addon.client import BackendUnavailable, SSEEvent, StreamSilent
from blender_addon.images import encode_png
from blender_addon.jobs import InvertJob, SequenceJob

pytestmark = pytest.mark.blender

PNG = encode_png(2, 2, bytes(16))


class ScriptedClient:
    """`streams` is a list of event lists (or `GatedStream`s); an Exception instance in a list is raised
    at that point."""

    def __init__(self, streams, states=("running",), total=3):
        self.streams = list(streams)
        self.states = list(states)
        self.answer = {"job_id": "j1", "total": total}  # the 202 body
        self.cancelled = []
        self.downloads = []
        self.submitted = threading.Event()
        self.gate: threading.Event | None = None

    def submit_sequence(self, request):
        return self._submit()

    def submit_invert(self, request):
        return self._submit()

    def _submit(self):
        if self.gate is not None:
            self.gate.wait(5)
        self.submitted.set()
        return dict(self.answer)

    def events(self, job_id, timeout=None, max_silence=None):
        script = self.streams.pop(0) if self.streams else [BackendUnavailable("down")]
        if isinstance(script, GatedStream):  # a stream the test hands out event by event
            return script

        def gen():
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield SSEEvent(*item)

        if script and isinstance(script[0], BackendUnavailable):
            raise script[0]
        return Stream(gen())

    def job(self, job_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(state, Exception):
            raise state
        return state if isinstance(state, dict) else {"state": state}

    def get_bytes(self, url):
        self.downloads.append(url)
        return PNG

    def frame(self, job_id, frame):
        return self.get_bytes(f"/v1/jobs/{job_id}/frames/{frame}")

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        self.states = ["cancelled"]  # as a backend's job record says once the job has stopped
        return {"state": "cancelling"}


class Stream:
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self.it

    def close(self):
        pass


def frame_event(i, f):
    return ("frame", {"index": i, "frame": f, "url": f"/v1/jobs/j1/frames/{f}"})


def test_sequence_survives_a_stalled_stream_and_writes_each_frame_once(tmp_path):
    client = ScriptedClient(
        [
            [frame_event(0, 10), ("progress", {"step": 1, "total": 3}), TimeoutError("stalled")],
            # the server replays the state on reconnect: frame 10 again, then the rest
            [frame_event(0, 10), frame_event(1, 11), frame_event(2, 12), ("done", {"result": {}})],
        ]
    )
    request = {"cameras": [{}, {}, {}], "frames": [10, 11, 12]}
    job = SequenceJob(client, request, str(tmp_path)).start()
    assert job.wait(5)
    assert job.state == "done" and job.step == 3
    assert sorted(os.listdir(tmp_path)) == ["frame_000010.png", "frame_000011.png", "frame_000012.png"]
    assert len(client.downloads) == 3  # replayed frame 10 not fetched twice


def test_sequence_fetches_frames_the_stream_skipped(tmp_path):
    client = ScriptedClient([[("done", {"result": {}})]])
    job = SequenceJob(client, {"cameras": [{}, {}], "frames": [1, 2]}, str(tmp_path)).start()
    assert job.wait(5) and job.state == "done"
    assert sorted(job.written) == [1, 2]


def test_losing_the_backend_ends_the_job_with_a_message(tmp_path):
    down = BackendUnavailable("No ViewNeTI backend is running at http://x")
    client = ScriptedClient([[("progress", {"step": 1, "total": 3}), ConnectionResetError()]], states=[down])
    job = InvertJob(client, {"name": "a", "steps": 3}, max_reconnects=2)
    job.start()
    assert job.wait(20)
    assert job.state == "error" and "No ViewNeTI backend" in job.message


def test_cancel_before_the_server_answered_is_sent_after_submit(tmp_path):
    client = ScriptedClient([])
    client.gate = threading.Event()
    job = InvertJob(client, {"name": "a", "steps": 3}).start()
    job.cancel()  # no job id yet
    assert job.cancelling and client.cancelled == []
    client.gate.set()
    assert job.wait(5)
    assert job.state == "cancelled" and client.cancelled == ["j1"]


class GatedStream:
    """Hands out one event each time the test opens the gate, so the test sees every state in between."""

    def __init__(self, events):
        self.events = events
        self.gate = threading.Semaphore(0)

    def __iter__(self):
        for item in self.events:
            assert self.gate.acquire(timeout=5), "the test did not ask for the next event"
            yield SSEEvent(*item)

    def close(self):
        pass


def test_invert_follows_the_phase_of_progress_events():
    """ "compiling" (step 0, no ETA) then "training"; an event without a phase keeps the last one."""
    progress = [
        {"step": 0, "total": 3, "loss": None, "eta_s": None, "phase": None, "state": "queued"},
        {"step": 0, "total": 3, "loss": None, "eta_s": None, "phase": "compiling", "state": "running"},
        {"step": 1, "total": 3, "loss": 0.5, "eta_s": 2.0, "phase": "training", "state": "running"},
        {"step": 2, "total": 3, "loss": 0.4, "eta_s": 1.0},
    ]
    stream = GatedStream([("progress", p) for p in progress] + [("done", {"result": {"name": "a", "steps": 3}})])
    client = ScriptedClient([stream])
    job = InvertJob(client, {"name": "a", "steps": 3}).start()
    seen = []
    for _ in progress:
        stream.gate.release()
        deadline = time.monotonic() + 5
        while not job.poll():  # what the timer does: apply the worker's news on the main thread
            assert time.monotonic() < deadline, "no progress arrived"
            time.sleep(0.005)
        seen.append((job.step, job.phase, job.eta_s))
    stream.gate.release()
    assert job.wait(5) and job.state == "done"
    assert seen == [(0, None, None), (0, "compiling", None), (1, "training", 2.0), (2, "training", 1.0)]


def test_invert_warnings_come_from_the_answer_events_and_record():
    """An inversion carries `warnings` as a sequence does (202 answer, progress events, job record)."""
    far = "the camera is 9.00 units from the anchor: outside the view-mapper's trained distances"
    client = ScriptedClient([[("progress", {"step": 1, "total": 3, "warnings": [far]}), ("done", {"result": {}})]])
    client.answer["warnings"] = [far]
    job = InvertJob(client, {"name": "a", "steps": 3}).start()
    assert job.wait(5) and job.state == "done" and job.warnings == [far]
    # a record polled after a silent stream carries them too
    client = ScriptedClient([[StreamSilent("quiet")]], states=[{"state": "done", "warnings": [far], "result": {}}])
    job = InvertJob(client, {"name": "a", "steps": 3}).start()
    assert job.wait(5) and job.state == "done" and job.warnings == [far]


def test_invert_previews_progress_and_result():
    preview = base64.b64encode(PNG).decode()
    client = ScriptedClient(
        [
            [
                ("progress", {"step": 1, "total": 3, "loss": 0.5, "eta_s": 2.0}),
                ("preview", {"step": 1, "png_base64": preview}),
                ("preview", {"step": 2, "png_base64": "not base64!"}),  # ignored, not fatal
                ("done", {"result": {"name": "a", "steps": 3}}),
            ]
        ]
    )
    job = InvertJob(client, {"name": "a", "steps": 3}).start()
    assert job.wait(5)
    assert job.state == "done" and job.result is not None and job.result["name"] == "a"
    assert job.preview_png == PNG and job.preview_serial == 1 and job.loss == 0.5
