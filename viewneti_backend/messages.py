"""What the command-line tools tell the user on stderr, besides progress bars: warnings and notes.

One place, so that ``render``, ``eval``, ``invert``, ``train`` and ``pretrain`` say the same thing
about the same data (which split of a NeRF-synthetic folder was used, which photos were undistorted),
each message once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from .data import Scene


def print_warnings(warnings: Iterable[str]) -> None:
    """``warning: ...`` lines on stderr, duplicates dropped."""
    for w in dict.fromkeys(warnings):
        print(f"warning: {w}", file=sys.stderr)


def print_notes(notes: Iterable[str]) -> None:
    """``note: ...`` lines on stderr, duplicates dropped."""
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)


def print_scene_messages(scenes: Scene | Iterable[Scene]) -> None:
    """What loading these scenes decided for the user (``scene.meta`` notes and warnings), each once."""
    scenes = [scenes] if isinstance(scenes, Scene) else list(scenes)
    print_notes(n for s in scenes for n in s.meta.get("notes", []))
    print_warnings(w for s in scenes for w in s.meta.get("warnings", []))
