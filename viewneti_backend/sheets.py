"""Contact sheets, PNGs that carry their settings, and run manifests.

A sheet is a grid of frames with readable labels (small 64-px renders are enlarged, pixel for pixel)
and optional row titles. Every PNG written here can carry ``tEXt`` chunks with the settings that made
it (``Software`` and a ``viewneti`` JSON object), so a file found later says what it is; a run's
manifest (cameras, seed, steps, model, files) is JSON next to its outputs. All writes are atomic.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from . import __version__
from .atomic_files import atomic_write_bytes, atomic_write_text

METADATA_KEY = "viewneti"  # tEXt keyword holding the JSON settings
MIN_CELL = 160  # px: sheet cells are enlarged to at least this width so labels stay readable


def png_info(settings: Mapping[str, Any] | None) -> PngInfo:
    """tEXt chunks: ``Software`` and, if given, the settings as one JSON object under ``viewneti``."""
    info = PngInfo()
    info.add_text("Software", f"viewneti {__version__}")
    if settings:
        info.add_text(METADATA_KEY, json.dumps(settings, sort_keys=True, default=str))
    return info


def read_png_settings(path: str | Path) -> dict[str, Any]:
    """The settings a PNG written by :func:`save_png` carries ({} if none)."""
    with Image.open(path) as im:
        text = getattr(im, "text", {}) or {}
    raw = text.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def save_png(image: Image.Image, path: str | Path, settings: Mapping[str, Any] | None = None) -> Path:
    """Write a PNG atomically, with the settings that made it as tEXt metadata."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(settings))
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)
    return path


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> Path:
    """A run's JSON record (cameras, seed, steps, model, files), written atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    paths: Sequence[str | Path] | Sequence[Image.Image],
    out: str | Path,
    columns: int | None = None,
    cell: int | None = None,
    labels: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Grid of ``paths`` (files or images), ``columns`` per row, a label under each, a title left of
    each row; cells are ``cell`` px wide (default: the image width, at least :data:`MIN_CELL`)."""
    images = [p if isinstance(p, Image.Image) else Image.open(p).convert("RGB") for p in paths]
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if labels is None:
        labels = [Path(p).stem if not isinstance(p, Image.Image) else "" for p in paths]
    cols = columns or min(8, len(images))
    rows = math.ceil(len(images) / cols)
    w0, h0 = images[0].size
    w = cell or max(w0, MIN_CELL)
    h = round(w * h0 / w0)
    font_size = max(12, min(18, w // 10))
    font = _font(font_size)
    pad = font_size + 8 if any(labels) else 0
    gap = 4
    titles = list(row_titles or [])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_w = (min(320, max(int(probe.textlength(t, font=font)) for t in titles) + 16)) if titles else 0
    sheet = Image.new("RGB", (title_w + cols * (w + gap) + gap, rows * (h + pad + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for r, title in enumerate(titles[:rows]):
        y = gap + r * (h + pad + gap) + h // 2 - font_size // 2
        draw.text((8, y), _fit(draw, title, font, title_w - 12), fill="black", font=font)
    for i, (im, label) in enumerate(zip(images, labels)):
        x = title_w + gap + (i % cols) * (w + gap)
        y = gap + (i // cols) * (h + pad + gap)
        # enlarge small renders pixel for pixel (NEAREST), shrink large ones smoothly
        resample = Image.Resampling.NEAREST if w >= im.size[0] else Image.Resampling.LANCZOS
        sheet.paste(im.resize((w, h), resample), (x, y))
        if label:
            draw.text((x + 2, y + h + 3), _fit(draw, label, font, w - 4), fill="black", font=font)
    return save_png(sheet, out, settings)
