"""Add-on preferences and the two property groups: ``Scene.viewneti`` and ``Camera.viewneti``.

Settings and job state live on the scene (saved with the file, one place for the panel to read);
per-camera data (last image, own seed) lives on the camera datablock so it follows the camera.
"""

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import export, limits
from .client import DEFAULT_URL


def _is_camera(_self, obj):
    return obj.type == "CAMERA"


class VIEWNETI_AddonPreferences(bpy.types.AddonPreferences):
    """Where the backend is and how to start one; per user, not per file."""

    bl_idname = __package__

    backend_url: StringProperty(
        name="Backend URL",
        description="Address of the ViewNeTI render service (viewneti-server, or python -m server)",
        default=DEFAULT_URL,
    )
    token: StringProperty(
        name="Access Token",
        description=(
            "For a backend started with --token (needed off 127.0.0.1). A backend started from Blender with "
            "Per-Launch Token on needs none here"
        ),
        subtype="PASSWORD",
        default="",
    )
    timeout: FloatProperty(
        name="Timeout",
        description="Seconds to wait for one render or request before giving up",
        default=120.0,
        min=1.0,
        max=3600.0,
        subtype="TIME_ABSOLUTE",
        unit="TIME_ABSOLUTE",
    )
    live_debounce: FloatProperty(
        name="Live Delay",
        description="Live mode renders once the camera has been still for this long",
        default=0.25,
        min=0.0,
        max=5.0,
        subtype="TIME_ABSOLUTE",
        unit="TIME_ABSOLUTE",
    )
    refine_delay: FloatProperty(
        name="Refine Delay",
        description=(
            "Once a live render is shown and the camera stays still this long, live mode renders that view once "
            "more as Render View does (the model's full steps instead of its live ones); 0 = never"
        ),
        default=1.0,
        min=0.0,
        max=10.0,
        subtype="TIME_ABSOLUTE",
        unit="TIME_ABSOLUTE",
    )
    backend_command: StringProperty(
        name="Start Command",
        description=(
            "Command that starts a local backend, e.g. '/path/to/.venv/bin/python -m server --port {port}'; "
            "{port} is taken from the Backend URL. Leave empty if you start the backend yourself"
        ),
        default="",
    )
    backend_token_auto: BoolProperty(
        name="Per-Launch Token",
        description=(
            "Start the backend with '--token auto' (unless the command has its own --token) and use the token "
            "it writes, so that other users of this computer cannot use it. Turn off for a start command that "
            "is not the ViewNeTI server itself"
        ),
        default=True,
    )
    backend_workdir: StringProperty(
        name="Working Folder",
        description="Folder to start the backend in (the project checkout); empty = current folder",
        subtype="DIR_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        col = layout.column()
        col.prop(self, "backend_url")
        col.prop(self, "token")
        col.prop(self, "timeout")
        col.prop(self, "live_debounce")
        col.prop(self, "refine_delay")
        col.separator()
        col.prop(self, "backend_command")
        col.prop(self, "backend_workdir")
        col.prop(self, "backend_token_auto")


class DefaultPrefs:
    """Stand-in when the add-on's preferences are unavailable (module used outside an enabled add-on):
    each preference at its default, read from its property above (one definition of each default)."""

    def __getattr__(self, name):
        prop = VIEWNETI_AddonPreferences.__annotations__.get(name)
        if prop is None:
            raise AttributeError(f"the add-on has no preference named {name!r}")
        return prop.keywords["default"]


def prefs(context=None):
    """The add-on's preferences (per user), or their defaults where the add-on is not enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None and addon.preferences is not None else DefaultPrefs()


class VIEWNETI_ObjectItem(bpy.types.PropertyGroup):
    """One object token known to the backend (mirrors GET /v1/objects)."""

    # `name` is inherited from PropertyGroup and used by prop_search
    builtin: BoolProperty(name="Built-in", default=False)
    steps: IntProperty(name="Steps", default=0)


_EXPORT = export.ExportSettings  # the export's defaults live there, once


class VIEWNETI_ExportSettings(bpy.types.PropertyGroup):
    """Export Training Views: what to render, how, where; and the running export's progress."""

    source: EnumProperty(
        name="Objects",
        items=(
            ("SELECTED", "Selected", "Each selected object (with its children) is one training object"),
            ("COLLECTION", "Collection", "Each object of a collection (with its children) is one training object"),
        ),
        default="SELECTED",
    )
    collection: PointerProperty(name="Collection", type=bpy.types.Collection)
    output_dir: StringProperty(
        name="Output Folder",
        description="One transforms.json folder per object goes here (for viewneti train --mode 3 / pretrain)",
        subtype="DIR_PATH",
        default="//viewneti_training_views/",
    )
    views: IntProperty(name="Views", description="Renders per object", default=_EXPORT.views, min=1, max=1000)
    layout: EnumProperty(name="Cameras", items=export.LAYOUTS, default=_EXPORT.layout)
    elevation: FloatProperty(name="Elevation", default=_EXPORT.elevation, min=-89.0, max=89.0)
    elevation_min: FloatProperty(name="Elevation Min", default=_EXPORT.elevation_min, min=-89.0, max=89.0)
    elevation_max: FloatProperty(name="Elevation Max", default=_EXPORT.elevation_max, min=-89.0, max=89.0)
    azimuth_offset: FloatProperty(
        name="Azimuth Offset",
        description="Azimuth of the first view (0 = front, from -Y)",
        default=_EXPORT.azimuth_offset,
    )
    distance: FloatProperty(
        name="Distance",
        description="Camera distance from the anchor in anchor units (Anchor Bounds: bounding radii)",
        default=_EXPORT.distance,
        min=0.01,
    )
    fov_y_deg: FloatProperty(name="Field of View", description="Vertical, degrees", default=_EXPORT.fov_y_deg)
    width: IntProperty(
        name="Width", default=_EXPORT.width, min=limits.MIN_SIZE, max=limits.MAX_SIZE, step=limits.SIZE_MULTIPLE
    )
    height: IntProperty(
        name="Height", default=_EXPORT.height, min=limits.MIN_SIZE, max=limits.MAX_SIZE, step=limits.SIZE_MULTIPLE
    )
    engine: EnumProperty(name="Engine", items=export.ENGINES, default=_EXPORT.engine)
    samples: IntProperty(name="Samples", description="0 = the engine's own setting", default=_EXPORT.samples, min=0)
    other_objects: EnumProperty(name="Other Objects", items=export.OTHER_OBJECTS, default=_EXPORT.other_objects)
    anchor: EnumProperty(name="Anchor", items=export.ANCHORS, default=_EXPORT.anchor)
    # progress of the running (or last) export, written by the add-on
    state: StringProperty(default="")
    done: IntProperty(default=0)
    total: IntProperty(default=0)
    message: StringProperty(default="")


class VIEWNETI_SceneSettings(bpy.types.PropertyGroup):
    """Render settings, backend status and the state of the running job, for one scene."""

    # what to render
    anchor: PointerProperty(
        name="Anchor",
        type=bpy.types.Object,
        description=(
            "The subject: poses are taken relative to it and its scale sets the distance unit. Empty = world origin"
        ),
    )
    object_name: StringProperty(
        name="Object",
        description="Object token to render (empty = the backend's default object)",
        default="",
    )
    objects: CollectionProperty(type=VIEWNETI_ObjectItem)
    seed: IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    use_model_defaults: BoolProperty(
        name="Use Model Defaults",
        description=(
            "Let the backend's model choose steps and guidance (its recommended values; fewer steps in "
            "Live mode). Turn off to set them yourself"
        ),
        default=True,
    )
    steps: IntProperty(
        name="Steps",
        description="Denoising steps (only used with Use Model Defaults off)",
        default=30,
        min=1,
        max=limits.MAX_STEPS,
    )
    guidance: FloatProperty(
        name="Guidance",
        description="Classifier-free guidance scale (only used with Use Model Defaults off)",
        default=7.5,
        min=limits.MIN_GUIDANCE,
        max=limits.MAX_GUIDANCE,
    )
    use_native_resolution: BoolProperty(
        name="Model's Size",
        description=(
            "Render at the size the backend's model was trained at (its native size, e.g. 64 px for the toy "
            "model: larger renders are slow and draw repeated detail). Turn off to set the resolution yourself"
        ),
        default=True,
    )
    resolution: IntProperty(
        name="Resolution",
        description=(
            "Long side of the rendered image in pixels (only used with Model's Size off, or before the backend "
            "reported its size); the short side follows the scene's output aspect"
        ),
        default=512,
        min=limits.MIN_SIZE,
        max=limits.MAX_SIZE,
        step=limits.SIZE_MULTIPLE,
    )
    live: BoolProperty(name="Live", description="Re-render when the active camera moves", default=False)

    # camera path
    use_scene_range: BoolProperty(name="Scene Frame Range", default=True)
    frame_start: IntProperty(name="Start", default=1, min=0)
    frame_end: IntProperty(name="End", default=250, min=0)
    frame_step: IntProperty(name="Step", default=1, min=1)
    output_dir: StringProperty(
        name="Output Folder",
        description=(
            "Where numbered PNGs go (frame_000001.png ...); "
            "empty = //viewneti_frames/ (a temp folder if the file is unsaved)"
        ),
        subtype="DIR_PATH",
        default="//viewneti_frames/",
    )

    # reference inversion
    invert_source: EnumProperty(
        name="Reference",
        items=(
            ("FILE", "File", "An image file on disk"),
            ("IMAGE", "Image", "An image datablock in this file"),
        ),
        default="FILE",
    )
    invert_filepath: StringProperty(name="Image File", subtype="FILE_PATH", default="")
    invert_image: PointerProperty(name="Image", type=bpy.types.Image)
    invert_camera: PointerProperty(
        name="Camera", type=bpy.types.Object, poll=_is_camera, description="The camera that took the reference"
    )
    invert_name: StringProperty(
        name="Name", description="Name of the new object token (letters, digits, _ and -)", default="my_object"
    )
    invert_steps: IntProperty(
        name="Steps",
        description=(
            f"Optimisation steps of the inversion; 0 = the backend's default ({limits.GPU_INVERT_STEPS} on a GPU "
            f"as in the paper, {limits.CPU_INVERT_STEPS} on a CPU: about 4 minutes for the toy model)"
        ),
        default=0,
        min=0,
        max=limits.MAX_INVERT_STEPS,
    )
    invert_preview_every: IntProperty(
        name="Preview Every", description="Steps between previews (0 = none)", default=50, min=0
    )

    # backend status (written by the add-on)
    backend_state: EnumProperty(
        name="Backend",
        items=(
            ("UNKNOWN", "Not Checked", ""),
            ("OK", "Connected", ""),
            ("DOWN", "Not Reachable", ""),
            ("ERROR", "Error", ""),
        ),
        default="UNKNOWN",
    )
    backend_info: StringProperty(name="Backend Info", default="")
    # the model's recommended sampling settings, from GET /v1/health (0 = not known yet)
    model_steps: IntProperty(name="Model Steps", default=0, min=0)
    model_live_steps: IntProperty(name="Model Live Steps", default=0, min=0)
    model_guidance: FloatProperty(name="Model Guidance", default=0.0, min=0.0)
    # the backend's largest render side (GET /v1/health max_size; a CPU server caps it low), 0 = not known
    backend_max_size: IntProperty(name="Backend Max Size", default=0, min=0)
    model_native_size: IntProperty(name="Model Size", default=0, min=0)  # from GET /v1/health (0 = unknown)
    model_invert_steps: IntProperty(name="Model Inversion Steps", default=0, min=0)
    # a compiling backend (health's compiled_shapes is not null): frames per UNet call of its sequence jobs,
    # and one line for the panel about this scene's render size (compiled, compiling, queued)
    backend_compiles: BoolProperty(name="Backend Compiles", default=False)
    backend_sequence_batch: IntProperty(name="Backend Sequence Batch", default=1, min=1)
    compile_state: StringProperty(name="Compile State", default="")
    status_message: StringProperty(name="Status", default="")
    last_timings: StringProperty(name="Last Timings", default="")
    last_warnings: StringProperty(name="Last Warnings", default="")  # the last render's X-Warnings, one per line
    export: PointerProperty(type=VIEWNETI_ExportSettings)

    # job state (written by the add-on; survives redraws and reloads as a record of the last job)
    job_kind: StringProperty(default="")
    job_id: StringProperty(default="")
    job_state: StringProperty(default="")
    job_step: IntProperty(default=0)
    job_total: IntProperty(default=0)
    job_loss: FloatProperty(default=0.0)
    job_eta: FloatProperty(default=0.0)
    job_phase: StringProperty(default="")  # "compiling", "training" or "" (not reported)
    job_message: StringProperty(default="")
    job_warnings: StringProperty(default="")  # the job's warnings from the backend (sequence, inversion), one per line

    @property
    def job_running(self):
        return self.job_state in {"submitting", "running", "cancelling"}


class VIEWNETI_CameraSettings(bpy.types.PropertyGroup):
    """Per-camera data: the last images shown behind it and an optional own seed."""

    image: PointerProperty(name="Last Render", type=bpy.types.Image)
    sequence: PointerProperty(name="Last Sequence", type=bpy.types.Image)
    use_seed: BoolProperty(name="Own Seed", description="Use this camera's seed instead of the scene's", default=False)
    seed: IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    last_object: StringProperty(name="Last Object", default="")


CLASSES = (
    VIEWNETI_AddonPreferences,
    VIEWNETI_ObjectItem,
    VIEWNETI_ExportSettings,
    VIEWNETI_SceneSettings,
    VIEWNETI_CameraSettings,
)


def register_properties():
    bpy.types.Scene.viewneti = PointerProperty(type=VIEWNETI_SceneSettings)
    bpy.types.Camera.viewneti = PointerProperty(type=VIEWNETI_CameraSettings)


def unregister_properties():
    del bpy.types.Camera.viewneti
    del bpy.types.Scene.viewneti
