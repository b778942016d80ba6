"""Build the extension zip without Blender: ``python -m blender_addon.build --out dist``.

The zip holds the add-on's files with ``blender_manifest.toml`` at its root, which is what
``Install from Disk`` and ``bpy.ops.extensions.package_install_files`` expect. Caches, hidden
files and this script stay out.
"""

import argparse
import os
import sys
import tomllib
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXCLUDED_DIRS = {"__pycache__"}
EXCLUDED_FILES = {"build.py", "demo.py"}  # tools that run outside Blender's add-on system


def read_manifest(source=HERE):
    with open(os.path.join(source, "blender_manifest.toml"), "rb") as handle:
        return tomllib.load(handle)


def package_files(source=HERE):
    """Relative paths of the files that belong in the extension, sorted for reproducible zips."""
    found = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), source)
            if name.startswith(".") or name.endswith((".pyc", ".pyo")) or rel in EXCLUDED_FILES:
                continue
            found.append(rel)
    return found


def build(out_dir, source=HERE):
    """Write ``<out_dir>/<id>-<version>.zip`` and return its path."""
    manifest = read_manifest(source)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{manifest['id']}-{manifest['version']}.zip")
    tmp = path + ".part"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in package_files(source):
            info = zipfile.ZipInfo(rel.replace(os.sep, "/"), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(os.path.join(source, rel), "rb") as handle:
                archive.writestr(info, handle.read())
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
