"""Export Training Views, headless: a procedural scene -> transforms.json folders with masks that the
backend loads as is -> a few mode-3 steps on the tiny model -> a render with the new view-mapper;
cancel and errors leave nothing half-written; the scene comes back as it was.

Cycles at 32x24 with 4 samples keeps every render well under a second on a 2-core CPU (EEVEE's first
render compiles its shaders in software GL here, over a minute, so the tests pick Cycles).
"""

import json
import math
import os

import bpy
import numpy as np
import pytest
from addon_testutil import addon_module
from PIL import Image

pytestmark = pytest.mark.blender

W, H = 32, 24


def _material(name, rgb, **inputs):
    mat = bpy.data.materials.new(name)
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    for key, value in inputs.items():
        bsdf.inputs[key].default_value = value
    return mat


def build_scene(scene):
    """Three primitives of different materials on a ground plane, lit by a sun; the factory cube removed."""
    bpy.data.objects.remove(bpy.data.objects["Cube"], do_unlink=True)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.5))
    cube = bpy.context.active_object
    cube.name = "Red Box.001"
    cube.data.materials.append(_material("red", (0.8, 0.1, 0.1), Roughness=0.9))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, location=(2.0, 0.0, 0.5), segments=16, ring_count=8)
    sphere = bpy.context.active_object
    sphere.name = "Sphere"
    sphere.data.materials.append(_material("metal", (0.2, 0.3, 0.9), Metallic=1.0, Roughness=0.3))
    bpy.ops.mesh.primitive_cone_add(radius1=0.4, depth=0.8, location=(0.0, 2.0, 0.4), vertices=12)
    cone = bpy.context.active_object
    cone.name = "Cone"
    cone.data.materials.append(_material("glow", (0.1, 0.8, 0.2), **{"Emission Strength": 0.5}))
    bpy.ops.mesh.primitive_plane_add(size=20.0)
    ground = bpy.context.active_object
    ground.name = "Ground"
    bpy.ops.object.light_add(type="SUN", rotation=(0.6, 0.2, 0.3))
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    return cube, sphere, cone, ground


def export_props(scene, root, **overrides):
    props = scene.viewneti.export
    props.output_dir = str(root)
    props.views, props.width, props.height = 3, W, H
    props.engine, props.samples, props.other_objects = "CYCLES", 4, "KEEP"
    for key, value in overrides.items():
        setattr(props, key, value)
    return props


def select(*objects):
    bpy.ops.object.select_all(action="DESELECT")
    for obj in objects:
        obj.select_set(True)


def scene_snapshot(scene):
    r = scene.render
    return {
        "engine": r.engine,
        "size": (r.resolution_x, r.resolution_y, r.resolution_percentage),
        "camera": scene.camera.name if scene.camera else None,
        "world": scene.world.name if scene.world else None,
        "view": scene.view_settings.view_transform,
        "color_mode": r.image_settings.color_mode,
        "samples": scene.cycles.samples,
        "bounces": scene.cycles.max_bounces,
        "override": scene.view_layers[0].material_override,
        "objects": sorted((o.name, o.hide_render, o.is_holdout) for o in scene.objects),
        "datablocks": sorted(
            d.name for coll in (bpy.data.objects, bpy.data.cameras, bpy.data.worlds, bpy.data.materials) for d in coll
        ),
    }


def hidden_entries(root):
    return [n for n in os.listdir(root) if n.startswith(".")] if os.path.isdir(root) else []


@pytest.mark.slow
def test_operator_exports_folders_the_backend_trains_and_renders_from(scene, tiny_model_dir, tmp_path):
    from viewneti_backend import cli
    from viewneti_backend.cameras import orbit_pose
    from viewneti_backend.data import load_scene_collection

    export = addon_module("export")
    cube, sphere, cone, ground = build_scene(scene)
    root = tmp_path / "views"
    export_props(scene, root)
    select(cube, sphere, cone)
    before = scene_snapshot(scene)

    assert bpy.ops.viewneti.export_views() == {"FINISHED"}, scene.viewneti.export.message

    props = scene.viewneti.export
    assert props.state == "done" and props.done == props.total == 2 * 3 * 3
    assert sorted(os.listdir(root)) == ["Cone", "Red_Box_001", "Sphere"]  # names made token-safe
    assert scene_snapshot(scene) == before  # engine, size, camera, world, flags, no leftover datablocks
    doc = json.loads((root / "Red_Box_001" / "transforms.json").read_text())
    for key in ("camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h"):
        assert key in doc, key
    assert (doc["w"], doc["h"], doc["cx"], doc["cy"]) == (W, H, W / 2, H / 2)
    assert math.degrees(2 * math.atan(0.5 * H / doc["fl_y"])) == pytest.approx(40.0, abs=1e-4)
    assert math.degrees(doc["camera_angle_x"]) == pytest.approx(
        math.degrees(2 * math.atan(math.tan(math.radians(20.0)) * W / H)), abs=1e-4
    )
    info = doc["viewneti_export"]
    assert info["blender_objects"] == ["Red Box.001"] and info["engine"] == "CYCLES"
    # anchor = the bounding-box centre, world axes, scale = bounding radius (half the cube's diagonal)
    assert info["anchor_scale"] == pytest.approx(math.sqrt(3) / 2, rel=1e-5)
    assert [row[3] for row in info["anchor_to_world"][:3]] == pytest.approx([0.0, 0.0, 0.5], abs=1e-6)
    for frame in doc["frames"]:
        assert {"file_path", "mask_path", "transform_matrix"} <= set(frame)
        # the project's camera convention: Blender's orbit around the anchor, in anchor units
        expected = orbit_pose(frame["azimuth_deg"], frame["elevation_deg"], 3.0)
        assert np.allclose(frame["transform_matrix"], expected, atol=1e-5)

    scenes = {s.name: s for s in load_scene_collection(root)}
    assert sorted(scenes) == ["Cone", "Red_Box_001", "Sphere"]
    for s in scenes.values():
        assert len(s.images) == 3 and s.images[0].size == (W, H) and s.masks is not None and s.cameras
        assert s.cameras[0].fov_y_deg == pytest.approx(40.0, abs=1e-4)
        for mask in s.masks:
            assert 0.03 < mask.mean() < 0.6  # the object, not the ground (kept in the image) nor nothing
    box = scenes["Red_Box_001"]
    assert box.masks is not None
    rgb = np.asarray(box.images[0], dtype=float)
    mask = box.masks[0]
    redness = rgb[..., 0] - rgb[..., 1]
    assert redness[mask].mean() > redness[~mask].mean() + 20  # the mask lies on the red box

    # `viewneti train --mode 3 --data ROOT` on the folders as they are, then a render with the result
    run = tmp_path / "run"
    common = ["--model", str(tiny_model_dir)]
    args = ["train", "--mode", "3", "--data", str(root), "--steps", "2", "--batch-size", "2", "--grad-accum", "1"]
    assert cli.main(args + common + ["--out", str(run), "--device", "cpu"]) == 0
    assert (run / "view_mapper").is_dir() and (run / "objects" / "Sphere").is_dir()
    out = tmp_path / "render"
    render = ["render", "--view-mapper", str(run / "view_mapper"), "--library", str(run / "objects")]
    render += ["--object", "Sphere", "--orbit", "2", "--steps", "1", "--size", "64", "--out", str(out)]
    assert cli.main(render + common + ["--device", "cpu", "--compile", "off"]) == 0
    frames = sorted(out.glob("Sphere_view*.png"))
    assert len(frames) == 2 and Image.open(frames[0]).size == (64, 64)
    assert export.ACTIVE is None


def test_view_plans_follow_the_project_orbit():
    from viewneti_backend.cameras import orbit_pose

    export = addon_module("export")
    for az, el, r in [(0, 0, 3), (30, 25, 3.6), (-120, 60, 2.5), (200, 89, 4), (45, -30, 1.5)]:
        assert np.allclose(export.orbit_matrix(az, el, r), orbit_pose(az, el, r), atol=1e-9)
    s = export.ExportSettings(views=40, elevation_min=10, elevation_max=60).validate()
    views = export.plan_views(s)
    els = [v.extra["elevation_deg"] for v in views]
    azs = [v.extra["azimuth_deg"] for v in views]
    assert min(els) > 10 and max(els) < 60 and els == sorted(els)
    assert len({round(a) for a in azs}) == 40 and min(azs) < -150 and max(azs) > 150  # every side
    orbit = export.plan_views(export.ExportSettings(views=4, layout="ORBIT", elevation=20.0))
    assert [v.extra["azimuth_deg"] for v in orbit] == [0.0, 90.0, -180.0, -90.0]
    assert {v.extra["elevation_deg"] for v in orbit} == {20.0}
    assert export.folder_name("Cube.001") == "Cube_001"
    assert export.folder_name("Cube", taken=["cube"]) == "Cube_2"
    assert export.folder_name("...") == "object"
    assert export.is_object_name("mug") and not export.is_object_name("mug\n")  # the whole name, no newline
    for bad, fix in [
        (dict(width=30), "multiple of 8"),
        (dict(distance=0.9), "bounding sphere"),
        (dict(elevation_min=50, elevation_max=10), "swap"),
        (dict(views=0), "Views"),
    ]:
        with pytest.raises(ValueError, match=fix):
            export.ExportSettings(**bad).validate()


def test_masks_exclude_what_occludes_the_object(scene, tmp_path):
    export = addon_module("export")
    _, sphere, _, ground = build_scene(scene)
    settings = export.ExportSettings(views=1, layout="ORBIT", elevation=0.0, width=W, height=H, samples=4)
    subjects = export.subjects_from_objects([sphere])
    alone = export.ExportJob(scene, subjects, str(tmp_path / "alone"), settings).run()
    # a wall (kept, not exported) between the camera and most of the sphere's left side
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(1.8, -1.2, 0.5), scale=(0.3, 0.05, 2.0))
    settings.other_objects = "KEEP"
    behind = export.ExportJob(scene, subjects, str(tmp_path / "behind"), settings).run()
    assert alone.state == behind.state == "done"
    full = np.asarray(Image.open(tmp_path / "alone" / "Sphere" / "masks" / "000.png")) > 127
    cut = np.asarray(Image.open(tmp_path / "behind" / "Sphere" / "masks" / "000.png")) > 127
    assert full.sum() > 40
    assert cut.sum() < 0.75 * full.sum() and not (cut & ~full).any()  # occluded pixels left out, nothing added
    img = np.asarray(Image.open(tmp_path / "behind" / "Sphere" / "images" / "000.png"))
    assert img.shape == (H, W, 3)


def test_cancel_and_errors_leave_nothing_half_written(scene, tmp_path):
    export = addon_module("export")
    cube, sphere, cone, _ = build_scene(scene)
    settings = export.ExportSettings(views=2, width=W, height=H, samples=2, engine="CYCLES")
    before = scene_snapshot(scene)

    # cancel during the first object: the folder the export created is gone again
    root = tmp_path / "first"
    job = export.ExportJob(scene, export.subjects_from_objects([cube, sphere]), str(root), settings)
    assert not root.exists() and job.state == "ready"  # nothing happens before the first step
    job.step()
    job.step()
    assert hidden_entries(root) and job.progress == pytest.approx(2 / 8)
    job.cancel()
    assert job.state == "cancelled" and not root.exists()
    assert scene_snapshot(scene) == before

    # cancel during the second object: the first is complete and loads, the second left no trace
    root = tmp_path / "second"
    job = export.ExportJob(scene, export.subjects_from_objects([cube, sphere]), str(root), settings)
    while job.done < 5:
        job.step()
    job.cancel()
    assert sorted(os.listdir(root)) == ["Red_Box_001"] and not job.step()
    from viewneti_backend.data import load_scene_collection

    (loaded,) = load_scene_collection(root)
    assert len(loaded.images) == 2 and loaded.masks is not None and len(loaded.masks) == 2
    assert scene_snapshot(scene) == before

    # an error mid-way (the disk, the engine): same clean state, and the reason is kept
    renders = []

    def disk_fills_up(scene_, layer, filepath):
        if renders:
            raise OSError("No space left on device")
        renders.append(filepath)
        export.render_to_file(scene_, layer, filepath)

    job = export.ExportJob(scene, export.subjects_from_objects([cone]), str(root), settings, renderer=disk_fills_up)
    job.step()
    assert job.step() is False
    assert job.state == "error" and "No space left" in job.message and isinstance(job.error, OSError)
    assert sorted(os.listdir(root)) == ["Red_Box_001"]  # the first object untouched, no temp folder
    assert scene_snapshot(scene) == before

    # re-exporting replaces an export folder whole; a folder the exporter did not write is refused
    settings.views = 3
    export.ExportJob(scene, export.subjects_from_objects([cube]), str(root), settings).run()
    doc = json.loads((root / "Red_Box_001" / "transforms.json").read_text())
    assert len(doc["frames"]) == 3 and hidden_entries(root) == []
    (root / "Sphere").mkdir()
    (root / "Sphere" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a ViewNeTI export"):
        export.ExportJob(scene, export.subjects_from_objects([sphere]), str(root), settings)
    assert (root / "Sphere" / "notes.txt").read_text() == "mine"


def test_operator_explains_what_is_missing(scene, tmp_path):
    build_scene(scene)
    export_props(scene, tmp_path / "views")
    bpy.ops.object.select_all(action="DESELECT")
    with pytest.raises(RuntimeError, match="Select the objects"):
        bpy.ops.viewneti.export_views()
    scene.viewneti.export.source = "COLLECTION"
    with pytest.raises(RuntimeError, match="Pick the collection"):
        bpy.ops.viewneti.export_views()
    scene.viewneti.export.collection = scene.collection.children[0]  # the factory "Collection"
    scene.viewneti.export.width = 30
    assert bpy.ops.viewneti.export_views() == {"CANCELLED"}
    assert "multiple of 8" in scene.viewneti.export.message and not (tmp_path / "views").exists()


def test_every_image_render_uses_the_scenes_own_settings(scene, tmp_path):
    """The mask render's settings (16 samples, no bounces, Standard view) never leak into an image."""
    export = addon_module("export")
    cube, sphere, _, _ = build_scene(scene)
    scene.cycles.samples, scene.cycles.max_bounces = 3, 5
    settings = export.ExportSettings(views=1, width=W, height=H, engine="CYCLES")
    seen = []

    def watched(scene_, layer, filepath):  # the settings in effect at each render
        phase = os.path.basename(os.path.dirname(filepath))
        cycles, view = scene_.cycles, scene_.view_settings.view_transform
        seen.append((phase, cycles.samples, cycles.max_bounces, view, scene_.render.engine))
        export.render_to_file(scene_, layer, filepath)

    subjects = export.subjects_from_objects([cube, sphere])
    job = export.ExportJob(scene, subjects, str(tmp_path / "v"), settings, renderer=watched)
    assert job.run().state == "done"
    view = scene.view_settings.view_transform
    assert seen == [("images", 3, 5, view, "CYCLES"), ("masks", export.MASK_SAMPLES, 0, "Standard", "CYCLES")] * 2
    assert (scene.cycles.samples, scene.cycles.max_bounces) == (3, 5)
