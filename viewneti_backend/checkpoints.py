"""Training checkpoints on disk: ``checkpoint-<step>/`` folders of mappers, optimizer state and
``trainer_state.json``, all safetensors / JSON (never pickle), written atomically.

Layout::

    run_dir/
      checkpoint-000500/
        view_mapper/                  NeTIMapper.save_pretrained (modes that train it)
        objects/<scene>/              one object-mapper per scene
        optimizer.safetensors         the optimizer's tensors; its param_groups in the metadata
        trainer_state.json            step, config, losses, scene names, base model + fingerprint
      view_mapper/, objects/          the final mappers (save_mappers at the end of training)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic_files import replace_directory
from .errors import InputError
from .mapper import NeTIMapper

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


# ------------------------------------------------------------------------------------------------
# Optimizer state <-> safetensors (never pickle)
# ------------------------------------------------------------------------------------------------
def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------
# Mappers and checkpoint folders
# ------------------------------------------------------------------------------------------------
def save_mappers(
    folder: Path,
    view_mapper: NeTIMapper | None,
    scene_names: Sequence[str],
    object_mappers: Sequence[NeTIMapper],
    step: int,
) -> None:
    """``folder/view_mapper`` (if trained) and ``folder/objects/<scene>`` for each scene's object-mapper."""
    if view_mapper is not None:
        view_mapper.save_pretrained(folder / "view_mapper")
    for name, mapper in zip(scene_names, object_mappers):
        mapper.config.extra = {**mapper.config.extra, "steps": step, "scene": name}
        mapper.save_pretrained(folder / "objects" / name)


def write_checkpoint(
    output_dir: Path,
    step: int,
    view_mapper: NeTIMapper | None,
    scene_names: Sequence[str],
    object_mappers: Sequence[NeTIMapper],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """``output_dir/checkpoint-<step>/`` with the mappers, the optimizer and ``state`` (plus the step and
    scene names) as trainer_state.json; built beside it and swapped in whole."""
    final = output_dir / f"checkpoint-{step:06d}"
    tmp = output_dir / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_mappers(tmp, view_mapper, scene_names, object_mappers, step)
    save_optimizer(optimizer, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state, "scenes": list(scene_names)}, indent=1))
    replace_directory(tmp, final)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint folder, else the latest ``checkpoint-*`` inside it."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = sorted(path.glob("checkpoint-*")) if path.is_dir() else []
    if not found:
        raise InputError(f"no checkpoint found at {path}: pass a checkpoint-<step> folder or a run folder holding one")
    return found[-1]


def read_checkpoint(
    path: str | Path,
    view_mapper: NeTIMapper | None,
    scene_names: Sequence[str],
    object_mappers: Sequence[NeTIMapper],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Load a checkpoint (see :func:`find_checkpoint`) into the mappers and optimizer in place; returns
    its trainer state. The checkpoint must have been trained on the same scenes, in the same order."""
    path = find_checkpoint(path)
    state = json.loads((path / STATE_FILE).read_text())
    if state["scenes"] != list(scene_names):
        raise InputError(f"checkpoint {path} was trained on scenes {state['scenes']}, not {list(scene_names)}")
    if view_mapper is not None and (path / "view_mapper").is_dir():
        view_mapper.load_state_dict(NeTIMapper.from_pretrained(path / "view_mapper").state_dict())
    for name, mapper in zip(scene_names, object_mappers):
        mapper.load_state_dict(NeTIMapper.from_pretrained(path / "objects" / name).state_dict())
    load_optimizer(optimizer, path / OPTIMIZER_FILE)
    return state
