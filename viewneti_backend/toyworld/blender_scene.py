"""Build a toy object (and optionally its ground plane and a camera) in a running Blender (``bpy``).

The primitives get the same sizes, positions and rotations as in :mod:`.renderer`, so a Blender
render of the scene from a :class:`~viewneti_backend.cameras.Camera` matches the toy renderer (this is
what ``tests/toyworld/test_blender_agreement.py`` checks). Import this module only where ``bpy`` exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cameras import Camera
from .renderer import PALETTE, ToyObject

COLLECTION_NAME = "ToyWorld"


def _material(bpy: Any, name: str, rgb: tuple[float, float, float]) -> Any:
    """A Lambertian material of this colour (the toy renderer's shading), in the viewport and in renders."""
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    mat.diffuse_color = (*rgb, 1.0)
    nodes = mat.node_tree.nodes
    nodes.clear()
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (*rgb, 1.0)
    output = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(diffuse.outputs["BSDF"], output.inputs["Surface"])
    return mat


def add_toy_lighting() -> Any:
    """The toy renderer's light in Blender: its sun (direction and share of the light) and a uniform grey
    world for the ambient and sky fill; 'Standard' view transform, so a colour renders as itself."""
    import math

    import bpy  # noqa: PLC0415
    from mathutils import Vector  # noqa: PLC0415

    from .renderer import AMBIENT, SKY_FILL, SUN, SUN_DIRECTION

    scene = bpy.context.scene
    sun = bpy.data.objects.get("toy_sun")
    if sun is None:
        sun = bpy.data.objects.new("toy_sun", bpy.data.lights.new("toy_sun", "SUN"))
        scene.collection.objects.link(sun)
    # a sun light shines down its local -Z: point +Z at the sun; irradiance E gives radiance albedo * E / pi
    sun.rotation_euler = Vector(tuple(float(v) for v in SUN_DIRECTION)).to_track_quat("Z", "Y").to_euler()
    sun.data.energy = SUN * math.pi
    sun.data.angle = 0.0
    world = scene.world or bpy.data.worlds.new("toy_world")
    scene.world = world
    background = world.node_tree.nodes.get("Background")
    if background is not None:
        grey = AMBIENT + 0.5 * SKY_FILL
        background.inputs["Color"].default_value = (grey, grey, grey, 1.0)
        background.inputs["Strength"].default_value = 1.0
    scene.view_settings.view_transform = "Standard"
    return sun


def build_blender_scene(
    obj_spec: ToyObject | dict, *, ground: bool = True, segments: int = 64, clear: bool = True
) -> list[Any]:
    """Create the object's primitives (and a ground plane) in the current scene; returns the new objects.

    Boxes get one material per face in the renderer's face order (+X, -X, +Y, -Y, +Z, -Z); curved
    primitives use ``segments`` around their axis. The primitives go into a collection "ToyWorld".
    """
    import bpy  # noqa: PLC0415  (only available inside Blender / the bpy module)

    obj = obj_spec if isinstance(obj_spec, ToyObject) else ToyObject.from_json(obj_spec)
    scene = bpy.context.scene
    if clear:
        for o in list(bpy.data.objects):
            if o.type == "MESH":
                bpy.data.objects.remove(o, do_unlink=True)
    coll = bpy.data.collections.get(COLLECTION_NAME)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION_NAME)
        scene.collection.children.link(coll)

    created = []
    for i, p in enumerate(obj.parts):
        loc = tuple(float(v) for v in p.center)
        rot = (0.0, 0.0, float(np.radians(p.yaw_deg)))
        if p.kind == "box":
            bpy.ops.mesh.primitive_cube_add(size=2.0, location=loc, rotation=rot)
            ob = bpy.context.active_object
            ob.scale = tuple(float(v) for v in p.size)
        elif p.kind == "sphere":
            bpy.ops.mesh.primitive_uv_sphere_add(
                radius=float(p.size[0]), segments=segments, ring_count=segments // 2, location=loc, rotation=rot
            )
            ob = bpy.context.active_object
        elif p.kind == "cylinder":
            bpy.ops.mesh.primitive_cylinder_add(
                radius=float(p.size[0]), depth=2.0 * float(p.size[2]), vertices=segments, location=loc, rotation=rot
            )
            ob = bpy.context.active_object
        elif p.kind == "cone":
            bpy.ops.mesh.primitive_cone_add(
                radius1=float(p.size[0]),
                radius2=0.0,
                depth=2.0 * float(p.size[2]),
                vertices=segments,
                location=loc,
                rotation=rot,
            )
            ob = bpy.context.active_object
        else:
            raise ValueError(f"unknown primitive kind {p.kind!r}")
        ob.name = f"toy_{i}_{p.kind}_{p.side}"
        for c in list(ob.users_collection):
            c.objects.unlink(ob)
        coll.objects.link(ob)
        faces = p.faces()
        mats = []
        for name in dict.fromkeys(faces):
            mats.append(name)
            ob.data.materials.append(_material(bpy, f"toy_{name}", PALETTE[name]))
        if p.kind == "box":
            for poly in ob.data.polygons:
                n = np.asarray(poly.normal)
                axis = int(np.argmax(np.abs(n)))
                face = 2 * axis + (0 if n[axis] > 0 else 1)
                poly.material_index = mats.index(faces[face])
        ob["toy_part"] = i
        created.append(ob)

    if ground:
        bpy.ops.mesh.primitive_plane_add(size=20.0, location=(0.0, 0.0, 0.0))
        g = bpy.context.active_object
        g.name = "toy_ground"
        g.data.materials.append(_material(bpy, "toy_ground", (0.58, 0.58, 0.58)))
        for c in list(g.users_collection):
            c.objects.unlink(g)
        coll.objects.link(g)
        created.append(g)
    return created


def set_blender_camera(camera: Camera, name: str = "ToyCamera") -> Any:
    """Create (or update) a Blender camera with this pose (anchor = world origin), vertical fov and image size,
    and make it the scene camera."""
    import bpy  # noqa: PLC0415
    from mathutils import Matrix  # noqa: PLC0415

    scene = bpy.context.scene
    ob = bpy.data.objects.get(name)
    if ob is None:
        data = bpy.data.cameras.new(name)
        ob = bpy.data.objects.new(name, data)
        scene.collection.objects.link(ob)
    cam = ob.data
    cam.type = "PERSP"
    cam.sensor_fit = "VERTICAL"
    cam.angle_y = float(np.radians(camera.fov_y_deg))
    cam.shift_x = cam.shift_y = 0.0
    ob.matrix_world = Matrix([list(map(float, row)) for row in camera.camera_to_anchor])
    scene.camera = ob
    scene.render.resolution_x = int(camera.width)
    scene.render.resolution_y = int(camera.height)
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    return ob
