"""Safe image decoding for uploads (inversion references) and PNG encoding of results.

Limits are checked before any pixel is decoded: the encoded size, then the header's width x height
(PIL reads only the header in ``Image.open``), then the pixels are loaded with PIL's own
decompression-bomb guard turned into an error. Only PNG, JPEG and WebP are accepted.

Decoded references are what the camera saw: the EXIF orientation is applied, 16-bit greyscale is
scaled to 8 bits (not clipped to white), and an image with an alpha channel stays RGBA: the engine
composites it on the background its model expects (:func:`viewneti_backend.engine.flatten_reference`).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps

from viewneti_backend import limits

from .errors import ApiError

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PIL's own guard applies to every decode in the process: anything above this raises
# DecompressionBombError (we check the header first, so this is a second line of defence).
Image.MAX_IMAGE_PIXELS = limits.MAX_REFERENCE_PIXELS


def decode_base64_image(data: str, *, what: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode one base64 image (a ``data:image/...;base64,`` prefix is accepted) into RGB(A), or raise ApiError."""
    return decode_image_bytes(decode_base64(data, what=what, max_bytes=max_bytes), what=what, max_pixels=max_pixels)


def decode_base64(data: str, *, what: str, max_bytes: int) -> bytes:
    """The file bytes of one base64 image upload, size-checked (no pixel is decoded)."""
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{what}: expected a base64-encoded PNG, JPEG or WebP string")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    # base64 is 4/3 of the raw size: reject before allocating the decoded bytes.
    if len(data) > (max_bytes * 4) // 3 + 8:
        raise ApiError(
            413,
            f"{what}: the encoded image is larger than {max_bytes // (1024 * 1024)} MB: "
            "downscale it or save it as JPEG",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what}: not valid base64: encode the image file's bytes with standard base64") from None
    if len(raw) > max_bytes:
        raise ApiError(413, f"{what}: the image file is larger than {max_bytes // (1024 * 1024)} MB")
    return raw


def _to_display_mode(img: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency; 16/32-bit greyscale scaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def decode_image_bytes(raw: bytes, *, what: str, max_pixels: int) -> Image.Image:
    side = int(max_pixels**0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=sorted(ALLOWED_FORMATS))
            fmt = img.format
            w, h = img.size
            if fmt not in ALLOWED_FORMATS:
                raise ApiError(400, f"{what}: unsupported format {fmt}; send PNG, JPEG or WebP")
            if w < 1 or h < 1:
                raise ApiError(400, f"{what}: the image is empty ({w}x{h})")
            if w * h > max_pixels or w > side or h > side:
                raise ApiError(
                    413, f"{what}: the image is {w}x{h} pixels, more than the limit of {side}x{side}: downscale it"
                )
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img = ImageOps.exif_transpose(img) or img  # what the camera saw, not the sensor's row order
            out = _to_display_mode(img)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(
            413,
            f"{what}: the image decompresses to too many pixels (decompression bomb?): "
            f"send a normal image of at most {limits.MAX_REFERENCE_SIDE}x{limits.MAX_REFERENCE_SIDE}",
        ) from None
    except Image.UnidentifiedImageError:
        raise ApiError(400, f"{what}: not a PNG, JPEG or WebP image (could not identify the file)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ApiError(
            400, f"{what}: the image could not be decoded ({type(exc).__name__}: {exc}); re-save it as PNG or JPEG"
        ) from None
    return out


def encode_png(img: Image.Image) -> bytes:
    """Compressed PNG (PIL, zlib level 1): for files kept on disk and previews sent as base64."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# -- responses: the client picks the format (Accept), each encoded in about a millisecond ----------------
PNG, JPEG = "image/png", "image/jpeg"
RESPONSE_TYPES = (PNG, JPEG)
JPEG_QUALITY = 95  # 4:2:0 at 95 is visually lossless for previews; ~1 ms at 512x512


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def encode_png_stored(img: Image.Image) -> bytes:
    """An uncompressed PNG (filter None, deflate 'stored' blocks): lossless and deterministic, ~1 ms at
    512x512 where PIL's compressed PNG takes ~50 ms. Meant for loopback responses, where bytes are
    free and the encode time is what the user waits for."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    h, w, _ = arr.shape
    raw = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = arr.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(raw.tobytes(), 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_response_image(img: Image.Image, media_type: str) -> bytes:
    return encode_jpeg(img) if media_type == JPEG else encode_png_stored(img)


def negotiate_image_type(accept: str | None) -> str:
    """The response format for an ``Accept`` header: JPEG when the client prefers it, else PNG (also when
    it accepts neither: RFC 9110 lets a server send its default rather than 406). RFC 9110: each type takes the q of its most specific matching range
    (``image/png`` > ``image/*`` > ``*/*``); the highest q wins, ties go to PNG."""
    if not accept or not accept.strip():
        return PNG
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = [part.strip() for part in item.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    best, best_q = PNG, 0.0
    for media_type in RESPONSE_TYPES:  # PNG first: it keeps ties
        for pattern in (media_type, "image/*", "*/*"):
            qs = [q for media, q in ranges if media == pattern]
            if qs:
                if max(qs) > best_q:
                    best, best_q = media_type, max(qs)
                break
    return best


def png_base64(img: Image.Image) -> str:
    return base64.b64encode(encode_png(img)).decode("ascii")
