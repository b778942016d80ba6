"""Sidebar panels (3D Viewport > N > ViewNeTI). Drawing only reads properties: no network, no writes."""

import textwrap

import bpy

from . import backend, camera_pose, renders, requests
from .properties import prefs
from .status import format_seconds

STATE_ICONS = {"OK": "CHECKMARK", "DOWN": "ERROR", "ERROR": "ERROR", "UNKNOWN": "QUESTION"}
COMPILING_TEXT = (
    "Compiling the training graph (first inversion at this size): up to a few minutes; "
    "live renders wait until it is done"
)


def _wrapped(layout, text, context, icon="NONE"):
    """Long status messages tell the user what to do: wrap them instead of clipping them."""
    width = max(20, int((context.region.width if context.region else 300) / 7))
    lines = textwrap.wrap(text, width) or [""]
    col = layout.column(align=True)
    col.scale_y = 0.8
    for i, line in enumerate(lines):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")


def _job_box(layout, settings, kind, context):
    """Progress, numbers and Cancel for the running job of this kind (or how the last one ended)."""
    if settings.job_kind != kind or not settings.job_state:
        return
    box = layout.box()
    if settings.job_running:
        total = max(1, settings.job_total)
        unit = "frames" if kind == "sequence" else "steps"
        text = f"{settings.job_step}/{settings.job_total} {unit}"
        if settings.job_state == "cancelling":
            text = "Cancelling… " + text
        row = box.row(align=True)
        row.progress(factor=settings.job_step / total, type="BAR", text=text)
        row.operator("viewneti.cancel_job", text="", icon="CANCEL")
        details = []
        if kind == "invert" and settings.job_step:
            details.append(f"loss {settings.job_loss:.4f}")
        if settings.job_phase == "compiling":
            _wrapped(box, COMPILING_TEXT, context, icon="TIME")  # no ETA yet: say why nothing moves
        elif settings.job_eta > 0:
            details.append(f"ETA {format_seconds(settings.job_eta)}")
        if details:
            box.label(text=" · ".join(details))
    elif settings.job_message:
        icon = "CHECKMARK" if settings.job_state == "done" else "INFO"
        box.label(text=settings.job_message, icon=icon)
    for line in settings.job_warnings.splitlines():  # e.g. frames far above the model's size
        _wrapped(box, line, context, icon="ERROR")


def _sampling_rows(col, settings):
    """Use Model Defaults, then either the model's values (read-only) or the user's own."""
    col.prop(settings, "use_model_defaults")
    if settings.use_model_defaults:
        if settings.model_steps > 0:
            text = f"{settings.model_steps} steps · guidance {settings.model_guidance:g}"
            if settings.model_live_steps > 0:
                text += f" · live {settings.model_live_steps} steps"
        else:
            text = "Set by the model (Refresh to see its values)"
        col.label(text=text, icon="INFO")
    else:
        col.prop(settings, "steps")
        col.prop(settings, "guidance")


class _SidebarPanel:
    """Where every ViewNeTI panel lives: the 3D viewport's sidebar (N), tab "ViewNeTI"."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ViewNeTI"


class VIEWNETI_PT_main(_SidebarPanel, bpy.types.Panel):
    """Backend status and connection."""

    bl_label = "ViewNeTI"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.viewneti
        box = layout.box()
        row = box.row()
        row.label(
            text=settings.bl_rna.properties["backend_state"].enum_items[settings.backend_state].name,
            icon=STATE_ICONS.get(settings.backend_state, "QUESTION"),
        )
        row.operator("viewneti.refresh_status", text="", icon="FILE_REFRESH")
        box.prop(prefs(context), "backend_url", text="")
        if settings.backend_state == "OK" and settings.backend_info:
            box.label(text=settings.backend_info)
        message = settings.status_message
        if not message and settings.backend_state == "UNKNOWN":
            message = f"Press Refresh to connect to {prefs(context).backend_url}"
        if message:
            _wrapped(box, message, context)
        if backend.backend_running():
            box.operator("viewneti.stop_backend", icon="X")
        elif settings.backend_state != "OK" and prefs(context).backend_command.strip():
            box.operator("viewneti.start_backend", icon="PLAY")


class VIEWNETI_PT_view(_SidebarPanel, bpy.types.Panel):
    """What to render and how; Live and Render View."""

    bl_label = "View"
    bl_parent_id = "VIEWNETI_PT_main"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        settings = scene.viewneti
        col = layout.column()
        col.prop(settings, "anchor")
        row = col.row(align=True)
        row.prop_search(settings, "object_name", settings, "objects", icon="OBJECT_DATA")
        row.operator("viewneti.rename_object", text="", icon="GREASEPENCIL")
        row.operator("viewneti.delete_object", text="", icon="TRASH")
        camera = scene.camera if scene.camera is not None and scene.camera.type == "CAMERA" else None
        if camera is not None and camera.data.viewneti.use_seed:
            row = col.row(align=True)
            row.prop(camera.data.viewneti, "seed", text=f"Seed ({camera.name})")
            row.prop(camera.data.viewneti, "use_seed", text="", icon="CAMERA_DATA")
        else:
            row = col.row(align=True)
            row.prop(settings, "seed")
            if camera is not None:
                row.prop(camera.data.viewneti, "use_seed", text="", icon="CAMERA_DATA")
        _sampling_rows(col, settings)
        col.prop(settings, "use_native_resolution")
        if not settings.use_native_resolution or settings.model_native_size <= 0:
            col.prop(settings, "resolution")
        try:
            long_side = requests.request_resolution(settings)
            width, height = camera_pose.render_size(*camera_pose.scene_frame_size(scene.render), long_side)
            capped = " (backend maximum)" if long_side < requests.render_resolution(settings) else ""
            col.label(text=f"{width} × {height} px (scene aspect){capped}")
        except ValueError:
            pass
        warning = requests.size_warning(settings)
        if warning:
            _wrapped(col, warning, context, icon="ERROR")
        if settings.backend_compiles and settings.compile_state:
            _wrapped(
                col,
                settings.compile_state,
                context,
                icon="CHECKMARK" if "compiled," in settings.compile_state else "TIME",
            )

        layout.use_property_split = False
        row = layout.row(align=True)
        row.scale_y = 1.4
        live = renders.live_running()
        row.operator("viewneti.toggle_live", text="Live", icon="PAUSE" if live else "PLAY", depress=live)
        row.operator("viewneti.render_view", icon="RENDER_STILL")
        row = layout.row()
        if settings.last_timings:
            row.label(text=f"Last render: {settings.last_timings}", icon="TIME")
        row.operator("viewneti.clear_background", text="", icon="TRASH")
        for line in settings.last_warnings.splitlines():
            _wrapped(layout, line, context, icon="ERROR")


class VIEWNETI_PT_path(_SidebarPanel, bpy.types.Panel):
    """Frame range and output folder for Render Camera Path."""

    bl_label = "Camera Path"
    bl_parent_id = "VIEWNETI_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        settings = scene.viewneti
        col = layout.column()
        col.prop(settings, "use_scene_range")
        sub = col.column(align=True)
        if settings.use_scene_range:
            sub.enabled = False
            sub.prop(scene, "frame_start", text="Start")
            sub.prop(scene, "frame_end", text="End")
            sub.prop(scene, "frame_step", text="Step")
        else:
            sub.prop(settings, "frame_start")
            sub.prop(settings, "frame_end")
            sub.prop(settings, "frame_step")
        col.prop(settings, "output_dir")
        layout.operator("viewneti.render_path", icon="RENDER_ANIMATION")
        _job_box(layout, settings, "sequence", context)


class VIEWNETI_PT_invert(_SidebarPanel, bpy.types.Panel):
    """Reference image + its camera -> a new object token."""

    bl_label = "Invert Reference"
    bl_parent_id = "VIEWNETI_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        settings = context.scene.viewneti
        layout.row().prop(settings, "invert_source", expand=True)
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        if settings.invert_source == "FILE":
            col.prop(settings, "invert_filepath")
        else:
            col.template_ID(settings, "invert_image", open="image.open")
        col.prop(settings, "invert_camera")
        col.prop(settings, "invert_name")
        col.prop(settings, "invert_steps")
        if settings.invert_steps == 0:
            default = f"{settings.model_invert_steps} steps" if settings.model_invert_steps else "Refresh to see it"
            col.label(text=f"Backend default: {default}", icon="INFO")
        col.prop(settings, "invert_preview_every")
        layout.operator("viewneti.invert_reference", icon="IMAGE_REFERENCE")
        _job_box(layout, settings, "invert", context)
        preview = bpy.data.images.get(f"ViewNeTI preview {settings.invert_name.strip()}")
        if preview is not None and settings.job_kind == "invert" and settings.job_running:
            layout.template_icon(icon_value=preview.preview_ensure().icon_id, scale=6.0)


class VIEWNETI_PT_export(_SidebarPanel, bpy.types.Panel):
    """Export Training Views: the chosen objects rendered around their anchors, with masks (for viewneti pretrain)."""

    bl_label = "Export Training Views"
    bl_parent_id = "VIEWNETI_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.viewneti.export
        layout.row().prop(props, "source", expand=True)
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        if props.source == "COLLECTION":
            col.prop(props, "collection")
        col.prop(props, "output_dir")
        col.prop(props, "views")
        col.prop(props, "layout")
        sub = col.column(align=True)
        if props.layout == "ORBIT":
            sub.prop(props, "elevation")
        else:
            sub.prop(props, "elevation_min")
            sub.prop(props, "elevation_max")
        col.prop(props, "azimuth_offset")
        col.prop(props, "anchor")
        col.prop(props, "distance")
        col.prop(props, "fov_y_deg")
        sub = col.column(align=True)
        sub.prop(props, "width")
        sub.prop(props, "height")
        col.prop(props, "engine")
        col.prop(props, "samples")
        col.prop(props, "other_objects")
        layout.operator("viewneti.export_views", icon="RENDER_RESULT")
        if props.state == "running":
            row = layout.row(align=True)
            row.progress(factor=props.done / max(1, props.total), type="BAR", text=props.message)
            row.operator("viewneti.cancel_export", text="", icon="CANCEL")
        elif props.message:
            _wrapped(layout, props.message, context, icon="CHECKMARK" if props.state == "done" else "INFO")


CLASSES = (VIEWNETI_PT_main, VIEWNETI_PT_view, VIEWNETI_PT_path, VIEWNETI_PT_invert, VIEWNETI_PT_export)
