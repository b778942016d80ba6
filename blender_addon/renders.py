"""Render View and Live: the active camera's render, packed into an image and shown behind the camera.

Render View renders once; Live (a :class:`LiveMode` part of the session) re-renders whenever the
camera has been still for the Live Delay, newest pose first, and once the camera stays still for the
Refine Delay after that, renders the pose once more as Render View would (the timing is
`live.LiveController`, which knows no bpy). Both ask the backend for its model's size first if no
health check was done yet.
"""

import bpy

from . import connection, images
from .camera_pose import pose_key
from .client import LIVE_ACCEPT, Superseded
from .live import LiveController
from .properties import prefs
from .requests import build_render_request
from .session import SESSION, TICK_FAST, ensure_timer, run_async
from .status import format_seconds, report_error, scene_named, set_status, tag_redraw


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
    if settings.last_timings and result.timings_ms.get("eager") == 1:  # X-Timings-Ms: no compiled graph yet
        settings.last_timings += " (uncompiled: the backend is still compiling this size)"
    settings.backend_state = "OK"
    warnings = list(getattr(result, "warnings", None) or [])
    settings.last_warnings = "\n".join(warnings)
    width, height = request["camera"]["width"], request["camera"]["height"]
    settings.status_message = f"Rendered {camera_obj.name} ({width}×{height}, seed {result.seed})" + (
        f". Warning: {warnings[0]}" if warnings else ""
    )
    tag_redraw()
    return image


def show_render(scene, camera_name, request, result, error):
    """A finished render of the camera (Render View, Live): shown, or its failure in the status line.

    A superseded render is dropped silently: a newer render of this session replaces it."""
    if isinstance(error, Superseded):
        return
    if error is not None:
        report_error(scene, error)
        return
    camera = bpy.data.objects.get(camera_name)
    if camera is not None:  # None: deleted while it rendered
        apply_render(scene, camera, request, result)


def render_view(scene, camera_obj):
    """Render the camera once; in the UI the image arrives later through the timer.

    Returns the error of a synchronous session's render (None when it worked, or in the UI)."""
    camera_name = camera_obj.name

    def render(target):
        camera = bpy.data.objects.get(camera_name)
        if camera is None:
            return None  # deleted while the backend was asked for its size
        request = build_render_request(target, camera)
        client = connection.make_client()
        scene_name = target.name

        def done(result, error):
            target = scene_named(scene_name)
            if target is not None:
                show_render(target, camera_name, request, result, error)

        set_status(target, f"Rendering {camera_name}…")
        return run_async(lambda: client.render(request), done)

    return connection.when_backend_known(scene, render)


class LiveMode:
    """Live mode as a part of the session: the controller and the scene whose active camera it follows."""

    REFINING = "Live: refining…"
    HELD = (
        "Live paused: the backend is compiling the training graph of the inversion (its first at this "
        "size; up to a few minutes). The preview resumes when that is done"
    )

    def __init__(self, controller, scene_name):
        self.controller = controller
        self.scene_name = scene_name
        self._refining = False
        self._status_before_refining = ""
        self._status_before_held = ""

    @property
    def running(self):
        return not self.controller.stopped

    def step(self):
        """One tick: observe the active camera, start a due render or refinement, show finished ones."""
        scene = scene_named(self.scene_name)
        if scene is None or not scene.viewneti.live:
            stop_live()
            return
        camera = scene.camera
        if camera is not None and camera.type == "CAMERA":
            try:
                request = build_render_request(scene, camera, live=True)
                key = (
                    (camera.name,)
                    + pose_key(request["camera"])
                    + (request.get("object", ""), request["seed"], request.get("steps"), request.get("guidance"))
                )
                if not self.controller.is_current(key):  # the refinement's request: built once per new pose
                    full = build_render_request(scene, camera)  # what Render View sends
                    self.controller.observe(key, (camera.name, request), (camera.name, full))
            except ValueError as exc:
                set_status(scene, f"Live paused: {exc}")
        self._hold_while_training_compiles(scene)
        for result in self.controller.tick():
            camera_name, request = result.request
            show_render(scene, camera_name, request, result.value, result.error)
        self._show_refining(scene)

    def _hold_while_training_compiles(self, scene):
        """Send nothing while this session's inversion compiles its training graph: the backend renders
        on the thread that compiles, so a live request would wait minutes (and time out) instead of a
        frame. The latest pose goes once the job reports its first training step."""
        job = SESSION.job.job if SESSION.job is not None else None
        held = job is not None and not job.finished and job.phase == "compiling"
        if held == self.controller.held:
            return
        self.controller.held = held
        if held:
            self._status_before_held = scene.viewneti.status_message
            set_status(scene, self.HELD)
        elif scene.viewneti.status_message == self.HELD:
            set_status(scene, self._status_before_held)

    def _show_refining(self, scene):
        """ "Live: refining…" while the current pose's refinement runs; if the camera moves on before it
        arrives, the status it replaced comes back (once it arrives, apply_render says "Rendered")."""
        refining = self.controller.refining
        if refining == self._refining:
            return
        self._refining = refining
        if refining:
            self._status_before_refining = scene.viewneti.status_message
            set_status(scene, self.REFINING)
        elif scene.viewneti.status_message == self.REFINING:
            set_status(scene, self._status_before_refining)

    def interval(self):
        return TICK_FAST if self.running else None

    def shutdown(self):
        self.controller.stop()
        scene = scene_named(self.scene_name)
        if scene is not None:
            scene.viewneti.live = False


def live_running():
    return SESSION.live is not None and SESSION.live.running


def start_live(scene):
    """Turn Live on for the scene's active camera (after a health check if none was done yet)."""
    stop_live()

    def start(target):
        client = connection.make_client()
        controller = LiveController(
            lambda item: client.render(item[1], accept=LIVE_ACCEPT),
            debounce=prefs().live_debounce,
            max_in_flight=2,
            refine=lambda item: client.render(item[1]),  # a still, as Render View asks for it
            refine_delay=prefs().refine_delay,
        )
        SESSION.live = LiveMode(controller, target.name)
        target.viewneti.live = True
        set_status(target, "Live: move the active camera")
        ensure_timer()

    return connection.when_backend_known(scene, start)


def stop_live():
    live, SESSION.live = SESSION.live, None
    if live is not None:
        live.shutdown()


def live_step():
    """Drive live mode one tick, as the timer does (scripts and tests where no timer fires)."""
    if SESSION.live is not None:
        SESSION.live.step()
