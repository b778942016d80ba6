"""Render shapes: what one compiled render graph is specialised to. Torch-free (argument parsing uses it)."""

from __future__ import annotations

import dataclasses

from .errors import InputError


@dataclasses.dataclass(frozen=True, order=True)
class RenderShape:
    """What a compiled render graph is specialised to: views per UNet call, image size, guidance on/off."""

    views: int
    width: int
    height: int
    cfg: bool = True

    @classmethod
    def of_render(cls, views: int, width: int, height: int, guidance: float) -> RenderShape:
        """The shape a render of ``views`` cameras at this size runs at: guidance 1 skips the CFG batch."""
        return cls(views, width, height, guidance != 1.0)

    def label(self) -> str:
        return (
            f"{self.width}x{self.height}"
            + (f"x{self.views}" if self.views != 1 else "")
            + ("" if self.cfg else "-nocfg")
        )

    @classmethod
    def parse(cls, text: str) -> RenderShape:
        """``WxH`` or ``WxHxN`` (N views per call, e.g. a sequence batch), with classifier-free guidance;
        ``-nocfg`` at the end (as :meth:`label` writes it): without."""
        body = text.lower()
        cfg = not body.endswith("-nocfg")
        body = body.removesuffix("-nocfg")
        try:
            parts = [int(v) for v in body.split("x")]
            if len(parts) not in (2, 3) or min(parts) < 1:
                raise ValueError
        except ValueError:
            raise InputError(
                f"render shape {text!r} must look like 512x512 or 768x576x4 (width x height [x views])"
            ) from None
        return cls(parts[2] if len(parts) == 3 else 1, parts[0], parts[1], cfg)
