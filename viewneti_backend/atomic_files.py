"""Writes that never leave a half-written file or folder behind (a temp next to the target, then a rename)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text (JSON results, configs)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def replace_directory(src: Path, dst: Path) -> None:
    """Move a finished temp folder into place; an existing ``dst`` is swapped out, never half-overwritten."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
