"""Export Training Views: K renders of each chosen object around its anchor, with object masks, into
one nerfstudio ``transforms.json`` folder per object, the dataset `viewneti train --mode 3 --data ROOT`
and `viewneti pretrain --data ROOT` read to train a view-mapper for any base model.

Layout written (per object, atomically: a hidden temp folder in ROOT, renamed when complete)::

    ROOT/<object>/transforms.json   camera_angle_x, fl_x, fl_y, cx, cy, w, h (shared), frames[] with
                                    file_path, mask_path, transform_matrix (camera_to_anchor, Blender
                                    convention = nerfstudio's OpenGL one), azimuth_deg/elevation_deg/radius;
                                    "viewneti_export": how it was made (anchor_to_world, engine, ...)
    ROOT/<object>/images/000.png    the view, rendered by the chosen engine with the scene's lights and world
    ROOT/<object>/masks/000.png     where the object is visible (255), other geometry occluding it excluded

Each view is two renders: the image (EEVEE, Cycles or the scene's engine), then a mask render (Cycles,
a white emission override on a black world, every other visible object a holdout, so occlusion is
respected whatever engine made the image). The scene is restored after the export, cancelled or not.

`ExportJob` is plain code: ``step()`` does one render, ``cancel()`` stops; the operator runs it to the
end headless (timers never fire there) and from a modal timer in the UI. Standard library + bpy only.
"""

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import bpy
from mathutils import Matrix, Vector

from . import camera_pose, limits

EXPORT_FORMAT = "viewneti-export-1"  # "viewneti_export"/"format" in transforms.json: folders we may replace
TEMP_PREFIX = ".viewneti-export-"  # hidden staging folders inside ROOT (the dataset loader skips hidden folders)

LAYOUTS = (
    ("HEMISPHERE", "Hemisphere", "Views spread evenly over a band of elevations (a spiral: every azimuth and height)"),
    ("ORBIT", "Orbit", "Views evenly spaced in azimuth at one elevation"),
)
ENGINES = (
    ("SCENE", "Scene's Engine", "Render with the scene's engine and its settings"),
    ("BLENDER_EEVEE", "EEVEE", "Fast rasterised renders"),
    ("CYCLES", "Cycles", "Path-traced renders"),
)
OTHER_OBJECTS = (
    ("HIDE", "Hide", "Render each object alone with the scene's lights and world (a clean training set)"),
    ("KEEP", "Keep", "Keep the rest of the scene (a ground, a table) in the images; masks still cover the object only"),
)
ANCHORS = (
    (
        "BOUNDS",
        "Bounds",
        "Centre of the object's bounding box, world axes, scale = its bounding radius (every object the same size)",
    ),
    ("ORIGIN", "Origin", "The object's own origin, rotation and (uniform) scale, as when it is picked as the anchor"),
)
# Object types that put pixels in a render (an Empty may instance a collection); lights and cameras do not.
GEOMETRY_TYPES = {
    "MESH",
    "CURVE",
    "CURVES",
    "SURFACE",
    "META",
    "FONT",
    "VOLUME",
    "POINTCLOUD",
    "GREASEPENCIL",
    "GPENCIL",
    "EMPTY",
}
MASK_SAMPLES = 16  # Cycles samples of a mask render: coverage-antialiased edges, the loader thresholds at 50 %
MASK_CYCLES_SETTINGS = {  # a mask render: emission only, no light paths
    "samples": MASK_SAMPLES,
    "use_adaptive_sampling": False,
    "use_denoising": False,
    "max_bounces": 0,
    "transparent_max_bounces": 0,
}
MAX_VIEWS = 1000


class ExportError(ValueError):
    """Bad export settings or scene; the message says what to fix."""


@dataclass
class ExportSettings:
    """How to export; the defaults are the panel's (properties.VIEWNETI_ExportSettings reads them here)."""

    views: int = 24
    layout: str = "HEMISPHERE"
    elevation: float = 25.0  # degrees, ORBIT
    elevation_min: float = 10.0  # degrees, HEMISPHERE
    elevation_max: float = 60.0
    azimuth_offset: float = 0.0  # degrees; azimuth 0 = Blender's front view (camera on -Y)
    distance: float = 3.0  # camera distance from the anchor, in anchor units (BOUNDS: bounding radii)
    fov_y_deg: float = 40.0
    width: int = 512  # the paper trains SD 2.1 at 512 x 384
    height: int = 384
    engine: str = "SCENE"
    samples: int = 0  # 0 = the engine's own setting
    other_objects: str = "HIDE"
    anchor: str = "BOUNDS"

    def validate(self):
        if not 1 <= self.views <= MAX_VIEWS:
            raise ExportError(f"Views must be between 1 and {MAX_VIEWS}, got {self.views}.")
        for name, allowed in (
            ("layout", LAYOUTS),
            ("engine", ENGINES),
            ("other_objects", OTHER_OBJECTS),
            ("anchor", ANCHORS),
        ):
            if getattr(self, name) not in [item[0] for item in allowed]:
                raise ExportError(f"Unknown {name} {getattr(self, name)!r}: use one of {[i[0] for i in allowed]}.")
        for name in ("elevation", "elevation_min", "elevation_max"):
            if not -89.0 <= getattr(self, name) <= 89.0:
                raise ExportError(f"{name.replace('_', ' ').capitalize()} must be within ±89°.")
        if self.elevation_min > self.elevation_max:
            raise ExportError("Elevation Min is above Elevation Max: swap them.")
        if not 0.0 < self.fov_y_deg < 170.0:
            raise ExportError(f"Field of view must be between 0 and 170°, got {self.fov_y_deg}.")
        if self.anchor == "BOUNDS" and self.distance <= 1.0:
            raise ExportError(
                "Distance is in bounding radii: at ≤ 1 the camera is inside the object's bounding sphere. Use ≥ 1.5."
            )
        if self.distance <= 0.0:
            raise ExportError("Distance must be positive.")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not limits.MIN_SIZE <= v <= limits.MAX_SIZE or v % limits.SIZE_MULTIPLE:
                raise ExportError(
                    f"{name.capitalize()} must be a multiple of {limits.SIZE_MULTIPLE} between "
                    f"{limits.MIN_SIZE} and {limits.MAX_SIZE} (the model's latent grid), got {v}."
                )
        if self.samples < 0:
            raise ExportError("Samples must be ≥ 0 (0 = the engine's setting).")
        return self

    @classmethod
    def from_properties(cls, props):
        """From a ``VIEWNETI_ExportSettings`` property group (or anything with the same attributes)."""
        return cls(**{name: getattr(props, name) for name in cls.__dataclass_fields__})


@dataclass
class View:
    """One camera: anchor-relative pose (row-major 4x4, rigid, Blender convention) and what to record with it."""

    camera_to_anchor: list
    extra: dict = field(default_factory=dict)


@dataclass
class Subject:
    """One exported object: its folder name, the Blender objects that make it up, its anchor (world 4x4)."""

    name: str
    objects: list
    anchor_to_world: list
    anchor_scale: float = 1.0
    extra: dict = field(default_factory=dict)


# -- cameras ---------------------------------------------------------------------------------


def orbit_matrix(azimuth_deg, elevation_deg, radius):
    """Camera-to-anchor of a camera on a sphere looking at the anchor's origin, +Z up.

    The project's orbit (viewneti_backend.cameras.orbit_pose; a test keeps them equal): azimuth 0
    looks from -Y towards +Y (Blender's front view), increasing counter-clockwise seen from above.
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = [radius * math.sin(az) * math.cos(el), -radius * math.cos(az) * math.cos(el), radius * math.sin(el)]
    forward = [-e / radius for e in eye]
    up = [0.0, 0.0, 1.0]
    right = _cross(forward, up)
    if _norm(right) < 1e-9:  # straight down or up: any perpendicular
        right = _cross(forward, [0.0, 1.0, 0.0])
    right = [x / _norm(right) for x in right]
    cam_up = _cross(right, forward)
    rows = [[right[r], cam_up[r], -forward[r], eye[r]] for r in range(3)]
    return rows + [[0.0, 0.0, 0.0, 1.0]]


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))


def plan_views(settings):
    """The K cameras of one object, as `View`s: an orbit, or a spiral over the elevation band.

    The spiral spaces sin(elevation) evenly (equal areas of the sphere band) and turns by the golden
    angle between views, so any K covers every azimuth and height without repeating a pattern.
    """
    s = settings
    views = []
    for i in range(s.views):
        if s.layout == "ORBIT":
            az, el = s.azimuth_offset + 360.0 * i / s.views, s.elevation
        else:
            lo, hi = math.sin(math.radians(s.elevation_min)), math.sin(math.radians(s.elevation_max))
            el = math.degrees(math.asin(lo + (hi - lo) * (i + 0.5) / s.views))
            az = s.azimuth_offset + GOLDEN_ANGLE_DEG * i
        az = (az + 180.0) % 360.0 - 180.0
        extra = {"azimuth_deg": round(az, 4), "elevation_deg": round(el, 4), "radius": round(s.distance, 4)}
        views.append(View(orbit_matrix(az, el, s.distance), extra))
    return views


def intrinsics(width, height, fov_y_deg):
    """nerfstudio's shared intrinsics for a centred pinhole of this vertical field of view."""
    fl = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
    return {
        "camera_model": "OPENCV",
        "camera_angle_x": 2.0 * math.atan(0.5 * width / fl),
        "fl_x": fl,
        "fl_y": fl,
        "cx": width / 2.0,
        "cy": height / 2.0,
        "w": int(width),
        "h": int(height),
    }


# -- subjects --------------------------------------------------------------------------------


def is_object_name(name):
    """True for a valid object token name: each folder name becomes one in mode-3 training."""
    return limits.NAME_RE.fullmatch(name) is not None  # fullmatch: the pattern's "$" would accept "name\n"


def folder_name(name, taken=()):
    """A valid object name from a Blender name ("Cube.001" -> "Cube_001"), unique among ``taken`` (any case)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:56] or "object"
    if not base[0].isalnum():
        base = "o" + base
    lowered = {t.lower() for t in taken}
    candidate, n = base, 2
    while candidate.lower() in lowered:
        candidate, n = f"{base}_{n}", n + 1
    assert is_object_name(candidate), candidate
    return candidate


def renderable(obj):
    return obj.type in GEOMETRY_TYPES


def subject_roots(objects):
    """The objects that each make a subject: renderable ones whose parent chain holds none of the others."""
    chosen = [o for o in objects if renderable(o)]
    names = {o.name for o in chosen}

    def has_chosen_ancestor(o):
        p = o.parent
        while p is not None:
            if p.name in names:
                return True
            p = p.parent
        return False

    return sorted((o for o in chosen if not has_chosen_ancestor(o)), key=lambda o: o.name)


def subject_parts(root):
    """The root and its renderable descendants: a parented assembly is one object."""
    return [root] + [c for c in root.children_recursive if renderable(c)]


def world_bounds(objects):
    """(centre, radius) of the bounding sphere of the objects' world-space bounding boxes."""
    corners = []
    for o in objects:
        mw = o.matrix_world
        corners.extend(mw @ Vector(c) for c in o.bound_box)
    if not corners:
        raise ExportError("The object has no geometry to frame.")
    lo = [min(c[k] for c in corners) for k in range(3)]
    hi = [max(c[k] for c in corners) for k in range(3)]
    centre = [(a + b) / 2.0 for a, b in zip(lo, hi)]
    radius = max(_norm([c[k] - centre[k] for k in range(3)]) for c in corners)
    return centre, radius


def anchor_for(root, parts, mode):
    """(anchor_to_world rows, scale) for a subject; the scale is uniform, so poses stay rigid."""
    if mode == "ORIGIN":
        loc, rot, scale = root.matrix_world.decompose()
        s = [abs(x) for x in scale]
        if max(s) - min(s) > 1e-4 * max(s):
            raise ExportError(
                f"'{root.name}' has a non-uniform scale {tuple(round(x, 4) for x in scale)}: apply it "
                "(Ctrl+A > Scale) or use Anchor: Bounds."
            )
        if s[0] < 1e-9:
            raise ExportError(f"'{root.name}' has zero scale: give it a scale.")
        m = Matrix.LocRotScale(loc, rot, (s[0], s[0], s[0]))
        return [list(row) for row in m], s[0]
    centre, radius = world_bounds(parts)
    if radius < 1e-9:
        raise ExportError(f"'{root.name}' has an empty bounding box: it has no geometry to render.")
    m = [[radius, 0.0, 0.0, centre[0]], [0.0, radius, 0.0, centre[1]], [0.0, 0.0, radius, centre[2]]]
    return m + [[0.0, 0.0, 0.0, 1.0]], radius


def subjects_from_objects(objects, anchor_mode="BOUNDS"):
    """One `Subject` per chosen object (children belong to their parent), named for its folder."""
    roots = subject_roots(objects)
    if not roots:
        raise ExportError(
            "Nothing to export: select the objects (meshes, curves, ...) to render, or pick a collection holding some."
        )
    subjects, taken = [], []
    for root in roots:
        parts = subject_parts(root)
        anchor, scale = anchor_for(root, parts, anchor_mode)
        name = folder_name(root.name, taken)
        taken.append(name)
        subjects.append(Subject(name, parts, anchor, scale, {"blender_object": root.name}))
    return subjects


def resolve_output_dir(raw):
    """Absolute export folder; ``//`` paths of an unsaved file go to the temp folder."""
    raw = (raw or "").strip()
    if not raw:
        raise ExportError("Set the output folder of the export.")
    if raw.startswith("//") and not bpy.data.filepath:
        return os.path.join(tempfile.gettempdir(), raw[2:].strip("/\\") or "viewneti_training_views")
    return os.path.normpath(bpy.path.abspath(raw))


# -- scene state -----------------------------------------------------------------------------


class _SceneState:
    """Attribute values changed during the export, restored in reverse order at the end."""

    def __init__(self):
        self._saved = []  # (owner, attribute, value)
        self._seen = set()

    def set(self, owner, attr, value):
        key = (owner.as_pointer(), attr)
        if key not in self._seen:
            self._seen.add(key)
            self._saved.append((owner, attr, getattr(owner, attr)))
        if getattr(owner, attr) != value:
            setattr(owner, attr, value)

    def original(self, owner, attr):
        """The value before the export changed it (the current one if it did not)."""
        for saved_owner, saved_attr, value in self._saved:
            if saved_attr == attr and saved_owner == owner:
                return value
        return getattr(owner, attr)

    def restore(self):
        for owner, attr, value in reversed(self._saved):
            try:
                if getattr(owner, attr) != value:
                    setattr(owner, attr, value)
            except (ReferenceError, AttributeError, TypeError):
                pass  # deleted meanwhile (the user removed an object): nothing to restore
        self._saved.clear()
        self._seen.clear()


# -- the job ---------------------------------------------------------------------------------


class ExportJob:
    """Renders every (subject, view) and writes the folders; one render per `step()`.

    Nothing changes in the scene or on disk until the first step. Each subject is written to a hidden
    temp folder in ``root`` and renamed to ``root/<name>`` once its transforms.json is complete; an
    existing export folder of that name is replaced then (never a folder the exporter did not write).
    Cancel or an error deletes the subject in progress; subjects already finished stay complete.
    """

    def __init__(self, scene, subjects, root, settings, views=None, renderer=None):
        """`renderer(scene, view_layer, filepath)` makes one render of the scene as the job has set it up
        (camera, engine, visibility, world) and writes it to `filepath`: :func:`render_to_file` unless
        given (a script or test may wrap it to watch every render, or to make one fail)."""
        settings.validate()
        if not subjects:
            raise ExportError("Nothing to export: no objects were given.")
        names = [s.name for s in subjects]
        bad = [n for n in names if not is_object_name(n)]
        if bad:
            raise ExportError(f"Invalid folder names {bad}: use letters, digits, '_' and '-'.")
        if len({n.lower() for n in names}) != len(names):
            raise ExportError(f"Two objects would share a folder: {names}.")
        self.scene = scene
        self.subjects = list(subjects)
        self.root = os.path.abspath(root)
        self.settings = settings
        self.views = list(views) if views is not None else plan_views(settings)
        self.renderer = renderer if renderer is not None else render_to_file
        if not self.views:
            raise ExportError("No views to render.")
        for subject in self.subjects:
            target = os.path.join(self.root, subject.name)
            if os.path.exists(target) and not is_export_folder(target):
                raise ExportError(
                    f"{target} exists and is not a ViewNeTI export: choose another output folder or rename "
                    f"the object '{subject.name}'."
                )
        self.total = 2 * len(self.views) * len(self.subjects)  # an image and a mask render per view
        self.done = 0
        self.state = "ready"  # ready -> running -> done | cancelled | error
        self.message = f"Ready to render {len(self.subjects)} objects × {len(self.views)} views"
        self.written = []  # final folders
        self.error = None
        self.started_at = None
        self._state = _SceneState()
        self._temp = None
        self._created_root = False
        self._camera = None
        self._mask_world = None
        self._mask_material = None
        self._frames = []

    # -- progress ------------------------------------------------------------------------------
    @property
    def finished(self):
        return self.state in ("done", "cancelled", "error")

    @property
    def progress(self):
        return self.done / self.total if self.total else 1.0

    def _position(self):
        per_subject = 2 * len(self.views)
        subject, rest = divmod(self.done, per_subject)
        phase, view = divmod(rest, len(self.views))
        return subject, ("image", "mask")[phase], view

    # -- driving -------------------------------------------------------------------------------
    def step(self):
        """Render the next image or mask; returns False once the job has finished (any way)."""
        if self.finished:
            return False
        try:
            if self.state == "ready":
                self._begin()
            index, phase, view = self._position()
            subject = self.subjects[index]
            if phase == "image" and view == 0:
                self._open_subject(subject)
            self.message = f"{subject.name}: {phase} {view + 1}/{len(self.views)}"
            self._render(subject, self.views[view], view, phase)
            self.done += 1
            if phase == "mask" and view == len(self.views) - 1:
                self._close_subject(subject)
            if self.done == self.total:
                self._end("done", f"Exported {len(self.written)} objects × {len(self.views)} views to {self.root}")
        except Exception as exc:  # leave nothing half-written, restore the scene, then report
            self.error = exc
            self._end("error", f"Export failed ({exc}); nothing half-written was left in {self.root}")
        return not self.finished

    def run(self, on_progress=None):
        """Drive the job to its end on this thread (headless Blender, scripts)."""
        while self.step():
            if on_progress is not None:
                on_progress(self)
        if on_progress is not None:
            on_progress(self)
        return self

    def cancel(self):
        """Stop now: the object in progress is deleted, finished ones are kept, the scene is restored."""
        if not self.finished:
            kept = f"; kept {len(self.written)} finished objects" if self.written else ""
            self._end("cancelled", f"Export cancelled{kept}")

    # -- set-up and tear-down ------------------------------------------------------------------
    def _begin(self):
        self.state = "running"
        self.started_at = time.monotonic()
        if not os.path.isdir(self.root):
            os.makedirs(self.root)
            self._created_root = True
        scene, st = self.scene, self._state
        data = bpy.data.cameras.new("ViewNeTI Export Camera")
        self._camera = bpy.data.objects.new("ViewNeTI Export Camera", data)
        scene.collection.objects.link(self._camera)
        data.type, data.sensor_fit = "PERSP", "VERTICAL"
        data.angle_y = math.radians(self.settings.fov_y_deg)
        data.shift_x = data.shift_y = 0.0
        data.dof.use_dof = False
        st.set(scene, "camera", self._camera)
        r = scene.render
        for attr, value in (
            ("resolution_x", self.settings.width),
            ("resolution_y", self.settings.height),
            ("resolution_percentage", 100),
            ("pixel_aspect_x", 1.0),
            ("pixel_aspect_y", 1.0),
            ("use_border", False),
            ("use_motion_blur", False),
            ("use_compositing", False),  # post-processing would change the images (and the masks)
            ("use_sequencer", False),  # sequencer strips would replace the render
        ):
            st.set(r, attr, value)
        st.set(r.image_settings, "file_format", "PNG")
        st.set(r.image_settings, "color_depth", "8")
        # the mask render's world and material: black world, white emission everywhere
        self._mask_world = bpy.data.worlds.new("ViewNeTI Export Mask World")
        background = self._mask_world.node_tree.nodes.get("Background")
        if background is not None:
            background.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
            background.inputs["Strength"].default_value = 0.0
        self._mask_material = mat = bpy.data.materials.new("ViewNeTI Export Mask")
        nodes = mat.node_tree.nodes
        nodes.clear()
        emission = nodes.new("ShaderNodeEmission")
        emission.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        emission.inputs["Strength"].default_value = 1.0
        output = nodes.new("ShaderNodeOutputMaterial")
        mat.node_tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
        self._image_engine = self.settings.engine if self.settings.engine != "SCENE" else r.engine
        # the view layer that renders (the active one of the context's scene), alone
        context_layer = getattr(bpy.context, "view_layer", None)
        self._layer = context_layer if bpy.context.scene == scene and context_layer else scene.view_layers[0]
        vs = scene.view_settings
        self._originals = {
            "world": scene.world,
            "material_override": self._layer.material_override,
            **{a: getattr(vs, a) for a in ("view_transform", "look", "exposure", "gamma")},
        }
        self._exported = {o.as_pointer() for s in self.subjects for o in s.objects}

    def _end(self, state, message):
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None
        self._state.restore()
        for datablock, collection in (
            (self._camera, bpy.data.objects),
            (getattr(self._camera, "data", None) if self._camera else None, bpy.data.cameras),
            (self._mask_world, bpy.data.worlds),
            (self._mask_material, bpy.data.materials),
        ):
            if datablock is not None:
                try:
                    collection.remove(datablock)
                except (ReferenceError, RuntimeError):
                    pass
        self._camera = self._mask_world = self._mask_material = None
        if self._created_root and not self.written:
            try:
                os.rmdir(self.root)  # we made it and nothing went in: leave no empty folder behind
            except OSError:
                pass
        self.state, self.message = state, message

    def _open_subject(self, subject):
        self._temp = os.path.join(self.root, f"{TEMP_PREFIX}{subject.name}-{os.getpid()}.tmp")
        shutil.rmtree(self._temp, ignore_errors=True)
        os.makedirs(os.path.join(self._temp, "images"))
        os.makedirs(os.path.join(self._temp, "masks"))
        self._frames = []

    def _close_subject(self, subject):
        """Write transforms.json into the temp folder, then move the whole folder into place."""
        s = self.settings
        doc = intrinsics(s.width, s.height, self._fov_y)
        doc["viewneti_export"] = {
            "format": EXPORT_FORMAT,
            "object": subject.name,
            "blender_objects": [o.name for o in subject.objects],
            "anchor_to_world": subject.anchor_to_world,
            "anchor_scale": subject.anchor_scale,
            "anchor": s.anchor,
            "engine": self._image_engine,
            "samples": s.samples,
            "layout": s.layout,
            "other_objects": s.other_objects,
            "blend_file": bpy.data.filepath,
            "blender": bpy.app.version_string,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        doc.update(subject.extra)
        doc["frames"] = self._frames
        temp = self._require(self._temp)
        path = os.path.join(temp, "transforms.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        target = os.path.join(self.root, subject.name)
        if os.path.exists(target):  # swap the old export out, the new one in, then delete the old one
            old = os.path.join(self.root, f"{TEMP_PREFIX}{subject.name}-{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
        self._temp = None
        self.written.append(target)

    @staticmethod
    def _require(value):
        if value is None:
            raise ExportError("The export has not started (call step() or run()).")
        return value

    # -- rendering -----------------------------------------------------------------------------
    def _place_camera(self, subject, view):
        """Put the camera at the view's pose and read back the pose the add-on would send for it."""
        anchor = Matrix(subject.anchor_to_world)
        c2a = Matrix(view.camera_to_anchor)
        loc = (anchor @ c2a).to_translation()
        rot = (anchor.to_3x3().normalized() @ c2a.to_3x3()).normalized()
        world = Matrix.Translation(loc) @ rot.to_4x4()
        cam = self._require(self._camera)
        cam.matrix_world = world
        distance = (c2a.to_translation()).length * subject.anchor_scale
        cam.data.clip_start = max(1e-4, 0.01 * subject.anchor_scale)
        cam.data.clip_end = max(1000.0, 100.0 * distance)
        self._layer.update()
        pose = camera_pose.camera_to_anchor(cam.matrix_world, subject.anchor_to_world)  # as Blender holds it
        self._fov_y = camera_pose.camera_fov_y_deg(cam.data, self.settings.width, self.settings.height)
        return pose

    def _visibility(self, subject, phase):
        """This subject as the user set it, other exported objects hidden, the rest per Other Objects.

        In the mask render lights are off and every other visible object is a holdout: it cuts the
        subject where it occludes it, and is itself black.
        """
        st, keep = self._state, self.settings.other_objects == "KEEP"
        mine = {o.as_pointer() for o in subject.objects}
        for obj in self.scene.objects:
            if obj == self._camera:
                continue
            key = obj.as_pointer()
            if key in mine:
                st.set(obj, "hide_render", st.original(obj, "hide_render"))
                st.set(obj, "is_holdout", st.original(obj, "is_holdout"))
            elif obj.type == "LIGHT":
                st.set(obj, "hide_render", True if phase == "mask" else st.original(obj, "hide_render"))
            elif not renderable(obj):
                continue
            elif key in self._exported or not keep:
                st.set(obj, "hide_render", True)
            else:
                st.set(obj, "is_holdout", True if phase == "mask" else st.original(obj, "is_holdout"))

    def _configure(self, phase):
        scene, st, r, o = self.scene, self._state, self.scene.render, self._originals
        vs, layer = scene.view_settings, self._layer
        if phase == "image":
            st.set(r, "engine", self._image_engine)
            st.set(scene, "world", o["world"])
            st.set(layer, "material_override", o["material_override"])
            for attr in ("view_transform", "look", "exposure", "gamma"):
                st.set(vs, attr, o[attr])
            st.set(r, "film_transparent", False)
            st.set(r.image_settings, "color_mode", "RGB")
            for attr in MASK_CYCLES_SETTINGS:  # the user's Cycles settings back after a mask render
                st.set(scene.cycles, attr, st.original(scene.cycles, attr))
            if self.settings.samples > 0:
                if self._image_engine == "CYCLES":
                    st.set(scene.cycles, "samples", self.settings.samples)
                elif self._image_engine == "BLENDER_EEVEE":
                    st.set(scene.eevee, "taa_render_samples", self.settings.samples)
        else:
            st.set(r, "engine", "CYCLES")
            for attr, value in MASK_CYCLES_SETTINGS.items():
                st.set(scene.cycles, attr, value)
            st.set(scene, "world", self._mask_world)
            st.set(layer, "material_override", self._mask_material)
            st.set(vs, "view_transform", "Standard")
            st.set(vs, "look", "None")
            st.set(vs, "exposure", 0.0)
            st.set(vs, "gamma", 1.0)
            st.set(r, "film_transparent", False)
            st.set(r.image_settings, "color_mode", "BW")

    def _render(self, subject, view, index, phase):
        pose = self._place_camera(subject, view)
        self._configure(phase)
        self._visibility(subject, phase)
        folder = "images" if phase == "image" else "masks"
        rel = f"{folder}/{index:03d}.png"
        self.renderer(self.scene, self._layer, os.path.join(self._require(self._temp), rel))
        if phase == "image":
            frame = {
                "file_path": rel,
                "mask_path": f"masks/{index:03d}.png",
                "transform_matrix": pose,
            }
            frame.update(view.extra)
            self._frames.append(frame)


def render_to_file(scene, view_layer, filepath):
    """Render the view layer of the scene as it is set up now and save the result to `filepath`."""
    bpy.ops.render.render(scene=scene.name, layer=view_layer.name)
    result = bpy.data.images.get("Render Result")
    if result is None:
        raise ExportError("Blender produced no render result: check the render engine.")
    result.save_render(filepath=filepath, scene=scene)


def is_export_folder(path):
    """True for a folder this exporter wrote (transforms.json says so): the only kind it replaces."""
    try:
        with open(os.path.join(path, "transforms.json"), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    info = doc.get("viewneti_export") if isinstance(doc, dict) else None
    return isinstance(info, dict) and info.get("format") == EXPORT_FORMAT


# -- the operator's side ---------------------------------------------------------------------

ACTIVE = None  # the running ExportJob of this Blender session (one at a time)


def chosen_objects(context, props):
    """The objects the panel's settings point at: the selection, or a collection's objects."""
    if props.source == "COLLECTION":
        if props.collection is None:
            raise ExportError("Pick the collection whose objects to export.")
        return list(props.collection.all_objects)
    return list(context.selected_objects)


def build_job(context, props):
    """An ExportJob from the panel's settings (validated; nothing rendered or written yet)."""
    settings = ExportSettings.from_properties(props).validate()
    subjects = subjects_from_objects(chosen_objects(context, props), settings.anchor)
    return ExportJob(context.scene, subjects, resolve_output_dir(props.output_dir), settings)


def sync(props, job):
    """Mirror a job's progress into the panel's properties."""
    props.state = job.state
    props.done = job.done
    props.total = job.total
    props.message = job.message


def cancel_active():
    """Cancel the running export, if any (unregister, file load)."""
    global ACTIVE
    if ACTIVE is not None:
        ACTIVE.cancel()
        ACTIVE = None
