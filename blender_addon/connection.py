"""Which backend the add-on talks to, and what that backend said about itself.

:func:`make_client` applies the preferences (URL, timeout, access token; Blender's Online Access for
a backend on another machine). A health check (``GET /v1/health`` plus the object list) is mirrored
into the scene: model and device, the model's native size and sampling defaults, the backend's caps;
the request builders and the panel read them there.
"""

import bpy

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
    tag_redraw()


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
