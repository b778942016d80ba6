"""Operators: thin wrappers that validate, start work through the add-on's modules and report.

None of them blocks the UI: network work runs on threads and lands through the timer. In a
synchronous session (headless Blender, ``bpy.app.background``: no timer) the same work runs to
completion inside `execute`. Failures go to the panel's status line and a WARNING report (an ERROR report would raise
in scripts); no exception leaves an operator.
"""

import bpy

from . import backend, connection, export, images, job_control, library, renders, session
from .properties import prefs
from .status import report_error, set_status, tag_redraw


def _active_camera(context):
    camera = context.scene.camera if context.scene else None
    return camera if camera is not None and camera.type == "CAMERA" else None


def _fail(op, scene, exc):
    report_error(scene, exc)
    op.report({"WARNING"}, scene.viewneti.status_message)
    return {"CANCELLED"}


def _done(op, error):
    """Result of an operator whose work may already be finished (headless) or still running (UI)."""
    if error is not None:
        op.report({"WARNING"}, str(error))
        return {"CANCELLED"}
    return {"FINISHED"}


class VIEWNETI_OT_refresh_status(bpy.types.Operator):
    """Ask the backend for its status and the list of object tokens"""

    bl_idname = "viewneti.refresh_status"
    bl_label = "Refresh"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        scene = context.scene
        try:
            error = connection.refresh_backend(scene)
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_render_view(bpy.types.Operator):
    """Render what the model sees from the active camera and show it behind the camera"""

    bl_idname = "viewneti.render_view"
    bl_label = "Render View"

    @classmethod
    def poll(cls, context):
        if _active_camera(context) is None:
            cls.poll_message_set("The scene has no active camera: select one and press Ctrl+Numpad 0")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        try:
            error = renders.render_view(scene, _active_camera(context))
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_toggle_live(bpy.types.Operator):
    """Re-render whenever the active camera stops moving (latest pose wins)"""

    bl_idname = "viewneti.toggle_live"
    bl_label = "Live"

    @classmethod
    def poll(cls, context):
        if not renders.live_running() and _active_camera(context) is None:
            cls.poll_message_set("The scene has no active camera: select one and press Ctrl+Numpad 0")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        try:
            if renders.live_running():
                renders.stop_live()
                set_status(scene, "Live stopped")
                return {"FINISHED"}
            error = renders.start_live(scene)
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_render_path(bpy.types.Operator):
    """Render every frame of the active camera's path to numbered PNGs and show them as a sequence"""

    bl_idname = "viewneti.render_path"
    bl_label = "Render Camera Path"

    @classmethod
    def poll(cls, context):
        if _active_camera(context) is None:
            cls.poll_message_set("The scene has no active camera: select one and press Ctrl+Numpad 0")
            return False
        if job_control.job_running():
            cls.poll_message_set("A ViewNeTI job is running: wait for it or cancel it")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        try:
            error = job_control.start_sequence(scene, _active_camera(context))
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_invert_reference(bpy.types.Operator):
    """Fit a new object token to the reference image seen from its camera (takes a while; cancellable)"""

    bl_idname = "viewneti.invert_reference"
    bl_label = "Invert Reference"

    @classmethod
    def poll(cls, context):
        settings = context.scene.viewneti
        if job_control.job_running():
            cls.poll_message_set("A ViewNeTI job is running: wait for it or cancel it")
            return False
        if settings.invert_camera is None:
            cls.poll_message_set("Pick the camera that took the reference image")
            return False
        if settings.invert_source == "IMAGE" and settings.invert_image is None:
            cls.poll_message_set("Pick the reference image")
            return False
        if settings.invert_source == "FILE" and not settings.invert_filepath:
            cls.poll_message_set("Pick the reference image file")
            return False
        if not settings.invert_name.strip():
            cls.poll_message_set("Give the new object a name")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        try:
            error = job_control.start_invert(scene)
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_cancel_job(bpy.types.Operator):
    """Stop the running job on the backend; frames already written are kept"""

    bl_idname = "viewneti.cancel_job"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if not job_control.job_running():
            cls.poll_message_set("No ViewNeTI job is running")
            return False
        return True

    def execute(self, context):
        try:
            job_control.cancel_job()
        except Exception as exc:
            return _fail(self, context.scene, exc)
        return {"FINISHED"}


class VIEWNETI_OT_clear_background(bpy.types.Operator):
    """Remove the ViewNeTI background from the active camera (the images stay in the file)"""

    bl_idname = "viewneti.clear_background"
    bl_label = "Clear Background"
    bl_options = {"REGISTER", "UNDO"}  # edits camera data synchronously: undoable

    @classmethod
    def poll(cls, context):
        camera = _active_camera(context)
        if camera is None or images.background_slot(camera.data, create=False) is None:
            cls.poll_message_set("The active camera shows no ViewNeTI background")
            return False
        return True

    def execute(self, context):
        camera = _active_camera(context)
        if camera is None:  # poll() saw one, but the context can change before execute()
            self.report({"WARNING"}, "No active camera: select a camera object first")
            return {"CANCELLED"}
        images.clear_camera_background(camera.data)
        return {"FINISHED"}


def _user_object(context):
    """The selected object token if it is one the backend lets users change (not built in)."""
    settings = context.scene.viewneti
    item = settings.objects.get(settings.object_name) if settings.object_name else None
    return item if item is not None and not item.builtin else None


def _poll_user_object(cls, context):
    settings = context.scene.viewneti
    if not settings.object_name:
        cls.poll_message_set("Pick an object under Object first")
        return False
    item = settings.objects.get(settings.object_name)
    if item is None:
        cls.poll_message_set("The backend does not list this object: press Refresh")
        return False
    if item.builtin:
        cls.poll_message_set("Built-in objects come with the model and cannot be changed")
        return False
    return True


class VIEWNETI_OT_delete_object(bpy.types.Operator):
    """Delete the selected object token from the backend's library (built-in objects stay)"""

    bl_idname = "viewneti.delete_object"
    bl_label = "Delete Object"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return _poll_user_object(cls, context)

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        scene = context.scene
        try:
            error = library.delete_object(scene, scene.viewneti.object_name)
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_rename_object(bpy.types.Operator):
    """Give the selected object token a new name on the backend"""

    bl_idname = "viewneti.rename_object"
    bl_label = "Rename Object"
    bl_options = {"INTERNAL"}

    new_name: bpy.props.StringProperty(
        name="New Name", description="Letters, digits, _ and - (must not be taken)", default=""
    )

    @classmethod
    def poll(cls, context):
        return _poll_user_object(cls, context)

    def invoke(self, context, event):
        self.new_name = context.scene.viewneti.object_name
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        scene = context.scene
        try:
            error = library.rename_object(scene, scene.viewneti.object_name, self.new_name)
        except Exception as exc:
            return _fail(self, scene, exc)
        return _done(self, error)


class VIEWNETI_OT_start_backend(bpy.types.Operator):
    """Start a local backend with the command set in the add-on preferences"""

    bl_idname = "viewneti.start_backend"
    bl_label = "Start Backend"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if backend.backend_running():
            cls.poll_message_set("The backend started from Blender is running")
            return False
        if not prefs(context).backend_command.strip():
            cls.poll_message_set("Set the backend's start command in the add-on preferences")
            return False
        return True

    def execute(self, context):
        try:
            backend.start_backend(context.scene)
        except Exception as exc:
            return _fail(self, context.scene, exc)
        return {"FINISHED"}


class VIEWNETI_OT_stop_backend(bpy.types.Operator):
    """Stop the backend that was started from Blender (frees its GPU memory)"""

    bl_idname = "viewneti.stop_backend"
    bl_label = "Stop Backend"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if not backend.backend_running():
            cls.poll_message_set("No backend was started from Blender")
            return False
        return True

    def execute(self, context):
        backend.stop_backend()
        set_status(context.scene, "Backend stopped", "DOWN")
        return {"FINISHED"}


def _export_running():
    return export.ACTIVE is not None and not export.ACTIVE.finished


class VIEWNETI_OT_export_views(bpy.types.Operator):
    """Render views of each chosen object around its anchor, with masks, into transforms.json folders to train a view-mapper on (viewneti pretrain)"""

    bl_idname = "viewneti.export_views"
    bl_label = "Export Training Views"

    @classmethod
    def poll(cls, context):
        props = context.scene.viewneti.export
        if _export_running():
            cls.poll_message_set("An export is running: wait for it or cancel it")
            return False
        if props.source == "COLLECTION" and props.collection is None:
            cls.poll_message_set("Pick the collection whose objects to export")
            return False
        if props.source == "SELECTED" and not any(export.renderable(o) for o in context.selected_objects):
            cls.poll_message_set("Select the objects to export (meshes, curves, ...)")
            return False
        return True

    def _start(self, context):
        props = context.scene.viewneti.export
        try:
            job = export.build_job(context, props)
        except ValueError as exc:
            props.state, props.message = "error", str(exc)
            self.report({"WARNING"}, str(exc))
            return None
        export.ACTIVE = self._job = job
        export.sync(props, job)
        return job

    def _end(self, context):
        job, export.ACTIVE = self._job, None
        try:
            export.sync(context.scene.viewneti.export, job)
        except (ReferenceError, AttributeError):
            pass  # the file was closed meanwhile
        tag_redraw()
        if job.state != "done":
            self.report({"WARNING"}, job.message)
            return {"CANCELLED"}
        self.report({"INFO"}, job.message)
        return {"FINISHED"}

    def execute(self, context):
        """Headless Blender and scripts: the whole export, here (no timer would ever drive it)."""
        job = self._start(context)
        if job is None:
            return {"CANCELLED"}
        props = context.scene.viewneti.export
        try:
            job.run(on_progress=lambda j: export.sync(props, j))
        finally:
            if not job.finished:  # an exception escaped run(): leave nothing half-written
                job.cancel()
        return self._end(context)

    def invoke(self, context, event):
        """In the UI: one render per timer tick, progress in the panel; Esc or Cancel stops it."""
        if session.synchronous():
            return self.execute(context)
        if self._start(context) is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.02, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        elif event.type == "TIMER" and not job.finished:
            job.step()
            export.sync(context.scene.viewneti.export, job)
            tag_redraw()
        if job.finished:
            context.window_manager.event_timer_remove(self._timer)
            return self._end(context)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        """Blender ends modal operators itself on file load and quit: stop the export cleanly."""
        self._job.cancel()
        context.window_manager.event_timer_remove(self._timer)
        export.ACTIVE = None


class VIEWNETI_OT_cancel_export(bpy.types.Operator):
    """Stop the running export: the object in progress is discarded, finished objects are kept"""

    bl_idname = "viewneti.cancel_export"
    bl_label = "Cancel Export"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if not _export_running():
            cls.poll_message_set("No export is running")
            return False
        return True

    def execute(self, context):
        job = export.ACTIVE
        if job is not None:
            job.cancel()
            export.sync(context.scene.viewneti.export, job)
        return {"FINISHED"}


CLASSES = (
    VIEWNETI_OT_refresh_status,
    VIEWNETI_OT_render_view,
    VIEWNETI_OT_toggle_live,
    VIEWNETI_OT_render_path,
    VIEWNETI_OT_invert_reference,
    VIEWNETI_OT_cancel_job,
    VIEWNETI_OT_clear_background,
    VIEWNETI_OT_delete_object,
    VIEWNETI_OT_rename_object,
    VIEWNETI_OT_start_backend,
    VIEWNETI_OT_stop_backend,
    VIEWNETI_OT_export_views,
    VIEWNETI_OT_cancel_export,
)
