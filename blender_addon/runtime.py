"""The main-thread shell: session state, the one timer, and applying results to bpy data.

Network work runs on worker threads (`run_async`, `live.LiveController`, `jobs.Job`); this module
is where their results meet bpy, always on the main thread: from the timer in the UI, or inline
when Blender runs headless (``bpy.app.background``: timers never fire there, so every path has a
synchronous twin). Nothing here runs at import or register time.
"""

import os
import queue
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.parse

import bpy
from bpy.app.handlers import persistent

from . import camera_pose, images, limits
from .client import (
    DEFAULT_URL,
    LIVE_ACCEPT,
    BackendError,
    BackendNotReady,
    BackendUnavailable,
    Client,
    Superseded,
    is_loopback_url,
)
from .jobs import InvertJob, Job, SequenceJob
from .live import LiveController

TICK_FAST = 0.05  # while live mode or a job needs attention
TICK_SLOW = 0.5  # while only a started backend process is being watched

_sync_override = None  # tests set False to drive the UI's asynchronous path by calling _tick()


def synchronous():
    """True where no timer will ever fire (headless Blender): work then runs inline."""
    return bpy.app.background if _sync_override is None else _sync_override


class _Session:
    """Everything that lives only while Blender runs (threads, processes); never saved."""

    def __init__(self):
        self.calls = queue.Queue()  # (callback, value, error) from run_async workers
        self.calls_pending = 0
        self.live: LiveController | None = None
        self.live_scene = ""
        self.job: Job | None = None
        self.job_scene = ""
        self.job_camera = ""
        self.preview_serial = 0
        self.backend_proc: subprocess.Popen | None = None
        self.backend_log = ""
        self.backend_scene = ""
        self.backend_next_check = 0.0
        self.backend_checking = False
        self.backend_token_file = ""  # where the started backend writes its --token auto token
        self.backend_token = ""  # that token, once read


SESSION = _Session()


# -- settings and status ---------------------------------------------------------------------


class _DefaultPrefs:
    """Stand-in when the add-on's preferences are unavailable (module used outside an enabled add-on)."""

    backend_url = DEFAULT_URL
    token = ""
    timeout = 120.0
    live_debounce = 0.25
    backend_command = ""
    backend_workdir = ""
    backend_token_auto = True


def prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None and addon.preferences is not None else _DefaultPrefs()


ONLINE_ACCESS_MESSAGE = (
    "The backend at {url} is on another machine and Blender's Online Access is off: enable "
    "Allow Online Access in Edit > Preferences > System, or use a backend on this machine (127.0.0.1)."
)


def online_access_allowed():
    """Blender's Internet switch (Preferences > System); False in the bpy module by default."""
    return bool(getattr(bpy.app, "online_access", False))


def make_client(context=None):
    """A client for the configured backend; a remote one only with Online Access on (loopback never needs it)."""
    p = prefs(context)
    if not is_loopback_url(p.backend_url) and not online_access_allowed():
        raise BackendError(ONLINE_ACCESS_MESSAGE.format(url=p.backend_url))
    # a backend this session started with a per-launch token is the one at the URL while it runs
    token = SESSION.backend_token if SESSION.backend_token and backend_running() else p.token
    return Client(p.backend_url, timeout=p.timeout, token=token)


def set_status(scene, message, state=None):
    settings = scene.viewneti
    if settings.status_message == message and (state is None or settings.backend_state == state):
        return  # live mode reports every tick: do not redraw for nothing
    settings.status_message = message
    if state is not None:
        settings.backend_state = state
    tag_redraw()


def report_error(scene, exc):
    """Turn any failure into the panel's status line; the state says whether the backend is up."""
    if isinstance(exc, BackendUnavailable):
        set_status(scene, str(exc), "DOWN")
    elif isinstance(exc, BackendNotReady):
        set_status(scene, str(exc), "UNKNOWN")
    elif isinstance(exc, BackendError):  # it answered, so it is up; a wrong version is still an error
        set_status(scene, str(exc), "OK" if scene.viewneti.backend_state == "OK" else "ERROR")
    elif isinstance(exc, ValueError):  # bad input on our side (camera, paths): the backend is not involved
        set_status(scene, str(exc))
    else:
        set_status(scene, f"ViewNeTI add-on error ({type(exc).__name__}: {exc}); please report it.", "ERROR")


def tag_redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def _scene(name):
    return bpy.data.scenes.get(name) if name else None


# -- asynchronous calls ----------------------------------------------------------------------


def run_async(work, done):
    """Run `work()` off the main thread, then `done(value, error)` on it.

    Headless Blender has no event loop, so there both run inline (same code path, no timer) and
    the error, if any, is returned; in the UI this returns None at once.
    """
    if synchronous():
        try:
            value, error = work(), None
        except Exception as exc:
            value, error = None, exc
        done(value, error)
        return error

    def worker():
        try:
            SESSION.calls.put((done, work(), None))
        except Exception as exc:
            SESSION.calls.put((done, None, exc))

    SESSION.calls_pending += 1
    threading.Thread(target=worker, name="viewneti-call", daemon=True).start()
    ensure_timer()
    return None


def _drain_calls():
    while True:
        try:
            done, value, error = SESSION.calls.get_nowait()
        except queue.Empty:
            return
        SESSION.calls_pending -= 1
        try:
            done(value, error)
        except Exception as exc:  # a callback bug must not kill the timer
            scene = bpy.context.scene
            if scene is not None:
                report_error(scene, exc)


# -- backend status --------------------------------------------------------------------------


def fetch_backend(client):
    """Worker side of a status refresh: health + object list."""
    return client.health(timeout=min(client.timeout, 10.0)), client.objects()


def apply_backend(scene, info, objects, announce=True):
    settings = scene.viewneti
    settings.backend_state = "OK"
    settings.backend_info = f"{info.get('base_model', '?')} on {info.get('device', '?')} · v{info.get('version', '?')}"
    apply_sampling_defaults(settings, info.get("sampling_defaults"))
    try:
        settings.backend_max_size = max(0, int(info.get("max_size") or 0))
    except (TypeError, ValueError):
        settings.backend_max_size = 0
    settings.model_native_size = _positive_int(info.get("native_size"))
    settings.model_invert_steps = _positive_int(info.get("invert_steps"))
    settings.objects.clear()
    for entry in objects:
        item = settings.objects.add()
        item.name = str(entry.get("name", ""))
        item.builtin = bool(entry.get("builtin", False))
        item.steps = int(entry.get("steps") or 0)
    if not settings.object_name and info.get("default_object"):
        settings.object_name = info["default_object"]
    if announce:
        settings.status_message = f"Connected to {info.get('base_model', 'backend')} ({len(objects)} objects)"
    tag_redraw()


def _positive_int(value):
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def render_resolution(settings):
    """Long side of requests: the model's native size (from health) with Model's Size on, else Resolution."""
    if settings.use_native_resolution and settings.model_native_size > 0:
        return settings.model_native_size
    return settings.resolution


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


def format_seconds(seconds):
    """Timings for people: '0.72 s', '41 s', '3 min 20 s'."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def apply_sampling_defaults(settings, defaults):
    """Remember the model's recommended steps/guidance (from health) for the panel and live mode."""
    steps = live_steps = 0
    guidance = 0.0
    if isinstance(defaults, dict):
        try:
            steps = max(0, int(defaults.get("steps") or 0))
            live_steps = max(0, int(defaults.get("live_steps") or 0))
            guidance = max(0.0, float(defaults.get("guidance") or 0.0))
        except (TypeError, ValueError):
            steps = live_steps = 0
            guidance = 0.0
    settings.model_steps, settings.model_live_steps, settings.model_guidance = steps, live_steps, guidance


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


def refresh_backend(scene, announce=True):
    """Check the backend and reload the object list (async in the UI, inline headless)."""
    scene_name = scene.name
    client = make_client()

    def done(value, error):
        target = _scene(scene_name)
        if target is None:
            return
        if error is not None:
            report_error(target, error)
        else:
            apply_backend(target, *value, announce=announce)

    if announce:
        set_status(scene, "Checking backend…")
    return run_async(lambda: fetch_backend(client), done)


# -- the object library ----------------------------------------------------------------------


def _library_done(scene_name, message, select=None):
    """After a library edit: the status line, the selection, and a fresh object list."""

    def done(value, error):
        target = _scene(scene_name)
        if target is None:
            return
        if error is not None:
            report_error(target, error)
            return
        settings = target.viewneti
        if select is not None:
            settings.object_name = select
        set_status(target, message)
        refresh_backend(target, announce=False)

    return done


def delete_object(scene, name):
    """Delete a user object on the backend (built-in ones are refused there); the selection is cleared."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Pick the object to delete under Object.")
    client = make_client()
    select = "" if scene.viewneti.object_name == name else None
    set_status(scene, f"Deleting '{name}'…")
    return run_async(lambda: client.delete_object(name), _library_done(scene.name, f"Deleted '{name}'", select))


def rename_object(scene, name, new_name):
    """Rename a user object on the backend (one atomic step there); the new name stays selected."""
    name, new_name = (name or "").strip(), (new_name or "").strip()
    if not name or not new_name:
        raise ValueError("Pick the object under Object and type its new name.")
    client = make_client()
    select = new_name if scene.viewneti.object_name == name else None
    set_status(scene, f"Renaming '{name}' to '{new_name}'…")
    return run_async(
        lambda: client.rename_object(name, new_name),
        _library_done(scene.name, f"Renamed '{name}' to '{new_name}'", select),
    )


# -- single renders and live mode ------------------------------------------------------------


def request_resolution(settings):
    """The long side to request: :func:`render_resolution` (the model's size or the panel's Resolution),
    at most the backend's max_size (GET /v1/health; a CPU backend allows far less than a GPU one), so a
    default setting never earns a 422."""
    cap, wanted = settings.backend_max_size, render_resolution(settings)
    return min(wanted, cap) if cap >= limits.MIN_SIZE else wanted


def session_key():
    return f"blender-{os.getpid()}"


def build_render_request(scene, camera_obj, live=False):
    """The POST /v1/render body for a camera at the scene's current frame (main thread)."""
    settings = scene.viewneti
    cam_settings = camera_obj.data.viewneti
    request = {
        "camera": camera_pose.camera_payload(camera_obj, settings.anchor, scene.render, request_resolution(settings)),
        "seed": cam_settings.seed if cam_settings.use_seed else settings.seed,
        "session": session_key(),
    }
    add_sampling(request, settings, live=live)
    if settings.object_name:
        request["object"] = settings.object_name
    return request


def image_name(camera_obj):
    return f"ViewNeTI {camera_obj.name}"


def apply_render(scene, camera_obj, request, result):
    """Pack the PNG into the camera's image and show it as the camera background."""
    image = images.store_png(image_name(camera_obj), result.png, camera_obj.data.viewneti.image, scene=scene)
    images.set_camera_background(camera_obj.data, image)
    cam_settings = camera_obj.data.viewneti
    cam_settings.image = image
    cam_settings.last_object = request.get("object", "")
    settings = scene.viewneti
    total = result.timings_ms.get("total") if isinstance(result.timings_ms, dict) else None
    settings.last_timings = format_seconds(total / 1000.0) if isinstance(total, (int, float)) else ""
    settings.backend_state = "OK"
    warnings = list(getattr(result, "warnings", None) or [])
    settings.last_warnings = "\n".join(warnings)
    width, height = request["camera"]["width"], request["camera"]["height"]
    settings.status_message = f"Rendered {camera_obj.name} ({width}×{height}, seed {result.seed})" + (
        f". Warning: {warnings[0]}" if warnings else ""
    )
    tag_redraw()
    return image


def render_view(scene, camera_obj):
    """Render the camera once; in the UI the image arrives later through the timer."""
    request = build_render_request(scene, camera_obj)
    client = make_client()
    scene_name, camera_name = scene.name, camera_obj.name

    def done(result, error):
        target = _scene(scene_name)
        camera = bpy.data.objects.get(camera_name)
        if target is None or camera is None or isinstance(error, Superseded):
            return  # superseded: a newer render of this session (live or a second click) replaces it
        if error is not None:
            report_error(target, error)
        else:
            apply_render(target, camera, request, result)

    set_status(scene, f"Rendering {camera_obj.name}…")
    return run_async(lambda: client.render(request), done)


def live_running():
    return SESSION.live is not None and not SESSION.live.stopped


def start_live(scene):
    stop_live()
    client = make_client()
    SESSION.live = LiveController(
        lambda item: client.render(item[1], accept=LIVE_ACCEPT), debounce=prefs().live_debounce, max_in_flight=2
    )
    SESSION.live_scene = scene.name
    scene.viewneti.live = True
    set_status(scene, "Live: move the active camera")
    ensure_timer()


def stop_live():
    if SESSION.live is not None:
        SESSION.live.stop()
    SESSION.live = None
    scene = _scene(SESSION.live_scene)
    if scene is not None:
        scene.viewneti.live = False
    SESSION.live_scene = ""


def live_step():
    """One live-mode tick: observe the active camera, start a due render, show finished ones."""
    controller = SESSION.live
    scene = _scene(SESSION.live_scene)
    if controller is None:
        return
    if scene is None or not scene.viewneti.live:
        stop_live()
        return
    camera = scene.camera
    if camera is not None and camera.type == "CAMERA":
        try:
            request = build_render_request(scene, camera, live=True)
        except ValueError as exc:
            set_status(scene, f"Live paused: {exc}")
        else:
            key = (
                (camera.name,)
                + camera_pose.pose_key(request["camera"])
                + (
                    request.get("object", ""),
                    request["seed"],
                    request.get("steps"),
                    request.get("guidance"),
                )
            )
            controller.observe(key, (camera.name, request))
    for result in controller.tick():
        camera_name, request = result.request
        target = bpy.data.objects.get(camera_name)
        if result.error is not None:
            report_error(scene, result.error)
        elif target is not None:
            apply_render(scene, target, request, result.value)


# -- jobs ------------------------------------------------------------------------------------


def job_running():
    return SESSION.job is not None and not SESSION.job.finished


def output_folder(settings):
    """Absolute output folder; ``//`` paths of an unsaved file go to the temp folder."""
    raw = settings.output_dir.strip()
    if not raw:
        return images.default_output_dir(bpy.data.filepath)
    if raw.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), raw[2:].strip("/\\") or "viewneti_frames")
    return os.path.normpath(bpy.path.abspath(raw))


def path_frames(scene):
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
    """Collect the camera's pose at every frame of the range (main thread, moves the playhead)."""
    settings = scene.viewneti
    frames = path_frames(scene)
    if len(frames) > 10000:
        raise ValueError(f"{len(frames)} frames is too many for one job (max 10000): raise Step or shorten the range.")
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
    cam_settings = camera_obj.data.viewneti
    request = {
        "cameras": cameras,
        "frames": frames,
        "seed": cam_settings.seed if cam_settings.use_seed else settings.seed,
    }
    add_sampling(request, settings)
    if settings.object_name:
        request["object"] = settings.object_name
    return request


def start_job(scene, job, camera_obj=None):
    """Remember the job, mirror it into the scene, start its worker and the timer."""
    if job_running():
        raise ValueError("Another ViewNeTI job is running: cancel it first.")
    SESSION.job = job
    SESSION.job_scene = scene.name
    SESSION.job_camera = camera_obj.name if camera_obj is not None else ""
    SESSION.preview_serial = 0
    job.start()
    sync_job(scene, job)
    ensure_timer()
    return job


def start_sequence(scene, camera_obj):
    request = build_sequence_request(scene, camera_obj)
    job = SequenceJob(make_client(), request, output_folder(scene.viewneti))
    return start_job(scene, job, camera_obj)


def build_invert_request(scene):
    """The POST /v1/jobs/invert body (main thread); its image is encoded later by the InvertJob."""
    settings = scene.viewneti
    camera_obj = settings.invert_camera
    if camera_obj is None:
        raise ValueError("Pick the camera that took the reference image.")
    name = settings.invert_name.strip()
    if not limits.NAME_RE.match(name):
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
            frame_w, frame_h, min(max(frame_w, frame_h), camera_pose.MAX_SIZE)
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


def start_invert(scene):
    return start_job(scene, InvertJob(make_client(), build_invert_request(scene)))


def cancel_job():
    if job_running() and SESSION.job is not None:
        SESSION.job.cancel()
        scene = _scene(SESSION.job_scene)
        if scene is not None:
            sync_job(scene, SESSION.job)


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
    s.job_warnings = "\n".join(getattr(job, "warnings", None) or [])
    tag_redraw()


def job_step():
    """Poll the running job; apply previews and the final result on the main thread."""
    job = SESSION.job
    if job is None:
        return
    scene = _scene(SESSION.job_scene)
    changed = job.poll()
    if scene is None:
        job.stop()
        SESSION.job = None
        return
    if isinstance(job, InvertJob) and job.preview_serial != SESSION.preview_serial and job.preview_png:
        SESSION.preview_serial = job.preview_serial
        try:
            images.store_png(f"ViewNeTI preview {job.name}", job.preview_png, scene=scene)
        except ValueError:
            pass
    if changed:
        sync_job(scene, job)
    if job.finished:
        SESSION.job = None
        finish_job(scene, job)


def finish_job(scene, job):
    settings = scene.viewneti
    if job.state == "error":
        report_error(scene, (BackendUnavailable if job.backend_down else BackendError)(job.message))
        return
    if job.state != "done":
        set_status(scene, job.message)
        return
    if isinstance(job, SequenceJob):
        camera = bpy.data.objects.get(SESSION.job_camera)
        if job.written:
            first, last = min(job.written), max(job.written)
            image = images.load_image_sequence(
                job.written[first], first, last, f"ViewNeTI {SESSION.job_camera} sequence", scene=scene
            )
            if camera is not None and camera.type == "CAMERA":
                images.set_camera_sequence_background(camera.data, image, first, last)
                camera.data.viewneti.sequence = image
        warnings = list(job.warnings)
        set_status(scene, job.message + (f". Warning: {warnings[0]}" if warnings else ""))
    elif isinstance(job, InvertJob):
        entry = job.result if isinstance(job.result, dict) else {"name": job.name}
        name = str(entry.get("name") or job.name)
        if name not in settings.objects:
            item = settings.objects.add()
            item.name = name
            item.steps = int(entry.get("steps") or job.total)
        settings.object_name = name
        set_status(scene, f"New object '{name}' is ready and selected")
        refresh_backend(scene, announce=False)


def run_job_blocking(job, timeout):
    """Headless: drive the job to its end on this thread, as the timer would in the UI."""
    deadline = time.monotonic() + timeout
    while SESSION.job is job and time.monotonic() < deadline:
        job_step()
        time.sleep(0.02)
    if SESSION.job is job:
        job.cancel()
        job.wait(10.0)
        job_step()
    return job


# -- local backend process -------------------------------------------------------------------


def backend_running():
    return SESSION.backend_proc is not None and SESSION.backend_proc.poll() is None


def _user_folder():
    try:
        return bpy.utils.extension_path_user(__package__, create=True)
    except (ValueError, RuntimeError):  # loaded as a legacy add-on: no extension folder
        folder = os.path.join(tempfile.gettempdir(), "viewneti")
        os.makedirs(folder, exist_ok=True)
        return folder


def _log_path():
    return os.path.join(_user_folder(), "backend.log")


def with_token_auto(args, token_file):
    """The start command plus '--token auto --token-file FILE', unless it chooses its own token."""
    if any(a == "--token" or a.startswith("--token=") for a in args):
        return args, ""
    return [*args, "--token", "auto", "--token-file", token_file], token_file


def read_backend_token():
    """The started backend's per-launch token, once it has written it (it does so before it listens)."""
    if SESSION.backend_token or not SESSION.backend_token_file:
        return SESSION.backend_token
    try:
        with open(SESSION.backend_token_file, encoding="ascii") as f:
            SESSION.backend_token = f.read().strip()
    except (OSError, ValueError):
        return ""
    return SESSION.backend_token


def start_backend(scene):
    """Start the configured backend command; the timer watches until /v1/health answers."""
    p = prefs()
    if backend_running():
        raise ValueError("The backend started from Blender is already running.")
    command = p.backend_command.strip()
    if not command:
        raise ValueError("Set the backend's start command in the add-on preferences first.")
    port = urllib.parse.urlsplit(p.backend_url if "://" in p.backend_url else "http://" + p.backend_url).port or 7860
    args = shlex.split(command.replace("{port}", str(port)))
    SESSION.backend_token, SESSION.backend_token_file = "", ""
    if getattr(p, "backend_token_auto", True):
        token_file = os.path.join(_user_folder(), f"backend-{port}.token")
        try:
            os.remove(token_file)  # never read a previous launch's token
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValueError(f"Could not remove the old token file {token_file} ({exc}).") from None
        args, SESSION.backend_token_file = with_token_auto(args, token_file)
    workdir = bpy.path.abspath(p.backend_workdir) if p.backend_workdir else None
    SESSION.backend_log = _log_path()
    with open(SESSION.backend_log, "ab") as log:
        try:
            SESSION.backend_proc = subprocess.Popen(
                args,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            raise ValueError(
                f"Could not start the backend ({exc}): check the start command in the preferences."
            ) from None
    SESSION.backend_scene = scene.name
    SESSION.backend_next_check = 0.0
    set_status(scene, f"Starting the backend (log: {SESSION.backend_log})…", "UNKNOWN")
    ensure_timer()


def stop_backend():
    """Terminate the backend process this session started (never any other process)."""
    proc, SESSION.backend_proc = SESSION.backend_proc, None
    if proc is None or proc.poll() is not None:
        return False
    proc.terminate()

    def reap():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    threading.Thread(target=reap, name="viewneti-reap", daemon=True).start()
    return True


def backend_step():
    """While a started backend boots: report when it answers or when it died."""
    proc = SESSION.backend_proc
    scene = _scene(SESSION.backend_scene)
    if proc is None or scene is None or SESSION.backend_checking:
        return
    if proc.poll() is not None:
        SESSION.backend_proc = None
        SESSION.backend_scene = ""
        set_status(scene, f"The backend exited (code {proc.returncode}): see {SESSION.backend_log}", "DOWN")
        return
    if scene.viewneti.backend_state == "OK" or time.monotonic() < SESSION.backend_next_check:
        return
    SESSION.backend_next_check = time.monotonic() + 1.0
    if SESSION.backend_token_file and not read_backend_token():
        return  # it has not written its per-launch token yet: still starting
    SESSION.backend_checking = True
    client = make_client()

    def done(value, error):
        SESSION.backend_checking = False
        target = _scene(SESSION.backend_scene)
        if target is None:
            return
        if error is None:
            apply_backend(target, *value)
        elif isinstance(error, BackendNotReady):
            set_status(target, "The backend is up and loading its model…")
        elif not isinstance(error, BackendUnavailable):  # refused = still booting; anything else matters
            report_error(target, error)

    run_async(lambda: fetch_backend(client), done)


# -- the timer -------------------------------------------------------------------------------


def _tick():
    """The only timer: drain results, drive live mode and the job. Returns quickly, always."""
    try:
        _drain_calls()
        live_step()
        job_step()
        backend_step()
    except Exception as exc:  # never let an exception kill the timer or reach the console only
        scene = bpy.context.scene
        if scene is not None and hasattr(scene, "viewneti"):
            report_error(scene, exc)
    if live_running() or SESSION.job is not None or SESSION.calls_pending > 0:
        return TICK_FAST
    if SESSION.backend_proc is not None and SESSION.backend_scene:
        return TICK_SLOW
    return None  # nothing to watch: the timer stops until the next ensure_timer()


def ensure_timer():
    if not synchronous() and not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_FAST, persistent=True)


def shutdown(cancel_job=True):
    """Stop everything this session runs; used by unregister() and before a file loads."""
    stop_live()
    job = SESSION.job
    if job is not None:
        if cancel_job and not job.finished:
            job.cancel()  # its frames would have nowhere to go
        job.stop()
        SESSION.job = None
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    while not SESSION.calls.empty():
        SESSION.calls.get_nowait()
    SESSION.calls_pending = 0


@persistent
def on_load_pre(*_args):
    shutdown(cancel_job=True)
