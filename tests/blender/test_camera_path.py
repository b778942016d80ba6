"""Acceptance 4: Render Camera Path against the real server: numbered PNGs per frame, an image
sequence behind the camera, and a clean cancel midway."""

import os
import time

import bpy
import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


def keyframe_orbit(scene, first, last):
    camera = scene.camera
    scene.frame_set(first)
    camera.location = (7.0, -7.0, 5.0)
    camera.keyframe_insert("location", frame=first)
    camera.location = (-7.0, -7.0, 5.0)
    camera.keyframe_insert("location", frame=last)
    scene.frame_start, scene.frame_end, scene.frame_step = first, last, 1


def is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_path_writes_numbered_frames_and_sequence_background(live_scene, tmp_path):
    scene = live_scene
    keyframe_orbit(scene, 3, 5)  # three frames, numbered from 3 to check names follow frame numbers
    scene.viewneti.output_dir = str(tmp_path / "frames")
    scene.frame_set(4)

    assert bpy.ops.viewneti.render_path() == {"FINISHED"}, scene.viewneti.status_message
    files = sorted(os.listdir(tmp_path / "frames"))
    assert files == [f"frame_{f:06d}.png" for f in range(3, 6)]
    assert all(is_png(tmp_path / "frames" / f) for f in files)
    assert scene.frame_current == 4  # the playhead is restored
    assert scene.viewneti.job_state == "done" and scene.viewneti.job_step == 3

    camera = scene.camera
    image = camera.data.viewneti.sequence
    assert image is not None and image.source == "SEQUENCE"
    (bg,) = [bg for bg in camera.data.background_images if bg.image == image]
    for frame in range(3, 6):  # scene frame f shows file frame_f
        scene.frame_set(frame)
        assert bg.image_user.frame_current == frame
        assert os.path.basename(image.filepath_from_user(image_user=bg.image_user)) == f"frame_{frame:06d}.png"
    # different poses give different frames
    contents = {(tmp_path / "frames" / f).read_bytes() for f in files}
    assert len(contents) == 3


def test_cancel_midway_keeps_written_frames_and_leaves_no_partial_files(live_scene, tmp_path, monkeypatch):
    session, job_control = addon_module("session"), addon_module("job_control")
    monkeypatch.setattr(session.SESSION, "synchronous", False)  # drive the job tick by tick, as the timer does
    scene = live_scene
    keyframe_orbit(scene, 1, 400)
    out = tmp_path / "frames"
    scene.viewneti.output_dir = str(out)

    assert job_control.start_sequence(scene, scene.camera) is None
    job = job_control.active_job()
    assert job is not None
    deadline = time.monotonic() + 300
    while len(job.written) < 1:
        job_control.job_step()
        assert not job.finished, job.message
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert scene.viewneti.job_state == "running" and scene.viewneti.job_step >= 1  # progress lands in the scene
    assert bpy.ops.viewneti.cancel_job() == {"FINISHED"}
    assert scene.viewneti.job_state == "cancelling"
    while job_control.active_job() is job:
        job_control.job_step()
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert job.state == "cancelled" and scene.viewneti.job_state == "cancelled"
    assert "Cancelled" in scene.viewneti.status_message
    files = sorted(os.listdir(out))
    assert files == sorted(os.path.basename(p) for p in job.written.values())  # nothing partial or hidden
    assert 1 <= len(files) < 400
    assert all(is_png(out / f) for f in files)
    assert addon_module("connection").make_client().job(job.job_id)["state"] == "cancelled"
    assert scene.camera.data.viewneti.sequence is None  # an incomplete path is not loaded
