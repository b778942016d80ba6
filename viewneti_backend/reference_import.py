"""Import the ViewNeTI authors' mapper checkpoints (github.com/jmhb0/view_neti) without unpickling code.

Their ``CheckpointHandler.save_mapper`` writes ``mapper-steps-N_view.pt`` / ``..._object.pt`` with
``torch.save``: ``{"cfg": <pyrallis-encoded RunConfig>, "mappers": {key: {"state_dict", "encoder",
"placeholder_object_token"}}}``. The view file's key is ``"dummy_key"``; object files are keyed by
token id, with tokens like ``<scan33>``. Their MLP is ``net.{0,1,3,4}`` (Linear, LayerNorm, Linear,
LayerNorm) + ``output_layer.0`` (Linear); ours is one ``net`` Sequential, the last Linear at
``net.6``. ``encoder`` is a pickled ``FourierPositionalEncodingNDims`` module holding B; it is read
through an inert stand-in (:mod:`.safe_torch_archive`) and must equal the B our mapper regenerates
from seed 0, else the file is refused.

From ``cfg``: embedding dim, MLP width, sigmas (with the ``pe_*_exp_key`` overrides the reference
applies), bypass alphas, target norms, super-category words, camera representation, base model.
Not in the file: the dtu-12d min/max (the reference recomputes them from all cal18 calibration
files at load time), so importing a view-mapper needs the DTU calibration folder; and the layer
count (the reference's fixed 16 cross-attention sites of SD 2).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic_files import replace_directory
from .camera_features import Dtu12d
from .errors import InputError
from .mapper import MapperConfig, NeTIMapper
from .safe_torch_archive import StandIn, load_torch_archive
from .tokens import validate_token_name

REFERENCE_REPO = "jmhb0/view_neti"
REFERENCE_NUM_LAYERS = 16  # the reference's constants.UNET_LAYERS: SD 2's cross-attention sites
REFERENCE_ENCODER = "models.positional_encoding.FourierPositionalEncodingNDims"
VIEW_KEY = "dummy_key"
# theirs -> ours (nn.Sequential indices; 2 and 5 are the LeakyReLUs, which hold no weights)
KEY_MAP = {
    "net.0.weight": "net.0.weight",
    "net.0.bias": "net.0.bias",
    "net.1.weight": "net.1.weight",
    "net.1.bias": "net.1.bias",
    "net.3.weight": "net.3.weight",
    "net.3.bias": "net.3.bias",
    "net.4.weight": "net.4.weight",
    "net.4.bias": "net.4.bias",
    "output_layer.0.weight": "net.6.weight",
    "output_layer.0.bias": "net.6.bias",
}
# ModelConfig.__post_init__'s experiment keys -> the sigma they set
_SIGMA_CAM_KEYS = {1: 1.0, 2: 0.5, 3: 0.25, 4: 0.75, 5: 0.1}
_SIGMA_T_KEYS = {0: 0.03, 1: 0.06, 2: 0.2, 3: 0.5}
_SIGMA_L_KEYS = {0: 2.0, 1: 4.0}


class ReferenceEncoder(StandIn):
    """Stand-in for the authors' Fourier encoder: its pickled state (w = B, sigmas, dim, normalize)."""


@dataclass
class ImportedMappers:
    """What one reference file converts to: a view-mapper or named object-mappers."""

    kind: str  # "view" or "object"
    view: NeTIMapper | None = None
    objects: dict[str, NeTIMapper] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _get(d: Any, *path: str, default: Any = KeyError) -> Any:
    cur = d
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            if default is KeyError:
                raise InputError(f"the file's cfg has no {'.'.join(path)}: is it a ViewNeTI mapper checkpoint?")
            return default
        cur = cur[key]
    return cur


def reference_sigmas(model_cfg: dict[str, Any]) -> tuple[float, float, float]:
    """(sigma_t, sigma_l, sigma_cam) as the reference's ModelConfig.__post_init__ sets them."""
    pe = model_cfg.get("pe_sigmas") or {}
    if not isinstance(pe, dict) or "sigma_t" not in pe or "sigma_l" not in pe:
        raise InputError("the file's cfg.model.pe_sigmas lacks sigma_t / sigma_l")
    sigma_cam = float(pe.get("sigma_dtu12", 2.0))
    sigma_cam = _SIGMA_CAM_KEYS.get(int(model_cfg.get("pe_sigma_exp_key", 0) or 0), sigma_cam)
    t_key, l_key = int(model_cfg.get("pe_t_exp_key", 0) or 0), int(model_cfg.get("pe_l_exp_key", 0) or 0)
    if t_key not in _SIGMA_T_KEYS or l_key not in _SIGMA_L_KEYS:
        raise InputError(f"unknown pe_t_exp_key {t_key} / pe_l_exp_key {l_key} in the file's cfg")
    return _SIGMA_T_KEYS[t_key], _SIGMA_L_KEYS[l_key], sigma_cam


def _check_architecture(cfg: dict[str, Any], kind: str) -> None:
    m = _get(cfg, "model")
    problems = []
    if int(m.get("arch_view_net", 0)) != 15:
        problems.append(f"arch_view_net {m.get('arch_view_net')} (only the paper's final architecture 15 is supported)")
    if m.get("arch_view_disable_tl", True):
        problems.append("arch_view_disable_tl is on (the mapper would ignore t and l)")
    if m.get("original_ti", False):
        problems.append("original_ti is on (a plain textual-inversion vector, not a mapper)")
    if not m.get(f"output_bypass_{kind}", True):
        problems.append(f"output_bypass_{kind} is off")
    if m.get(f"bypass_unconstrained_{kind}", False):
        problems.append(f"bypass_unconstrained_{kind} is on (the bypass replaces the state)")
    if not m.get(f"normalize_{kind}_mapper_output", kind == "object") or m.get(f"target_norm_{kind}") is None:
        problems.append(f"normalize_{kind}_mapper_output is off or target_norm_{kind} is missing")
    if kind == "view" and _get(cfg, "data", "camera_representation", default="") != "dtu-12d":
        problems.append(
            f"camera_representation {_get(cfg, 'data', 'camera_representation', default='?')!r} (only dtu-12d)"
        )
    if problems:
        raise InputError("this reference checkpoint cannot be converted exactly: " + "; ".join(problems))


def _mapper_config(
    cfg: dict[str, Any], kind: str, hidden: int, camera: Dtu12d | None, num_layers: int, source: dict[str, Any]
) -> MapperConfig:
    m = _get(cfg, "model")
    sigma_t, sigma_l, sigma_cam = reference_sigmas(m)
    super_word = _get(cfg, "data", f"super_category_{kind}_token", default=kind) or kind
    return MapperConfig(
        kind=kind,
        token="<view>" if kind == "view" else "<object>",
        embedding_dim=int(_get(cfg, "model", "word_embedding_dim")),
        num_layers=num_layers,
        num_train_timesteps=1000,
        camera_dim=12 if kind == "view" else 0,
        camera_parameterization=camera.to_config() if camera is not None else None,
        encoding_dim=64,
        hidden_dim=hidden,
        sigma_t=sigma_t,
        sigma_l=sigma_l,
        sigma_camera=sigma_cam if kind == "view" else 0.5,
        fourier_seed=0,
        alpha=float(m.get(f"output_bypass_alpha_{kind}", 0.2)),
        norm_target=float(m[f"target_norm_{kind}"]),
        super_word=str(super_word),
        base_model=str(m.get("pretrained_model_name_or_path", "")),
        base_model_fingerprint="",
        extra={"imported_from": source},
    )


def _convert_one(entry: Any, cfg: dict[str, Any], kind: str, camera: Dtu12d | None, num_layers: int, source: dict):
    if not isinstance(entry, dict) or not {"state_dict", "encoder"} <= set(entry):
        raise InputError("a mapper entry must hold 'state_dict' and 'encoder'")
    sd = entry["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError("a mapper entry's state_dict must map names to tensors")
    if set(sd) != set(KEY_MAP):
        raise InputError(
            f"unexpected MLP weights {sorted(set(sd) ^ set(KEY_MAP))}: expected exactly {sorted(KEY_MAP)} "
            "(the paper's architecture 15)"
        )
    hidden = int(sd["net.0.weight"].shape[0])
    config = _mapper_config(cfg, kind, hidden, camera, num_layers, source)
    mapper = NeTIMapper(config)
    ours = {KEY_MAP[k]: v.float() for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in mapper.state_dict().items()}
    wrong = {k: (tuple(v.shape), expected.get(k)) for k, v in ours.items() if tuple(v.shape) != expected.get(k)}
    if wrong:
        raise InputError(f"weight shapes do not match the file's cfg (got, expected): {wrong}")
    mapper.load_state_dict(ours, strict=True)
    _check_encoder(entry["encoder"], mapper)
    return mapper.eval()


def _check_encoder(encoder: Any, mapper: NeTIMapper) -> None:
    """The pickled B must be the seed-0 matrix our mapper regenerates (same sigmas, same order)."""
    if not isinstance(encoder, ReferenceEncoder):
        raise InputError(f"the mapper's encoder is {encoder!r}, not the paper's {REFERENCE_ENCODER} (architecture 15)")
    st = encoder.state
    w = st.get("w", (st.get("_parameters") or {}).get("w"))
    if not isinstance(w, torch.Tensor):
        raise InputError("the pickled Fourier encoder holds no B matrix ('w')")
    if st.get("normalize", False):
        raise InputError("the pickled Fourier encoder normalises its output (not the paper's architecture)")
    b = mapper.encoding.B
    assert isinstance(b, torch.Tensor)
    sigmas = [float(s) for s in st.get("sigmas", [])]
    if sigmas and sigmas != [float(s) for s in mapper.config.sigmas()]:
        raise InputError(f"the encoder's sigmas {sigmas} differ from the cfg's {mapper.config.sigmas()}")
    if tuple(w.shape) != tuple(b.shape) or not torch.equal(w.float().cpu(), b.cpu()):
        raise InputError(
            "the pickled Fourier matrix B differs from torch.manual_seed(0); randn(32, d) x sigmas: "
            "this checkpoint was not built the way the paper's code builds it, refusing to guess"
        )


def read_reference_checkpoint(
    path: str | Path,
    *,
    dtu_calibration: str | Path | None = None,
    num_layers: int = REFERENCE_NUM_LAYERS,
    rig: bool = True,
) -> ImportedMappers:
    """Convert one reference ``.pt`` file (view or object) into mappers in memory; nothing is written."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a mapper-steps-N_view.pt or ..._object.pt file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    data = load_torch_archive(path, {REFERENCE_ENCODER: ReferenceEncoder})
    if not isinstance(data, dict) or not isinstance(data.get("cfg"), dict) or not isinstance(data.get("mappers"), dict):
        raise InputError(f"{path} is not a ViewNeTI mapper checkpoint: expected a dict with 'cfg' and 'mappers'")
    cfg, mappers = data["cfg"], data["mappers"]
    if not mappers:
        raise InputError(f"{path} holds no mappers")
    m = re.search(r"mapper-steps-(\d+)", path.name)
    source = {
        "repo": REFERENCE_REPO,
        "file": path.name,
        "sha256": digest,
        "steps": int(m.group(1)) if m else None,
        "learnable_mode": cfg.get("learnable_mode"),
    }
    if set(mappers) == {VIEW_KEY}:
        _check_architecture(cfg, "view")
        if dtu_calibration is None:
            raise InputError(
                f"{path.name} is a view-mapper: its dtu-12d min/max are not stored in the file (the paper's code "
                "recomputes them from DTU's calibration); pass --dtu-calibration DTU/Calibration/cal18 "
                "(the folder with pos_001.txt ... pos_064.txt)"
            )
        from .data import dtu_calibration_projections

        projections = dtu_calibration_projections(dtu_calibration)
        camera = Dtu12d.from_projections(list(projections.values()))
        view = _convert_one(mappers[VIEW_KEY], cfg, "view", camera, num_layers, source)
        notes = [f"dtu-12d min/max from {len(projections)} calibration files in {dtu_calibration}"]
        if rig:  # so Blender cameras (anchor frame) can drive it: see camera_rig.py
            from .camera_rig import CameraRig

            fitted = CameraRig.fit(list(projections.values()))
            assert view.config.camera_parameterization is not None
            view.config.camera_parameterization = {**view.config.camera_parameterization, "rig": fitted.to_dict()}
            notes.append(f"camera rig attached (remove with `viewneti rig --remove`): {fitted.describe_cap()}")
        if len(projections) != 64:
            notes.append(f"DTU's cal18 has 64 cameras, this folder {len(projections)}: the min/max may differ")
        alpha_obj = _get(cfg, "model", "output_bypass_alpha_object", default=None)
        if alpha_obj is not None and float(alpha_obj) != view.config.alpha:
            notes.append(
                f"the reference's loader uses output_bypass_alpha_object ({alpha_obj}) for the view-mapper; "
                f"kept the trained output_bypass_alpha_view ({view.config.alpha})"
            )
        return ImportedMappers("view", view=view, notes=notes)
    _check_architecture(cfg, "object")
    objects: dict[str, NeTIMapper] = {}
    for key, entry in mappers.items():
        token = entry.get("placeholder_object_token") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not token:
            raise InputError(f"object mapper {key!r} has no placeholder_object_token")
        name = validate_token_name(token.strip("<>"))
        if name in objects:
            raise InputError(f"two object mappers are named {token}")
        objects[name] = _convert_one(entry, cfg, "object", None, num_layers, {**source, "token": token})
    return ImportedMappers("object", objects=objects)


def import_reference(
    path: str | Path,
    out: str | Path,
    *,
    dtu_calibration: str | Path | None = None,
    num_layers: int = REFERENCE_NUM_LAYERS,
    overwrite: bool = False,
    rig: bool = True,
) -> dict[str, Any]:
    """Convert a reference file into ``out``: ``out/view_mapper`` for a view file, ``out/objects/<name>``
    for an object file (the layout of a model's ``viewneti/`` folder). All or nothing: everything is
    converted and checked first, written into a temporary folder, then moved into place."""
    imported = read_reference_checkpoint(path, dtu_calibration=dtu_calibration, num_layers=num_layers, rig=rig)
    out = Path(out)
    targets: dict[Path, NeTIMapper] = {}
    if imported.view is not None:
        targets[out / "view_mapper"] = imported.view
    for name, mapper in imported.objects.items():
        targets[out / "objects" / name] = mapper
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise InputError(f"{', '.join(existing[:3])} already exist(s): choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    try:
        staged = {}
        for target, mapper in targets.items():
            rel = target.relative_to(out)
            staged[target] = mapper.save_pretrained(staging / rel)
        for target, src in staged.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            replace_directory(src, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "kind": imported.kind,
        "written": [str(t) for t in targets],
        "notes": imported.notes,
    }
