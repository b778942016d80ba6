"""The toy world: a procedural renderer, captions, a CLIP-compatible tokenizer and a tiny
Stable-Diffusion-architecture text-to-image prior trained on the renderer's images.

Everything uses the project's camera convention (:mod:`viewneti_backend.cameras`): Blender's,
+Z up, cameras look down their local -Z with +Y up, poses are camera_to_anchor 4x4 matrices, and
the anchor is the world origin (the centre of the object's footprint on the ground plane z=0).
"""

from pathlib import Path as _Path

from .renderer import (  # noqa: F401
    Primitive,
    ToyObject,
    orbit_cameras,
    random_cameras,
    render,
)

WEIGHTS_DIR = _Path(__file__).resolve().parent / "weights"


def default_prior_path() -> _Path:
    """The shipped toy prior (a StableDiffusionPipeline folder); load it with ``prior.model.load_prior``."""
    return WEIGHTS_DIR / "prior"
