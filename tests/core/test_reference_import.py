"""Importing the ViewNeTI authors' checkpoints: safe (no pickled code runs), exact (renders like native)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from viewneti_backend.camera_features import Dtu12d
from viewneti_backend.cameras import dtu_projection_to_camera
from viewneti_backend.engine import Engine
from viewneti_backend.errors import InputError
from viewneti_backend.mapper import MapperConfig, NeTIMapper
from viewneti_backend.reference_import import (
    REFERENCE_NUM_LAYERS,
    import_reference,
    read_reference_checkpoint,
    reference_sigmas,
)
from viewneti_backend.safe_torch_archive import UnsafeArchiveError, load_torch_archive
from viewneti_backend.testing import synthetic_dtu_projections, write_synthetic_dtu_calibration

from .reference_format import reference_cfg, reference_modules, their_state_dict, write_reference_file


def _native_pair(base, calibration_dir):
    """Native mappers configured the way an import of the reference files must come out."""
    cam = Dtu12d.from_projections(synthetic_dtu_projections(64))
    dim, layers = base.text.embedding_dim, base.num_layers
    torch.manual_seed(123)
    view = NeTIMapper(
        MapperConfig(
            kind="view",
            token="<view>",
            embedding_dim=dim,
            num_layers=layers,
            camera_dim=12,
            camera_parameterization=cam.to_config(),
            norm_target=base.text.reference_norm("view"),
            super_word="view",
        )
    )
    obj = NeTIMapper(
        MapperConfig(
            kind="object",
            token="<object>",
            embedding_dim=dim,
            num_layers=layers,
            norm_target=base.text.reference_norm("object"),
        )
    )
    for m in (view, obj):  # default init leaves LayerNorms at 1/0: perturb so every weight matters
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return view, obj


@pytest.fixture(scope="module")
def reference_files(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    cal = write_synthetic_dtu_calibration(tmp / "cal18")
    view, obj = _native_pair(tiny_base, cal)
    cfg = reference_cfg(
        embedding_dim=tiny_base.text.embedding_dim,
        target_norm_view=tiny_base.text.reference_norm("view"),
        target_norm_object=tiny_base.text.reference_norm("object"),
    )
    vfile = write_reference_file(
        tmp / "mapper-steps-50000_view.pt",
        cfg,
        {"dummy_key": (their_state_dict(view), "dummy", view.config.sigmas())},
    )
    ofile = write_reference_file(
        tmp / "mapper-steps-50000_object.pt",
        cfg,
        {49409: (their_state_dict(obj), "<scan33>", obj.config.sigmas())},
    )
    return {"tmp": tmp, "cal": cal, "view": view, "object": obj, "view_file": vfile, "object_file": ofile, "cfg": cfg}


def test_the_files_are_in_the_reference_layout_and_weights_only_load_refuses_them(reference_files):
    """The test files are what torch.save writes for their dict; torch's own safe loader cannot read
    them (it refuses the pickled encoder module), which is why a restricted unpickler is needed."""
    with zipfile.ZipFile(reference_files["view_file"]) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"models.positional_encoding" in pkl and b"FourierPositionalEncodingNDims" in pkl
    with pytest.raises(pickle.UnpicklingError, match="FourierPositionalEncodingNDims"):
        torch.load(reference_files["view_file"], weights_only=True)
    from viewneti_backend.reference_import import REFERENCE_ENCODER, ReferenceEncoder

    data = load_torch_archive(reference_files["view_file"], {REFERENCE_ENCODER: ReferenceEncoder})
    enc = data["mappers"]["dummy_key"]["encoder"]
    assert isinstance(enc, ReferenceEncoder) and enc.state["w"].shape == (32, 14)
    assert data["cfg"] == reference_files["cfg"]
    with pytest.raises(UnsafeArchiveError, match="models.positional_encoding.FourierPositionalEncodingNDims"):
        load_torch_archive(reference_files["view_file"])  # no stand-in offered: refused like any other class


def test_sigmas_follow_the_reference_experiment_keys():
    assert reference_sigmas({"pe_sigmas": {"sigma_t": 0.03, "sigma_l": 2.0}, "pe_sigma_exp_key": 2}) == (
        0.03,
        2.0,
        0.5,
    )
    assert reference_sigmas({"pe_sigmas": {"sigma_t": 9, "sigma_l": 9, "sigma_dtu12": 2.0}, "pe_t_exp_key": 1}) == (
        0.06,
        2.0,
        2.0,
    )


def test_import_converts_config_and_weights_exactly(reference_files, tiny_base, tmp_path):
    out = tmp_path / "viewneti"
    r = import_reference(
        reference_files["view_file"], out, dtu_calibration=reference_files["cal"], num_layers=tiny_base.num_layers
    )
    assert r["kind"] == "view" and r["written"] == [str(out / "view_mapper")]
    r2 = import_reference(reference_files["object_file"], out, num_layers=tiny_base.num_layers)
    assert r2["written"] == [str(out / "objects" / "scan33")]
    for kind, folder in (("view", out / "view_mapper"), ("object", out / "objects" / "scan33")):
        mine = NeTIMapper.from_pretrained(folder)
        native = reference_files[kind]
        a, b = dict(vars(mine.config)), dict(vars(native.config))
        src = a.pop("extra")["imported_from"]
        b.pop("extra")
        assert src["repo"] == "jmhb0/view_neti" and src["steps"] == 50000 and len(src["sha256"]) == 64
        assert a.pop("base_model") == "stabilityai/stable-diffusion-2-1"
        b.pop("base_model")
        if kind == "view":  # a camera rig is attached by default (camera_rig.py), fitted to the same calibration
            a["camera_parameterization"] = dict(a["camera_parameterization"])
            assert a["camera_parameterization"].pop("rig")["kind"] == "dtu-similarity"
        assert a == b, kind
        assert mine.config.sigmas() == [0.03, 2.0] + ([0.5] * 12 if kind == "view" else [])
        assert mine.config.alpha == 5.0
        for k, v in native.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), k
    # the safetensors + JSON are all there is: no pickle written
    assert sorted(p.name for p in (out / "view_mapper").iterdir()) == ["mapper.safetensors", "mapper_config.json"]


def test_imported_checkpoint_renders_identically_to_native_weights(reference_files, tiny_model_dir, tmp_path):
    """Same seed -> same pixels: the imported files on the tiny model vs the same weights saved natively."""
    base_layers = reference_files["view"].config.num_layers
    imported = tmp_path / "imported"
    import_reference(
        reference_files["view_file"], imported, dtu_calibration=reference_files["cal"], num_layers=base_layers
    )
    import_reference(reference_files["object_file"], imported, num_layers=base_layers)
    native = tmp_path / "native"
    reference_files["view"].save_pretrained(native / "view_mapper")
    reference_files["object"].save_pretrained(native / "objects" / "scan33")
    cams = [
        dtu_projection_to_camera(p).with_size(64, 48) for p in synthetic_dtu_projections(64)[::21]
    ]  # DTU cameras (features in range), at a tiny size
    images = {}
    for name, root in (("imported", imported), ("native", native)):
        engine = Engine.load(str(tiny_model_dir), view_mapper=str(root / "view_mapper"), library_dir=root / "objects")
        # the cameras are in DTU's frame already: no rig (the imported view-mapper carries one)
        rendered = engine.render(cams, "scan33", seed=7, steps=3, guidance=3.0, use_rig=False)
        images[name] = [np.asarray(im) for im in rendered]
    for a, b in zip(images["imported"], images["native"]):
        assert a.shape == (48, 64, 3)
        np.testing.assert_array_equal(a, b)
    assert np.abs(images["native"][0].astype(int) - images["native"][1].astype(int)).max() > 0  # views differ


def test_a_view_file_needs_the_dtu_calibration(reference_files, tmp_path):
    with pytest.raises(InputError, match="--dtu-calibration"):
        import_reference(reference_files["view_file"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_targets_are_not_overwritten_unless_asked(reference_files, tmp_path):
    import_reference(reference_files["object_file"], tmp_path, num_layers=REFERENCE_NUM_LAYERS)
    cfg_before = (tmp_path / "objects" / "scan33" / "mapper_config.json").read_text()
    with pytest.raises(InputError, match="already exist"):
        import_reference(reference_files["object_file"], tmp_path)
    import_reference(reference_files["object_file"], tmp_path, overwrite=True)
    assert json.loads(cfg_before)["kind"] == "object"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".import-")]  # no staging left behind


def _marker_payload(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Evil()


@pytest.mark.parametrize("where", ["top", "in_mapper", "as_encoder"])
def test_a_malicious_pickle_is_refused_without_running(reference_files, tmp_path, where):
    marker = tmp_path / "pwned"
    cfg = reference_files["cfg"]
    sd = their_state_dict(reference_files["object"])
    evil = _marker_payload(marker)
    if where == "top":
        payload = {"cfg": cfg, "mappers": {1: {"state_dict": sd, "encoder": None}}, "x": evil}
    elif where == "in_mapper":
        payload = {"cfg": cfg, "mappers": {1: {"state_dict": {**sd, "net.0.weight": evil}, "encoder": None}}}
    else:
        payload = {"cfg": cfg, "mappers": {1: {"state_dict": sd, "encoder": evil, "placeholder_object_token": "<a>"}}}
    path = tmp_path / "mapper-steps-5_object.pt"
    torch.save(payload, path)
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"'(posix|os|nt)\.system'"):
        import_reference(path, out)
    assert not marker.exists()
    assert not out.exists()


def test_other_pickle_tricks_are_refused(tmp_path):
    # a global that is not on the list (even a harmless-looking one), BUILD on an allowed function,
    # a storage record that is not in the archive, a legacy (non-zip) file
    def archive(pkl: bytes) -> str:
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pkl)
        return str(path)

    builtin_eval = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."
    with pytest.raises(UnsafeArchiveError, match="builtins.eval"):
        load_torch_archive(archive(builtin_eval))
    build_on_func = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x01\x00\x00\x00a\x88sb."
    with pytest.raises(UnsafeArchiveError, match="sets the state"):
        load_torch_archive(archive(build_on_func))
    missing = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x009X\x03\x00\x00\x00cpuK\x01tQ."
    with pytest.raises(UnsafeArchiveError, match="not in the archive"):
        load_torch_archive(archive(missing))
    legacy = tmp_path / "legacy.pt"
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="not a torch.save zip archive"):
        load_torch_archive(legacy)


def test_a_wrong_B_or_architecture_is_refused(reference_files, tmp_path):
    cfg = json.loads(json.dumps(reference_files["cfg"]))
    sd = their_state_dict(reference_files["object"])
    bad_sigma = write_reference_file(tmp_path / "s.pt", cfg, {1: (sd, "<a>", [0.03, 4.0])})
    with pytest.raises(InputError, match="sigmas"):
        read_reference_checkpoint(bad_sigma)
    cfg["model"]["arch_view_net"] = 16
    arch = write_reference_file(tmp_path / "arch.pt", cfg, {1: (sd, "<a>", [0.03, 2.0])})
    with pytest.raises(InputError, match="arch_view_net 16"):
        read_reference_checkpoint(arch)
    cfg["model"]["arch_view_net"] = 15
    extra_key = write_reference_file(
        tmp_path / "k.pt", cfg, {1: ({**sd, "net.9.weight": sd["net.0.bias"]}, "<a>", [0.03, 2.0])}
    )
    with pytest.raises(InputError, match="unexpected MLP weights"):
        read_reference_checkpoint(extra_key)
    # a B that is not the seed-0 matrix (sigmas recorded right, matrix changed)
    with reference_modules():
        from .reference_format import FourierPositionalEncodingNDims

        enc = FourierPositionalEncodingNDims([0.03, 2.0])
        enc.w = enc.w * 1.001
        torch.save(
            {"cfg": cfg, "mappers": {1: {"state_dict": sd, "encoder": enc, "placeholder_object_token": "<a>"}}},
            tmp_path / "b.pt",
        )
    with pytest.raises(InputError, match="Fourier matrix B differs"):
        read_reference_checkpoint(tmp_path / "b.pt")


def test_the_cli_command_says_what_is_missing_and_converts(reference_files, tmp_path, capsys):
    from viewneti_backend.cli import main

    out = tmp_path / "viewneti"
    assert main(["import-reference", str(reference_files["view_file"]), "--out", str(out)]) == 2
    assert "--dtu-calibration" in capsys.readouterr().err
    assert not out.exists()
    args = ["import-reference", str(reference_files["view_file"]), "--out", str(out)]
    assert main([*args, "--dtu-calibration", str(reference_files["cal"]), "--num-layers", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == [str(out / "view_mapper")]
    stats = NeTIMapper.from_pretrained(out / "view_mapper").config.camera_parameterization
    assert stats is not None and stats["stats"]["population"] == 64
