"""Request bodies for the backend, built from the scene on the main thread (bpy reads only).

``POST /v1/render`` (Render View, Live), ``POST /v1/jobs/sequence`` (Render Camera Path) and
``POST /v1/jobs/invert`` (Invert Reference), with what decides their size and sampling: the model's
native size or the panel's Resolution (capped by the backend), and the model's steps/guidance or the
panel's own. Nothing here talks to the network.
"""

import os

from . import camera_pose, images, limits


def render_resolution(settings):
    """Long side of requests: the model's native size (from health) with Model's Size on, else Resolution."""
    if settings.use_native_resolution and settings.model_native_size > 0:
        return settings.model_native_size
    return settings.resolution


def request_resolution(settings):
    """The long side to request: :func:`render_resolution` (the model's size or the panel's Resolution),
    at most the backend's max_size (GET /v1/health; a CPU backend allows far less than a GPU one), so a
    default setting never earns a 422."""
    cap, wanted = settings.backend_max_size, render_resolution(settings)
    return min(wanted, cap) if cap >= limits.MIN_SIZE else wanted


def size_warning(settings):
    """The panel's warning for a resolution far above the model's native size ("" if none or unknown)."""
    # the server says the same in X-Warnings (limits.SIZE_WARNING_FACTOR is the backend's value)
    native, long_side = settings.model_native_size, request_resolution(settings)
    if native <= 0 or long_side <= limits.SIZE_WARNING_FACTOR * native:
        return ""
    return (
        f"{long_side} px is {long_side / native:.0f}x the model's {native} px: slow, with repeated detail. "
        "Turn on Model's Size."
    )


def add_sampling(request, settings, live=False):
    """Steps and guidance of a render/sequence request.

    With "Use Model Defaults" on, they are left out so the backend applies its model's recommended
    values; only live mode sends the model's live steps (known from the last status refresh). With it
    off, the panel's values are sent."""
    if settings.use_model_defaults:
        if live and settings.model_live_steps > 0:
            request["steps"] = settings.model_live_steps
        return request
    request["steps"] = settings.steps
    request["guidance"] = round(settings.guidance, 4)
    return request


def session_key():
    """This Blender's live-render session: the backend cuts an older request of the same session."""
    return f"blender-{os.getpid()}"


def _seed(settings, camera_obj):
    cam_settings = camera_obj.data.viewneti
    return cam_settings.seed if cam_settings.use_seed else settings.seed


def build_render_request(scene, camera_obj, live=False):
    """The POST /v1/render body for a camera at the scene's current frame."""
    settings = scene.viewneti
    request = {
        "camera": camera_pose.camera_payload(camera_obj, settings.anchor, scene.render, request_resolution(settings)),
        "seed": _seed(settings, camera_obj),
        "session": session_key(),
    }
    add_sampling(request, settings, live=live)
    if settings.object_name:
        request["object"] = settings.object_name
    return request


def path_frames(scene):
    """The frames Render Camera Path renders: the scene's range or the panel's own."""
    settings = scene.viewneti
    if settings.use_scene_range:
        start, end, step = scene.frame_start, scene.frame_end, scene.frame_step
    else:
        start, end, step = settings.frame_start, settings.frame_end, settings.frame_step
    if end < start:
        raise ValueError(f"The frame range {start}–{end} is empty: make End ≥ Start.")
    if start < 0:
        raise ValueError("Frame numbers name the files, so they must be ≥ 0: move the range to start at 0 or later.")
    return list(range(start, end + 1, max(1, step)))


def build_sequence_request(scene, camera_obj):
    """The camera's pose at every frame of the range (moves the playhead, then puts it back)."""
    settings = scene.viewneti
    frames = path_frames(scene)
    if len(frames) > limits.MAX_SEQUENCE_FRAMES:
        raise ValueError(
            f"{len(frames)} frames is too many for one job (max {limits.MAX_SEQUENCE_FRAMES}): raise Step or shorten the range."
        )
    original = scene.frame_current
    cameras = []
    try:
        for frame in frames:
            scene.frame_set(frame)
            cameras.append(
                camera_pose.camera_payload(camera_obj, settings.anchor, scene.render, request_resolution(settings))
            )
    finally:
        scene.frame_set(original)
    request = {"cameras": cameras, "frames": frames, "seed": _seed(settings, camera_obj)}
    add_sampling(request, settings)
    if settings.object_name:
        request["object"] = settings.object_name
    return request


def build_invert_request(scene):
    """The POST /v1/jobs/invert body; its image is encoded later, on the InvertJob's thread."""
    settings = scene.viewneti
    camera_obj = settings.invert_camera
    if camera_obj is None:
        raise ValueError("Pick the camera that took the reference image.")
    name = settings.invert_name.strip()
    if not limits.NAME_RE.fullmatch(name):  # fullmatch: the pattern's "$" would let "name\n" through
        raise ValueError(f"Object name '{name}' is not valid: {limits.NAME_RULE}.")
    # pixels are copied here (bpy, main thread); converting and encoding them is the job thread's work
    if settings.invert_source == "IMAGE":
        if settings.invert_image is None:
            raise ValueError("Pick a reference image datablock.")
        data = images.image_snapshot(settings.invert_image)
    else:
        if not settings.invert_filepath:
            raise ValueError("Pick a reference image file.")
        data = images.read_image_snapshot(settings.invert_filepath)
    # the reference camera's pose at the current frame, at the image's own size when known
    size = images.snapshot_size(data)
    camera = camera_pose.camera_payload(camera_obj, settings.anchor, scene.render, request_resolution(settings))
    if size is not None:
        frame_w, frame_h = size
        camera["fov_y_deg"] = camera_pose.camera_fov_y_deg(camera_obj.data, frame_w, frame_h)
        camera["width"], camera["height"] = camera_pose.render_size(
            frame_w, frame_h, min(max(frame_w, frame_h), limits.MAX_SIZE)
        )
    request = {
        "name": name,
        "images": [data],  # bytes or a PixelSnapshot: InvertJob encodes it off the main thread
        "cameras": [camera],
        "seed": settings.seed,
        "preview_every": settings.invert_preview_every,
    }
    if settings.invert_steps > 0:  # 0: the backend's default for its device (health: invert_steps)
        request["steps"] = settings.invert_steps
    return request
