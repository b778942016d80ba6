"""Which backend the add-on talks to, and what that backend said about itself.

:func:`make_client` applies the preferences (URL, timeout, access token; Blender's Online Access for
a backend on another machine). A health check (``GET /v1/health`` plus the object list) is mirrored
into the scene: model and device, the model's native size and sampling defaults, the backend's caps;
the request builders and the panel read them there. A compiling backend (CUDA) is asked to compile
this scene's render size in the background right away, so the first render at it is not the slow one.
"""

import bpy

from . import camera_pose, requests
from .client import BackendError, Client, is_loopback_url
from .properties import prefs
from .session import SESSION, in_scene, run_async
from .status import set_status, tag_redraw

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
    launched = SESSION.backend
    token = launched.token if launched is not None and launched.token and launched.running() else p.token
    return Client(p.backend_url, timeout=p.timeout, token=token)


def fetch_backend(client):
    """Worker side of a status refresh: health + object list."""
    return client.health(timeout=min(client.timeout, 10.0)), client.objects()


def _positive_int(value):
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


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


def apply_backend(scene, info, objects, announce=True):
    """Mirror a health check's answers into the scene (main thread)."""
    settings = scene.viewneti
    settings.backend_state = "OK"
    settings.backend_info = f"{info.get('base_model', '?')} on {info.get('device', '?')} · v{info.get('version', '?')}"
    apply_sampling_defaults(settings, info.get("sampling_defaults"))
    settings.backend_max_size = _positive_int(info.get("max_size"))
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
    compile_scene_size(scene, info.get("compiled_shapes"), info.get("sequence_batch"))
    tag_redraw()


def shape_label(width, height, views=1):
    """A render shape as the backend names it (``WIDTHxHEIGHT[xVIEWS]``, GET /v1/health compiled_shapes)."""
    return f"{width}x{height}" + (f"x{views}" if views != 1 else "")


def scene_shapes(scene, sequence_batch):
    """The render shapes this scene asks for at its current size: one view per call (Render View, Live)
    and, on a backend that batches sequences, ``sequence_batch`` views per call (Render Camera Path)."""
    long_side = requests.request_resolution(scene.viewneti)
    width, height = camera_pose.render_size(*camera_pose.scene_frame_size(scene.render), long_side)
    return [(width, height, views) for views in dict.fromkeys((1, max(1, sequence_batch)))]


def compile_state_text(width, height, state):
    """The panel's line about the scene's size on a compiling backend."""
    size = f"{width}×{height}"
    if state == "ready":
        return f"{size}: compiled, renders at full speed"
    if state in ("compiling", "queued"):
        return (
            f"{size}: {state} on the backend; until it is ready renders at this size run uncompiled "
            "(slower). Refresh to check."
        )
    if state == "failed":
        return f"{size}: the backend could not compile it; renders at this size run uncompiled (slower)"
    return ""


def compile_scene_size(scene, compiled_shapes, sequence_batch=None):
    """Ask a compiling backend (``compiled_shapes`` from GET /v1/health; None: it does not compile) to
    compile this scene's render shapes it has not compiled or queued yet, in the background, and say in
    the panel how the scene's size stands. Returns the error of a synchronous session's request."""
    settings = scene.viewneti
    settings.backend_compiles = isinstance(compiled_shapes, dict)
    if not settings.backend_compiles:
        settings.compile_state = ""
        return None
    try:
        settings.backend_sequence_batch = max(1, int(sequence_batch or 1))
        shapes = scene_shapes(scene, settings.backend_sequence_batch)
    except (TypeError, ValueError):  # a bad batch or an empty frame: nothing to ask for
        settings.compile_state = ""
        return None
    known = {}
    for state in ("ready", "queued", "failed"):
        for label in compiled_shapes.get(state) or ():
            known[str(label)] = state
    if compiled_shapes.get("compiling"):
        known[str(compiled_shapes["compiling"])] = "compiling"
    width, height, _ = shapes[0]
    settings.compile_state = compile_state_text(width, height, known.get(shape_label(width, height), "queued"))
    todo = [shape for shape in shapes if shape_label(*shape) not in known]
    if not todo:
        return None
    client = make_client()

    def ask():
        return [client.compile_shape(*shape) for shape in todo]

    def apply(target, answers):
        state = answers[0].get("status") if todo[0] == shapes[0] and isinstance(answers[0], dict) else None
        if state is not None:
            target.viewneti.compile_state = compile_state_text(width, height, state)
        tag_redraw()

    return run_async(ask, in_scene(scene.name, apply))


def refresh_backend(scene, announce=True, then=None):
    """Check the backend and reload the object list (async in the UI, inline in a synchronous session),
    then call ``then(scene)`` if given. Returns the error, or what ``then`` returned, of a synchronous
    session's check; else None."""
    client = make_client()
    outcome = []

    def apply(target, value):
        apply_backend(target, *value, announce=announce)
        if then is not None:
            outcome.append(then(target))

    if announce:
        set_status(scene, "Checking backend…")
    error = run_async(lambda: fetch_backend(client), in_scene(scene.name, apply))
    return error if error is not None else (outcome[0] if outcome else None)


def backend_known(settings):
    """True once a health check has told this scene about its backend (``backend_info`` is written by
    :func:`apply_backend` only), so the model's native size is known if the backend reports one."""
    return settings.model_native_size > 0 or bool(settings.backend_info)


def when_backend_known(scene, then):
    """Call ``then(scene)`` once the scene knows its backend: at once, or after a health check if none
    was done yet, so that a first render uses the model's native size instead of the Resolution fallback.

    Returns what ``then`` returned (or the health check's error) where the session is synchronous, else None.
    """
    if backend_known(scene.viewneti):
        return then(scene)
    set_status(scene, "Asking the backend for its model's size…")
    return refresh_backend(scene, announce=False, then=then)
