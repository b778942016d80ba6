"""Where a user's data lives by default: ``$VIEWNETI_DATA_DIR``, else ``~/.local/share/viewneti``.

One definition for the CLI (``viewneti``: its object library) and the server (``viewneti-server``: the
library and the jobs), so that both find the objects the other made. Stdlib only.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "VIEWNETI_DATA_DIR"
LIBRARY_DIR_NAME = "objects"  # <data-dir>/objects: the user's object tokens


def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.local/share/viewneti").expanduser()


def library_dir(data_dir: Path | None = None) -> Path:
    """The object library inside ``data_dir`` (default: :func:`default_data_dir`)."""
    return (data_dir if data_dir is not None else default_data_dir()) / LIBRARY_DIR_NAME
