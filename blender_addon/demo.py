"""The main job, headless: the real product end to end on the embedded toy-world model.

    python blender_addon/demo.py --out outputs/demo      (what `make demo` runs)

1. starts the render service (``python -m server``) on a free loopback port,
2. builds the add-on's extension zip and installs it into headless Blender (``bpy``),
3. makes a scene: an anchor Empty at the origin and a camera keyframed on a full orbit around it,
4. runs **Render Camera Path** through the add-on (one sequence job on the server; numbered PNGs),
5. inverts the first frame into a new object token with **Invert Reference**, and renders the same
   orbit of that new object,
6. writes a contact sheet of both orbits and saves the .blend (frames appear behind the camera).

This is a driver script run with the project's Python (which has ``bpy``); it is not part of the
extension and it talks to the backend only through the add-on and HTTP.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script (not `-m blender_addon.demo`): the package's __init__ imports bpy, and Blender's
# user folder must be chosen before bpy is first imported.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="viewneti-demo-blender-"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=2) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise SystemExit(f"the server did not become ready within {timeout:.0f} s; log: {log}")


def keyframe_orbit(bpy, camera, anchor, frames: int, radius: float, elevation_deg: float) -> None:
    """Camera on a circle around the anchor, looking at it (Track To), one key per frame."""
    con = camera.constraints.new("TRACK_TO")
    con.target, con.track_axis, con.up_axis = anchor, "TRACK_NEGATIVE_Z", "UP_Y"
    el = math.radians(elevation_deg)
    for f in range(1, frames + 1):
        az = 2 * math.pi * (f - 1) / frames
        camera.location = (
            radius * math.sin(az) * math.cos(el),
            -radius * math.cos(az) * math.cos(el),
            radius * math.sin(el),
        )
        camera.keyframe_insert("location", frame=f)


INVERTED = "demo_inverted"  # the object the demo creates with Invert Reference


def forget_previous_inversion(url: str, name: str) -> bool:
    """Delete the object a previous run of the demo inverted (its server data lives in --out), so a
    second ``make demo`` re-creates it instead of failing on the name; True if there was one."""
    request = urllib.request.Request(f"{url}/v1/objects/{name}", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=30):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="output folder (frames, contact sheet, .blend, server data)")
    ap.add_argument("--frames", type=int, default=12, help="frames on the orbit (default 12)")
    ap.add_argument("--object", default="toy_000", help="object token to render (default: the toy world's toy_000)")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps per frame (default: the model's recommended value, see /v1/health)",
    )
    ap.add_argument("--resolution", type=int, default=64, help="long side in pixels (toy model: 64)")
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: the model's recommended value; toy model: 2, SD 2: 7.5)",
    )
    ap.add_argument("--invert-steps", type=int, default=60, help="optimizer steps of the inversion (0: skip it)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = out / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"[1/6] starting the render service on {url} (toy-world model) ...", flush=True)
    with open(log, "wb") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(out / "server-data")],
            cwd=str(ROOT),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        health = wait_for_health(url, server, log)
        print(f"      {health['base_model']} on {health['device']}, view-mapper {health['view_mapper']}", flush=True)

        print("[2/6] installing the extension into headless Blender ...", flush=True)
        import bpy

        from blender_addon import build

        zip_path = build.build(str(out / "dist"))
        assert bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True
        ) == {"FINISHED"}
        package = "bl_ext.user_default.viewneti"
        prefs = bpy.context.preferences.addons[package].preferences
        prefs.backend_url, prefs.timeout = url, 3600.0  # headless jobs block until done; CPU inversions take minutes

        print(f"[3/6] scene: anchor + camera keyframed on a {args.frames}-frame orbit ...", flush=True)
        bpy.ops.wm.read_homefile(use_factory_startup=True)
        scene = bpy.context.scene
        for obj in list(scene.objects):
            if obj.type != "CAMERA":
                bpy.data.objects.remove(obj, do_unlink=True)
        anchor = bpy.data.objects.new("Anchor", None)
        scene.collection.objects.link(anchor)
        camera = scene.camera
        camera.data.sensor_fit = "VERTICAL"
        camera.data.angle_y = math.radians(40.0)
        keyframe_orbit(bpy, camera, anchor, args.frames, radius=3.6, elevation_deg=25.0)
        scene.frame_start, scene.frame_end = 1, args.frames
        scene.render.resolution_x = scene.render.resolution_y = args.resolution
        settings = scene.viewneti
        settings.anchor, settings.resolution = anchor, args.resolution
        assert bpy.ops.viewneti.refresh_status() == {"FINISHED"}, settings.status_message
        # the add-on's "Use Model Defaults" lets the backend pick steps/guidance; explicit flags override
        settings.use_model_defaults = args.steps is None and args.guidance is None
        if not settings.use_model_defaults:
            settings.steps = args.steps if args.steps is not None else settings.model_steps or settings.steps
            settings.guidance = (
                args.guidance if args.guidance is not None else settings.model_guidance or settings.guidance
            )
        settings.object_name = args.object

        print(f"[4/6] Render Camera Path: {args.frames} frames of '{args.object}' ...", flush=True)
        settings.output_dir = str(out / "frames" / args.object)
        t0 = time.perf_counter()
        assert bpy.ops.viewneti.render_path() == {"FINISHED"}, settings.status_message
        print(f"      {settings.status_message} ({time.perf_counter() - t0:.1f} s)", flush=True)
        # this run's frames only (an earlier run with more frames may have left others in the folder)
        run_frames = range(scene.frame_start, scene.frame_end + 1)
        rows = [[out / "frames" / args.object / f"frame_{f:06d}.png" for f in run_frames]]
        titles = [f"{args.object}"]

        if args.invert_steps:
            print(
                f"[5/6] Invert Reference: frame 1 -> new object '{INVERTED}' ({args.invert_steps} steps) ...",
                flush=True,
            )
            if forget_previous_inversion(url, INVERTED):
                print(f"      (deleted the previous run's '{INVERTED}' from the demo's server data)", flush=True)
            scene.frame_set(1)
            ref_cam = camera.copy()  # the camera that 'took' the reference: frozen at frame 1's pose
            ref_cam.animation_data_clear()
            ref_cam.constraints.clear()
            ref_cam.matrix_world = camera.matrix_world.copy()
            scene.collection.objects.link(ref_cam)
            settings.invert_source = "FILE"
            settings.invert_filepath = str(rows[0][0])
            settings.invert_camera = ref_cam
            settings.invert_name, settings.invert_steps, settings.invert_preview_every = INVERTED, args.invert_steps, 0
            t0 = time.perf_counter()
            assert bpy.ops.viewneti.invert_reference() == {"FINISHED"}, settings.status_message
            print(f"      {settings.status_message} ({time.perf_counter() - t0:.1f} s)", flush=True)
            settings.object_name = INVERTED
            settings.output_dir = str(out / "frames" / INVERTED)
            assert bpy.ops.viewneti.render_path() == {"FINISHED"}, settings.status_message
            rows.append([out / "frames" / INVERTED / f"frame_{f:06d}.png" for f in run_frames])
            titles.append(f"{INVERTED} (from frame 1)")

        print("[6/6] contact sheet and .blend ...", flush=True)
        from viewneti_backend.sheets import contact_sheet

        sheet = contact_sheet(
            [p for row in rows for p in row],
            out / "contact_sheet.png",
            columns=args.frames,
            cell=96,
            labels=[f"frame {f}" for _row in rows for f in run_frames],
            row_titles=titles,
            settings={"command": "demo", "frames": args.frames, "objects": titles, "invert_steps": args.invert_steps},
        )
        scene.frame_set(1)
        blend = out / "viewneti_demo.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        print(f"done: {sheet}\n      {blend}\n      frames in {out / 'frames'}", flush=True)
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
