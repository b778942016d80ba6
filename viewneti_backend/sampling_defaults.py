"""Per-model recommended sampling settings, read from ``<model>/viewneti/sampling.json``.

Like a diffusers pipeline reading its defaults from a saved config, a model folder may say how it
wants to be sampled::

    {"guidance": 2.0, "steps": 20, "live_steps": 8}

``guidance`` is the classifier-free guidance scale, ``steps`` the denoising steps of a normal render
and ``live_steps`` the (fewer) steps a client should use for interactive previews. Keys left out
take Stable Diffusion 2's values (7.5, 30, 8), as does a model without the file (a hub id, a plain
diffusers folder). Unknown keys and out-of-range values are errors that name the key and the file.

The engine loads these once (``Engine.sampling``) and uses them whenever a render leaves ``steps``
or ``guidance`` out; the CLI, the HTTP API and the Blender add-on all defer to them. Pure standard
library (no torch), so the server and tools can import it cheaply.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import limits
from .atomic_files import atomic_write_text
from .errors import InputError

FILENAME = "sampling.json"
BUNDLE_DIR = "viewneti"  # a model folder's ViewNeTI sub-folder: view-mapper, objects, this file (engine.py uses it too)

SD_GUIDANCE = 7.5
SD_STEPS = 30
SD_LIVE_STEPS = 8
MIN_GUIDANCE, MAX_GUIDANCE = limits.MIN_GUIDANCE, limits.MAX_GUIDANCE
MIN_STEPS, MAX_STEPS = 1, limits.MAX_STEPS
# the help of every command-line option that leaves steps or guidance to the model
RECOMMENDED_HELP = (
    f"(default: the model's recommended value from <model>/{BUNDLE_DIR}/{FILENAME}; "
    f"{SD_STEPS} steps / guidance {SD_GUIDANCE:g} for models without one; `viewneti info` shows it)"
)


# The inversion defaults (GPU_INVERT_STEPS, CPU_INVERT_STEPS, default_invert_steps) live in .limits.


class SamplingDefaultsError(InputError):
    """A ``sampling.json`` that cannot be used (bad JSON, unknown key, value out of range)."""


def _check_guidance(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingDefaultsError(f"{where}: 'guidance' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not MIN_GUIDANCE <= value <= MAX_GUIDANCE:
        raise SamplingDefaultsError(
            f"{where}: 'guidance' must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g} "
            f"(classifier-free guidance scale), got {value!r}"
        )
    return value


def _check_steps(key: str, value: object, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingDefaultsError(f"{where}: '{key}' must be a whole number of denoising steps, got {value!r}")
    if not MIN_STEPS <= value <= MAX_STEPS:
        raise SamplingDefaultsError(f"{where}: '{key}' must be between {MIN_STEPS} and {MAX_STEPS}, got {value}")
    return value


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's recommended sampling settings (defaults: Stable Diffusion 2's)."""

    guidance: float = SD_GUIDANCE
    steps: int = SD_STEPS
    live_steps: int = SD_LIVE_STEPS

    def __post_init__(self) -> None:
        self.validate("sampling defaults")

    def validate(self, where: str) -> None:
        object.__setattr__(self, "guidance", _check_guidance(self.guidance, where))
        object.__setattr__(self, "steps", _check_steps("steps", self.steps, where))
        object.__setattr__(self, "live_steps", _check_steps("live_steps", self.live_steps, where))

    # -- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: object, where: str = "sampling defaults") -> SamplingDefaults:
        if not isinstance(data, dict):
            raise SamplingDefaultsError(
                f"{where}: expected a JSON object like "
                f'{{"guidance": 7.5, "steps": 30, "live_steps": 8}}, got {type(data).__name__}'
            )
        known = cls.keys()
        for key in data:
            if key not in known:
                raise SamplingDefaultsError(f"{where}: unknown key {key!r} (allowed: {', '.join(known)})")
        values = {"guidance": SD_GUIDANCE, "steps": SD_STEPS, "live_steps": SD_LIVE_STEPS, **data}
        guidance = _check_guidance(values["guidance"], where)
        steps = _check_steps("steps", values["steps"], where)
        live_steps = _check_steps("live_steps", values["live_steps"], where)
        return cls(guidance=guidance, steps=steps, live_steps=live_steps)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SamplingDefaults:
        """Read and validate one ``sampling.json``; errors name the file and the offending key."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SamplingDefaultsError(f"cannot read the sampling defaults {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SamplingDefaultsError(f"{path} is not valid JSON ({exc}): fix or delete it") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike | None) -> SamplingDefaults:
        """The model's ``viewneti/sampling.json``, or Stable Diffusion 2's values when it has none
        (including hub ids and other non-folder model names)."""
        if model_dir:
            path = Path(model_dir) / BUNDLE_DIR / FILENAME
            if path.is_file():
                return cls.from_json(path)
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON (atomically: a temporary file then a rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # -- use ---------------------------------------------------------------------------------------
    def resolve(self, steps: int | None = None, guidance: float | None = None) -> tuple[int, float]:
        """``(steps, guidance)`` with ``None`` replaced by these defaults; explicit values win."""
        return (self.steps if steps is None else steps), (self.guidance if guidance is None else guidance)
