"""On/off switches read from the environment (``VIEWNETI_KEYS_AHEAD=0`` and the like): one reading rule."""

from __future__ import annotations

import os


def env_switch(name: str, default: bool = True) -> bool:
    """``1`` on, ``0`` off, unset or empty: ``default``; anything else is refused with what to set."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}={value!r}: set it to 1 (on) or 0 (off), or unset it")
    return default if value == "" else value == "1"
