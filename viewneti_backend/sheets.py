"""Contact sheets: a grid of frames with their file names, for READMEs and quick looks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw


def contact_sheet(
    paths: Sequence[str | Path] | Sequence[Image.Image],
    out: str | Path,
    columns: int | None = None,
    cell: int | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    images = [p if isinstance(p, Image.Image) else Image.open(p).convert("RGB") for p in paths]
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if labels is None:
        labels = [Path(p).stem if not isinstance(p, Image.Image) else "" for p in paths]
    cols = columns or min(8, len(images))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    if cell:
        w, h = cell, round(cell * h / w)
    pad = 14 if any(labels) else 0
    sheet = Image.new("RGB", (cols * w, rows * (h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(zip(images, labels)):
        x, y = (i % cols) * w, (i // cols) * (h + pad)
        sheet.paste(im.resize((w, h), Image.Resampling.NEAREST), (x, y))
        if label:
            draw.text((x + 2, y + h + 1), label[:24], fill="black")
    out = Path(out)
    tmp = out.with_suffix(".tmp.png")
    sheet.save(tmp)
    tmp.replace(out)
    return out
