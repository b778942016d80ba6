"""The add-on's life while Blender runs: the session state, asynchronous calls and the one timer.

Network work runs on worker threads; its results meet bpy here, on the main thread. In the UI the
timer calls :func:`tick`; where no timer ever fires (headless Blender, ``bpy.app.background``)
:attr:`Session.synchronous` makes every path run inline instead. The parts the timer drives (live
mode, the running job, a backend started from Blender) each own their state and a ``step()``; the
session holds them and knows nothing else about them. Nothing here runs at import or register time.
"""

import queue
import threading
from typing import TYPE_CHECKING

import bpy
from bpy.app.handlers import persistent

from .status import report_error, scene_named

if TYPE_CHECKING:  # the parts import this module: their types are for the checker only
    from .backend import LocalBackend
    from .job_control import ActiveJob
    from .renders import LiveMode

TICK_FAST = 0.05  # while live mode or a job needs attention
TICK_SLOW = 0.5  # while only a started backend process is being watched


class Session:
    """Everything that lives only while Blender runs (threads, processes); never saved.

    ``synchronous``: True runs every call inline and drives jobs to their end inside the operator that
    started them, for headless Blender (where timers never fire; the default there). False hands work to
    threads and applies results in :func:`tick`, which Blender's timer calls in the UI, and which a script
    or test that sets False where no timer fires calls itself.
    """

    def __init__(self, synchronous=None):
        self.synchronous: bool = bpy.app.background if synchronous is None else synchronous
        self.calls = queue.Queue()  # (callback, value, error) from run_async workers
        self.calls_pending = 0
        self.live: LiveMode | None = None
        self.job: ActiveJob | None = None
        self.backend: LocalBackend | None = None

    def parts(self):
        """The parts the timer drives, in the order it steps them."""
        return [part for part in (self.live, self.job, self.backend) if part is not None]


SESSION = Session()


def synchronous():
    """True where work runs inline (see :class:`Session`)."""
    return SESSION.synchronous


def run_async(work, done):
    """Run `work()` off the main thread, then `done(value, error)` on it.

    Synchronous sessions (headless Blender has no event loop) run both inline (same code path, no
    timer) and return the error, if any; otherwise this returns None at once.
    """
    if SESSION.synchronous:
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


def in_scene(scene_name, apply):
    """A `run_async` callback for work whose result belongs to a scene: the error goes to the scene's
    status line, else ``apply(scene, value)`` runs (its return value is returned); nothing happens once
    the scene is gone."""

    def done(value, error):
        target = scene_named(scene_name)
        if target is None:
            return None
        if error is not None:
            report_error(target, error)
            return None
        return apply(target, value)

    return done


def drain_calls():
    """Run the callbacks of finished `run_async` calls (main thread)."""
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


def tick():
    """The only timer: finished calls, then each part's step. Returns quickly, always: the seconds
    until the next tick, or None when nothing needs watching (the timer then stops until
    :func:`ensure_timer`)."""
    try:
        drain_calls()
        for part in SESSION.parts():
            part.step()
    except Exception as exc:  # never let an exception kill the timer or reach the console only
        scene = bpy.context.scene
        if scene is not None and hasattr(scene, "viewneti"):
            report_error(scene, exc)
    intervals = [i for i in (part.interval() for part in SESSION.parts()) if i is not None]
    if SESSION.calls_pending > 0:
        intervals.append(TICK_FAST)
    return min(intervals) if intervals else None


def ensure_timer():
    if not SESSION.synchronous and not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_FAST, persistent=True)


def timer_running():
    return bpy.app.timers.is_registered(tick)


def shutdown():
    """Stop live mode, cancel the running job, stop the timer; used by unregister() and before a
    file loads. A backend started from Blender keeps running (Stop Backend, or unregister, ends it)."""
    for part in (SESSION.live, SESSION.job):
        if part is not None:
            part.shutdown()
    SESSION.live = SESSION.job = None
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    while not SESSION.calls.empty():
        SESSION.calls.get_nowait()
    SESSION.calls_pending = 0


@persistent
def on_load_pre(*_args):
    shutdown()
