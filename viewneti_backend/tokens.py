"""The object-token library: named object-mappers on disk (one folder each, safetensors + JSON).

Built-in objects ship read-only with a model (the toy world's); user objects (inversions) live in
a writable folder and are written atomically: a crash never leaves a half-written token.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import torch

from .errors import InputError, NameTakenError, NotFoundError
from .limits import NAME_RE, NAME_RULE, is_valid_name
from .mapper import CONFIG_NAME, WEIGHTS_NAME, NeTIMapper

NAME_PATTERN = NAME_RE  # defined in .limits


def validate_token_name(name: object) -> str:
    """Object names become folder names: letters, digits, '_' and '-', at most 64, no paths, no newline."""
    if not is_valid_name(name):
        raise InputError(f"invalid object name {name!r}: {NAME_RULE}")
    return name


class ObjectLibrary:
    """Lists, loads, saves and deletes object tokens; user entries shadow nothing built in."""

    def __init__(self, user_dir: str | Path | None = None, builtin_dirs: list[str | Path] | None = None):
        self.user_dir = Path(user_dir) if user_dir else None
        self.builtin_dirs = [Path(d) for d in (builtin_dirs or []) if Path(d).is_dir()]
        if self.user_dir:
            try:
                self.user_dir.mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only data dir: list/load what is there; save() says what is wrong
                pass
        self._cache: dict[str, NeTIMapper] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _is_token_dir(path: Path) -> bool:
        return (
            path.is_dir()
            and not path.name.startswith(".")
            and (path / CONFIG_NAME).is_file()
            and (path / WEIGHTS_NAME).is_file()
        )

    def _locate(self, name: str) -> tuple[Path, bool] | None:
        for d in self.builtin_dirs:
            if self._is_token_dir(d / name):
                return d / name, True
        if self.user_dir and self._is_token_dir(self.user_dir / name):
            return self.user_dir / name, False
        return None

    def names(self) -> list[str]:
        seen: list[str] = []
        for d in self.builtin_dirs + ([self.user_dir] if self.user_dir and self.user_dir.is_dir() else []):
            for p in sorted(d.iterdir()):
                if self._is_token_dir(p) and p.name not in seen:
                    seen.append(p.name)
        return seen

    def exists(self, name: str) -> bool:
        return is_valid_name(name) and self._locate(name) is not None

    def entry(self, name: str) -> dict:
        found = self._locate(validate_token_name(name))
        if not found:
            raise NotFoundError(
                f"unknown object '{name}': GET /v1/objects (or `viewneti info`) lists the available ones"
            )
        path, builtin = found
        import json

        cfg = json.loads((path / CONFIG_NAME).read_text())
        extra = cfg.get("extra", {})
        return {
            "name": name,
            "builtin": builtin,
            "base_model": cfg.get("base_model", ""),
            "created": extra.get("created", ""),
            "steps": int(extra.get("steps", 0)),
        }

    def list(self) -> list[dict]:
        return [self.entry(n) for n in self.names()]

    def load(
        self, name: str, *, device: torch.device | str = "cpu", expect_fingerprint: str | None = None
    ) -> NeTIMapper:
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        found = self._locate(validate_token_name(name))
        if not found:
            raise NotFoundError(
                f"unknown object '{name}': GET /v1/objects (or `viewneti info`) lists the available ones"
            )
        mapper = NeTIMapper.from_pretrained(found[0], expect_fingerprint=expect_fingerprint, device=device)
        mapper.requires_grad_(False).eval()
        with self._lock:
            self._cache[name] = mapper
        return mapper

    def source(self, name: str) -> dict:
        """Where a token came from (``{"views": [...]}`` or ``{"image": ...}``), as saved; {} if unknown."""
        found = self._locate(validate_token_name(name))
        if not found:
            return {}
        import json

        extra = json.loads((found[0] / CONFIG_NAME).read_text()).get("extra", {})
        return dict(extra.get("source") or {})

    def save(
        self, name: str, mapper: NeTIMapper, *, steps: int = 0, overwrite: bool = False, source: dict | None = None
    ) -> dict:
        validate_token_name(name)
        if self.user_dir is None:
            raise InputError("this library has no writable folder: start with a data directory to save objects")
        if not overwrite and self._locate(name):
            raise InputError(f"an object named '{name}' already exists: choose another name or delete it first")
        mapper.config.extra = {
            **mapper.config.extra,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "steps": int(steps),
            **({"source": dict(source)} if source else {}),
        }
        mapper.save_pretrained(self.user_dir / name)
        with self._lock:
            self._cache.pop(name, None)
        return self.entry(name)

    def rename(self, name: str, new_name: str) -> dict:
        """Give a user object a new name in one ``rename`` of its folder: it is never listed under both
        names or neither, and an existing object (user or built-in) is never replaced."""
        validate_token_name(new_name)
        found = self._locate(validate_token_name(name))
        if not found:
            raise NotFoundError(
                f"unknown object '{name}': GET /v1/objects (or `viewneti info`) lists the available ones"
            )
        path, builtin = found
        if builtin:
            raise InputError(f"'{name}' is a built-in object of the loaded model and cannot be renamed")
        if new_name == name:
            return self.entry(name)
        target = path.with_name(new_name)
        with self._lock:
            if self._locate(new_name) or target.exists():
                raise NameTakenError(f"an object named '{new_name}' already exists: choose another name")
            try:
                path.rename(target)  # atomic on one file system; refuses a non-empty target
            except OSError as exc:
                raise NameTakenError(f"cannot rename '{name}' to '{new_name}': {exc.strerror or exc}") from None
            self._cache.pop(name, None)
        return self.entry(new_name)

    def delete(self, name: str) -> None:
        found = self._locate(validate_token_name(name))
        if not found:
            raise NotFoundError(f"unknown object '{name}'")
        path, builtin = found
        if builtin:
            raise InputError(f"'{name}' is a built-in object of the loaded model and cannot be deleted")
        trash = path.with_name(f".{name}.deleted")
        path.rename(trash)  # atomic: the name disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._cache.pop(name, None)
