"""What the panel says: the status line, any failure turned into it, redraws, timings for people.

Main thread only (bpy). Every result the add-on applies reports through here, so a failure always
ends in the panel's own words, never only in the console.
"""

import bpy

from .client import BackendError, BackendNotReady, BackendUnavailable


def scene_named(name):
    """The scene called `name`, or None once it is gone (a result may arrive after the user deleted it)."""
    return bpy.data.scenes.get(name) if name else None


def tag_redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


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


def format_seconds(seconds):
    """Timings for people: '0.72 s', '41 s', '3 min 20 s'."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
