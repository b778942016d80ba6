"""Images: PNG bytes <-> image datablocks, and the one camera background slot the add-on owns.

Main thread only (bpy). The PNG helpers at the top are pure and also used off the main thread, as
is :class:`PixelSnapshot` (pixels read on the main thread, converted and encoded on a worker).
"""

import array
import os
import struct
import tempfile
import zlib

import bpy

from .client import PNG_SIGNATURE, image_size, jpeg_size, png_size  # noqa: F401 - png_size/jpeg_size are part of this module's API

OWNER_KEY = "viewneti"  # custom property marking images made by the add-on


# -- pure PNG helpers ------------------------------------------------------------------------


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


_LUT_SIZE = 4096  # linear float -> sRGB byte through a table: 12 bits of input are below a byte's step
_SRGB_LUT = bytes(int(_linear_to_srgb(i / (_LUT_SIZE - 1)) * 255 + 0.5) for i in range(_LUT_SIZE))
_BYTE_LUT = bytes(int(i / (_LUT_SIZE - 1) * 255 + 0.5) for i in range(_LUT_SIZE))


class PixelSnapshot:
    """An image's float RGBA pixels (bottom-up rows, as Blender keeps them), copied on the main thread;
    :meth:`to_png` converts and encodes them on any thread (seconds for a large float image)."""

    def __init__(self, width, height, pixels, is_float):
        self.width, self.height, self.pixels, self.is_float = int(width), int(height), pixels, bool(is_float)

    @property
    def size(self):
        return self.width, self.height

    def to_png(self):
        n = _LUT_SIZE - 1
        color = _SRGB_LUT if self.is_float else _BYTE_LUT  # float buffers hold linear values; PNG wants sRGB
        out = bytearray(len(self.pixels))
        for i, v in enumerate(self.pixels):
            k = 0 if not v > 0.0 else (n if v >= 1.0 else int(v * n + 0.5))  # NaN -> 0
            out[i] = _BYTE_LUT[k] if i % 4 == 3 else color[k]  # alpha stays linear
        return encode_png(self.width, self.height, bytes(out))


def image_snapshot(image, use_file=True):
    """What to upload for an image datablock (main thread, fast): the original file bytes when
    possible (packed or on-disk PNG/JPEG, no colour management round trip), else a PixelSnapshot."""
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
    pixels = array.array("f", bytes(4 * width * height * 4))
    image.pixels.foreach_get(pixels)
    return PixelSnapshot(width, height, pixels, image.is_float)


def upload_bytes(snapshot):
    """Encoded bytes of what :func:`image_snapshot` returned (any thread)."""
    return snapshot.to_png() if isinstance(snapshot, PixelSnapshot) else snapshot


def snapshot_size(snapshot):
    """(width, height) of a snapshot or of PNG bytes, else None (JPEG: the server reads it)."""
    return snapshot.size if isinstance(snapshot, PixelSnapshot) else png_size(snapshot)


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
    """Create or update a packed image from PNG (or JPEG: live previews) bytes; no temp file, datablock
    identity kept. With ``scene``, the image is tagged for the scene's view transform (see above).

    `image` (e.g. the camera's last render) is updated in place when it is one of ours, so every
    user of it (camera background, texture nodes) shows the newest render. Otherwise an image of
    ours called `name` is reused, or a new one is made; a user's own image is never overwritten.
    """
    size = image_size(data)
    if size is None:
        raise ValueError("not a PNG or JPEG image")
    if image is None or not _updatable(image):
        image = bpy.data.images.get(name)
        if not _updatable(image):
            image = bpy.data.images.new(name, width=size[0], height=size[1])
            image[OWNER_KEY] = "still"
    image.pack(data=data, data_len=len(data))
    image.source = "FILE"
    image.file_format = size[2]
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
    if bg is None:  # create=True always returns a slot
        raise RuntimeError("could not add a background image slot to the camera")
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
    Blocking: the add-on's invert path takes an :func:`image_snapshot` and encodes it on the job's
    worker thread instead.
    """
    return upload_bytes(image_snapshot(image, use_file))


def read_image_file(path):
    """Upload bytes of a reference image on disk: PNG/JPEG as they are, other formats via Blender."""
    return upload_bytes(read_image_snapshot(path))


def read_image_snapshot(path):
    """:func:`read_image_file` without the encoding: file bytes, or a PixelSnapshot of what Blender read."""
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
        return image_snapshot(image, use_file=False)
    finally:
        bpy.data.images.remove(image)


def default_output_dir(blend_filepath):
    """``//viewneti_frames/`` next to a saved .blend, else a temp folder (unsaved files have no //)."""
    if blend_filepath:
        return bpy.path.abspath("//viewneti_frames/")
    return os.path.join(tempfile.gettempdir(), "viewneti_frames")
