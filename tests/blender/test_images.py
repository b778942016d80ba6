"""PNG bytes <-> image datablocks, the reused background slot, and reference-image encoding."""

import struct
import zlib

import bpy
import pytest
from addon_testutil import addon_module

pytestmark = pytest.mark.blender


@pytest.fixture
def images(scene):
    return addon_module("images")


def solid_png(images, width, height, rgba):
    return images.encode_png(width, height, bytes(rgba) * (width * height))


def decode_png_rgba(data):
    """Tiny decoder for the 8-bit RGBA, filter-0 PNGs that encode_png writes."""
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 4 + 1
    assert all(raw[y * stride] == 0 for y in range(height))
    return width, height, [raw[y * stride + 1 : (y + 1) * stride] for y in range(height)]


def test_store_png_creates_then_updates_in_place(images):
    red = solid_png(images, 32, 24, (255, 0, 0, 255))
    image = images.store_png("ViewNeTI test", red)
    assert image.packed_file is not None and tuple(image.size) == (32, 24)
    assert tuple(image.pixels[0:4]) == pytest.approx((1, 0, 0, 1))
    green = solid_png(images, 16, 40, (0, 255, 0, 255))
    again = images.store_png("ViewNeTI test", green, image)
    assert again == image and tuple(image.size) == (16, 40)
    assert tuple(image.pixels[0:4]) == pytest.approx((0, 1, 0, 1))


def test_store_png_never_overwrites_a_users_image(images):
    mine = bpy.data.images.new("ViewNeTI Camera", 8, 8)  # the user's own image with our name
    image = images.store_png("ViewNeTI Camera", solid_png(images, 16, 16, (1, 2, 3, 255)))
    assert image != mine and tuple(mine.size) == (8, 8) and mine.packed_file is None


def test_background_slot_is_reused(images, scene):
    cam = scene.camera.data
    user_bg = cam.background_images.new()  # a reference the user placed: left alone
    a = images.store_png("ViewNeTI a", solid_png(images, 16, 16, (9, 9, 9, 255)))
    b = images.store_png("ViewNeTI b", solid_png(images, 16, 16, (99, 9, 9, 255)))
    images.set_camera_background(cam, a)
    images.set_camera_background(cam, b)
    assert len(cam.background_images) == 2 and cam.background_images[1].image == b
    assert cam.background_images[0] == user_bg and user_bg.image is None
    assert images.clear_camera_background(cam) and len(cam.background_images) == 1


def test_generated_image_is_encoded_from_pixels_top_row_first(images):
    image = bpy.data.images.new("ref", 4, 2, alpha=True)
    pixels = [0.0] * 32
    pixels[0:4] = [1.0, 0.0, 0.0, 1.0]  # Blender's first pixel is bottom-left
    image.pixels.foreach_set(pixels)
    width, height, rows = decode_png_rgba(images.image_to_png_bytes(image))
    assert (width, height) == (4, 2)
    assert rows[1][0:4] == bytes([255, 0, 0, 255])  # bottom row of the PNG
    assert rows[0][0:4] == bytes([0, 0, 0, 0])


def test_float_image_is_converted_to_srgb(images):
    image = bpy.data.images.new("ref_float", 2, 1, alpha=True, float_buffer=True)
    image.pixels.foreach_set([0.2140, 0.2140, 0.2140, 1.0] * 2)  # linear 0.214 is sRGB ~0.5
    _w, _h, rows = decode_png_rgba(images.image_to_png_bytes(image))
    assert abs(rows[0][0] - 128) <= 1 and rows[0][3] == 255


def test_reference_file_in_another_format_is_converted(images, tmp_path):
    image = bpy.data.images.new("tmp_ref", 8, 6)
    image.filepath_raw = str(tmp_path / "ref.tga")
    image.file_format = "TARGA"
    image.save()
    data = images.read_image_file(str(tmp_path / "ref.tga"))
    assert images.png_size(data) == (8, 6)
    with pytest.raises(ValueError, match="not found"):
        images.read_image_file(str(tmp_path / "missing.png"))


def _jpeg(width, height, color, progressive=False):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="JPEG", quality=95, progressive=progressive)
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_size_reads_the_frame_header(images, progressive):
    data = _jpeg(40, 24, (10, 200, 30), progressive)
    assert images.jpeg_size(data) == (40, 24)
    assert images.image_size(data) == (40, 24, "JPEG")
    assert images.jpeg_size(b"\x89PNG\r\n\x1a\n") is None and images.jpeg_size(data[:20]) is None
    assert images.image_size(b"GIF89a....") is None


def test_store_png_takes_live_jpeg_previews_and_back(images):
    """Live mode asks the backend for JPEG (encoded in ~1 ms); the same image datablock then takes PNGs again."""
    image = images.store_png("ViewNeTI live", _jpeg(32, 16, (250, 10, 10)))
    assert image.file_format == "JPEG" and tuple(image.size) == (32, 16)
    values = [0.0] * (32 * 16 * 4)
    image.pixels.foreach_get(values)
    assert values[0] > 0.9 and values[1] < 0.1  # red, decoded by Blender
    again = images.store_png("ViewNeTI live", solid_png(images, 8, 8, (0, 0, 255, 255)), image)
    assert again == image and image.file_format == "PNG" and tuple(image.size) == (8, 8)
