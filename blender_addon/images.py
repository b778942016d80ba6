"""Images: PNG bytes <-> image datablocks, and the one camera background slot the add-on owns.

Main thread only (bpy). The PNG helpers at the top are pure and also used off the main thread.
"""

import os
import struct
import tempfile
import zlib

import bpy

OWNER_KEY = "viewneti"  # custom property marking images made by the add-on
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- pure PNG helpers ------------------------------------------------------------------------


def png_size(data):
    """(width, height) from a PNG's IHDR, or None if the bytes are not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def encode_png(width, height, rgba, flip=True):
    """8-bit RGBA PNG from ``width*height*4`` bytes; `flip` turns Blender's bottom-up rows top-down."""
    stride = width * 4
    rows = [bytes(rgba[y * stride : (y + 1) * stride]) for y in range(height)]
    if flip:
        rows.reverse()
    raw = b"".join(b"\x00" + row for row in rows)

    def chunk(tag, payload):
        crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _clamp(x):
    return min(1.0, max(0.0, x))


def _linear_to_srgb(x):
    x = _clamp(x)
    return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055


# -- colour management -----------------------------------------------------------------------

# The backend's PNGs are display-referred sRGB: they already look the way they should. Blender shows
# an sRGB image through the scene's view transform (AgX by default since 4.0) wherever "View as
# Render" applies or the image is used in a render, which tone-maps it a second time. An image tagged
# with the display colour space that the scene's view transform inverts comes out as its own pixels
# there: AgX -> "AgX Base sRGB", Filmic -> "Filmic sRGB", ... ("Standard" is plain sRGB). Measured
# through Image.save_render (which applies the scene's view transform) on random colours: Standard and
# Raw exact, Filmic mean 0.06/255 (max 11), AgX mean 5.6/255 where plain sRGB is 20.3/255 off.
VIEW_TRANSFORM_COLORSPACES = {
    "Standard": "sRGB",
    "AgX": "AgX Base sRGB",
    "Filmic": "Filmic sRGB",
    "Khronos PBR Neutral": "Khronos PBR Neutral sRGB",
    "Raw": "Non-Color",
}


def match_view_transform(image, scene):
    """Tag an add-on image so the scene's view transform shows its pixels unchanged (see above).

    View transforms without an inverse colour space (False Color, ...) keep plain sRGB, shown without
    the view transform (View as Render off). Returns the colour space chosen."""
    view = getattr(getattr(scene, "view_settings", None), "view_transform", "Standard") if scene else "Standard"
    colorspace = VIEW_TRANSFORM_COLORSPACES.get(view)
    try:
        image.colorspace_settings.name = colorspace or "sRGB"
    except TypeError:  # an OCIO config without that colour space: plain sRGB, no view transform
        colorspace = None
        image.colorspace_settings.name = "sRGB"
    image.use_view_as_render = colorspace is not None and view != "Standard"
    return image.colorspace_settings.name


# -- datablocks ------------------------------------------------------------------------------


def store_png(name, data, image=None, scene=None):
    """Create or update a packed image from PNG bytes; no temp file, datablock identity kept.

    `image` (e.g. the camera's last render) is updated in place when it is one of ours, so every
    user of it (camera background, texture nodes) shows the newest render. Otherwise an image of
    ours called `name` is reused, or a new one is made; a user's own image is never overwritten.
    """
    size = png_size(data)
    if size is None:
        raise ValueError("not a PNG image")
    if not _updatable(image):
        image = bpy.data.images.get(name)
        if not _updatable(image):
            image = bpy.data.images.new(name, width=size[0], height=size[1])
            image[OWNER_KEY] = "still"
    image.pack(data=data, data_len=len(data))
    image.source = "FILE"
    image.file_format = "PNG"
    if scene is not None:
        match_view_transform(image, scene)
    image.buffers_free()  # decode the new packed bytes on next use (size and pixels update)
    return image


def _updatable(image):
    return owned(image) and image.library is None and image.source in {"FILE", "GENERATED"}


def owned(image):
    return image is not None and OWNER_KEY in image


def background_slot(camera_data, create=True):
    """The add-on's background slot on a camera: reuse the one showing an image of ours."""
    for bg in camera_data.background_images:
        if owned(bg.image):
            return bg
    if not create:
        return None
    bg = camera_data.background_images.new()
    bg.alpha = 1.0
    bg.display_depth = "BACK"
    bg.frame_method = "FIT"
    return bg


def set_camera_background(camera_data, image):
    """Show `image` behind the camera (visible when looking through it; never in renders)."""
    bg = background_slot(camera_data)
    bg.source = "IMAGE"
    bg.image = image
    bg.show_background_image = True
    camera_data.show_background_images = True
    return bg


def clear_camera_background(camera_data):
    """Remove the add-on's slot from a camera; the images themselves stay in the file."""
    bg = background_slot(camera_data, create=False)
    if bg is None:
        return False
    camera_data.background_images.remove(bg)
    return True


def load_image_sequence(first_path, frame_first, frame_last, name, scene=None):
    """Load ``frame_NNNNNN.png`` files as one image sequence datablock (reloading an existing one)."""
    image = bpy.data.images.get(name)
    if image is not None and owned(image) and image.library is None:
        image.filepath = first_path
        image.source = "SEQUENCE"
        image.reload()
    else:
        image = bpy.data.images.load(first_path, check_existing=False)
        image.name = name
        image.source = "SEQUENCE"
        image[OWNER_KEY] = "sequence"
    if bpy.data.filepath:  # keep the project movable: frames next to the .blend stay relative
        try:
            image.filepath = bpy.path.relpath(first_path)
        except ValueError:  # another drive (Windows): keep it absolute
            pass
    image[OWNER_KEY + "_frames"] = [int(frame_first), int(frame_last)]
    if scene is not None:
        match_view_transform(image, scene)
    return image


def set_camera_sequence_background(camera_data, image, frame_first, frame_last):
    """Show a sequence so that scene frame f displays file ``frame_f``.

    Blender picks file number ``f - frame_start + 1 + frame_offset``; with frame_start = first
    and frame_offset = first - 1 that is f itself, for f in [first, last].
    """
    bg = set_camera_background(camera_data, image)
    user = bg.image_user
    user.frame_start = int(frame_first)
    user.frame_offset = int(frame_first) - 1
    user.frame_duration = int(frame_last) - int(frame_first) + 1
    user.use_cyclic = False
    user.use_auto_refresh = True
    return bg


def image_to_png_bytes(image, use_file=True):
    """Encoded bytes of an image datablock for upload: original file bytes when possible.

    Packed or on-disk PNG/JPEG bytes go as they are (no colour management round trip); anything
    else (generated, float, edited) is encoded from its pixels, float buffers converted to sRGB.
    """
    if use_file and not image.is_dirty and image.source == "FILE" and image.file_format in {"PNG", "JPEG"}:
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = bpy.path.abspath(image.filepath, library=image.library) if image.filepath else ""
        if path and os.path.isfile(path):
            with open(path, "rb") as handle:
                return handle.read()
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"Image '{image.name}' has no pixels: load or generate it first.")
    pixels = [0.0] * (width * height * 4)
    image.pixels.foreach_get(pixels)
    if image.is_float:  # float buffers hold linear values; PNG wants sRGB (alpha stays linear)
        values = (_linear_to_srgb(v) if i % 4 != 3 else _clamp(v) for i, v in enumerate(pixels))
    else:  # byte buffers already hold display values
        values = (_clamp(v) for v in pixels)
    return encode_png(width, height, bytes(int(v * 255 + 0.5) for v in values))


def read_image_file(path):
    """Upload bytes of a reference image on disk: PNG/JPEG as they are, other formats via Blender."""
    path = bpy.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Reference image not found: {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith((PNG_SIGNATURE, b"\xff\xd8\xff")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return data  # formats the backend decodes itself: send the original bytes
    image = bpy.data.images.load(path, check_existing=False)  # EXR, TIFF, WebP...: let Blender decode
    try:
        if image.size[0] == 0:
            raise ValueError(f"Blender cannot read the reference image {path}: use a PNG or JPEG.")
        return image_to_png_bytes(image, use_file=False)
    finally:
        bpy.data.images.remove(image)


def default_output_dir(blend_filepath):
    """``//viewneti_frames/`` next to a saved .blend, else a temp folder (unsaved files have no //)."""
    if blend_filepath:
        return bpy.path.abspath("//viewneti_frames/")
    return os.path.join(tempfile.gettempdir(), "viewneti_frames")
