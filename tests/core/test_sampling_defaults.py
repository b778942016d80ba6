"""Per-model recommended sampling settings (``<model>/viewneti/sampling.json``): parsing, validation,
the SD 2 fallback, and their use by the engine and the CLI (explicit values always win)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.cli import build_parser
from viewneti_backend.cli import main as cli_main
from viewneti_backend.engine import Engine, embedded_model_dir
from viewneti_backend.errors import InputError
from viewneti_backend.sampling_defaults import SamplingDefaults, SamplingDefaultsError

MODEL_DEFAULTS = {"guidance": 2.0, "steps": 3, "live_steps": 2}  # cheap on the tiny CPU model


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def cam(az=0.0):
    return Camera(orbit_pose(az, 20.0, 4.0), 40.0, 64, 64)


def arr(img):
    return np.asarray(img, dtype=np.int16)


# -- parsing and validation ------------------------------------------------------------------------
def test_defaults_are_stable_diffusion_2s():
    d = SamplingDefaults()
    assert (d.guidance, d.steps, d.live_steps) == (7.5, 30, 8)
    assert d.to_dict() == {"guidance": 7.5, "steps": 30, "live_steps": 8}


def test_from_json_reads_all_keys(tmp_path):
    path = write(tmp_path / "sampling.json", {"guidance": 2.0, "steps": 20, "live_steps": 6})
    d = SamplingDefaults.from_json(path)
    assert d == SamplingDefaults(guidance=2.0, steps=20, live_steps=6)
    assert isinstance(d.guidance, float) and isinstance(d.steps, int)


def test_keys_left_out_take_sd_values(tmp_path):
    d = SamplingDefaults.from_json(write(tmp_path / "s.json", {"guidance": 3}))
    assert d == SamplingDefaults(guidance=3.0, steps=30, live_steps=8)
    assert SamplingDefaults.from_json(write(tmp_path / "e.json", {})) == SamplingDefaults()


def test_save_round_trips(tmp_path):
    d = SamplingDefaults(guidance=2.5, steps=12, live_steps=4)
    path = d.save(tmp_path / "deep" / "viewneti" / "sampling.json")
    assert json.loads(path.read_text()) == {"guidance": 2.5, "steps": 12, "live_steps": 4}
    assert SamplingDefaults.from_json(path) == d
    assert not [p for p in path.parent.iterdir() if p.name != "sampling.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "data, message",
    [
        ({"guidance": -0.5}, "'guidance' must be between 0 and 30"),
        ({"guidance": 31}, "'guidance' must be between 0 and 30"),
        ({"guidance": "2"}, "'guidance' must be a number"),
        ({"guidance": True}, "'guidance' must be a number"),
        ({"steps": 0}, "'steps' must be between 1 and 150"),
        ({"steps": 151}, "'steps' must be between 1 and 150"),
        ({"steps": 2.5}, "'steps' must be a whole number"),
        ({"steps": None}, "'steps' must be a whole number"),
        ({"live_steps": 0}, "'live_steps' must be between 1 and 150"),
        ({"guidance": 2.0, "stepz": 20}, "unknown key 'stepz'"),
        ([2.0, 20], "expected a JSON object"),
    ],
)
def test_bad_values_are_clear_errors_naming_key_and_file(tmp_path, data, message):
    path = write(tmp_path / "sampling.json", data)
    with pytest.raises(SamplingDefaultsError, match=message) as exc:
        SamplingDefaults.from_json(path)
    assert str(path) in str(exc.value)
    assert isinstance(exc.value, InputError)  # the CLI prints it as "error: ...", the server as a load failure


def test_nan_guidance_and_invalid_json_are_rejected(tmp_path):
    with pytest.raises(SamplingDefaultsError, match="'guidance' must be between"):
        SamplingDefaults.from_json(write(tmp_path / "nan.json", '{"guidance": NaN}'))
    with pytest.raises(SamplingDefaultsError, match="not valid JSON"):
        SamplingDefaults.from_json(write(tmp_path / "bad.json", '{"guidance": 2.0,'))


def test_constructor_validates_too():
    with pytest.raises(SamplingDefaultsError, match="'steps'"):
        SamplingDefaults(steps=0)
    with pytest.raises(SamplingDefaultsError, match="'guidance'"):
        SamplingDefaults(guidance=100.0)


def test_for_model_falls_back_without_a_file(tmp_path):
    assert SamplingDefaults.for_model(tmp_path) == SamplingDefaults()  # a folder without viewneti/sampling.json
    assert SamplingDefaults.for_model("stabilityai/stable-diffusion-2-1") == SamplingDefaults()  # a hub id
    assert SamplingDefaults.for_model(None) == SamplingDefaults()
    write(tmp_path / "viewneti" / "sampling.json", MODEL_DEFAULTS)
    assert SamplingDefaults.for_model(tmp_path).to_dict() == MODEL_DEFAULTS


def test_resolve_prefers_explicit_values():
    d = SamplingDefaults(guidance=2.0, steps=20, live_steps=8)
    assert d.resolve() == (20, 2.0)
    assert d.resolve(steps=5) == (5, 2.0)
    assert d.resolve(guidance=7.5) == (20, 7.5)
    assert d.resolve(steps=7, guidance=0.0) == (7, 0.0)  # 0 is a value, not "unset"


def test_embedded_toy_model_ships_low_guidance_defaults():
    path = embedded_model_dir() / "viewneti" / "sampling.json"
    assert path.is_file(), "the embedded toy model must ship viewneti/sampling.json"
    d = SamplingDefaults.from_json(path)
    assert d.guidance < SamplingDefaults().guidance  # the toy prior saturates at SD's 7.5
    assert SamplingDefaults.for_model(embedded_model_dir()) == d


# -- the engine and the CLI ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_with_defaults(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model that declares its own sampling defaults."""
    folder = tmp_path_factory.mktemp("with_defaults") / "model"
    shutil.copytree(tiny_model_dir, folder)
    SamplingDefaults(**MODEL_DEFAULTS).save(folder / "viewneti" / "sampling.json")
    return folder


@pytest.fixture(scope="module")
def engine(model_with_defaults, tmp_path_factory):
    return Engine.load(str(model_with_defaults), library_dir=tmp_path_factory.mktemp("library"))


def test_engine_loads_and_reports_the_models_defaults(engine):
    assert engine.sampling == SamplingDefaults(**MODEL_DEFAULTS)
    assert engine.info()["sampling_defaults"] == MODEL_DEFAULTS
    json.dumps(engine.info())  # still plain JSON for the server's health and `viewneti info`


def test_engine_without_file_uses_sd_defaults(tiny_model_dir, tmp_path):
    e = Engine.load(str(tiny_model_dir), library_dir=tmp_path / "library")
    assert e.sampling == SamplingDefaults()
    assert e.info()["sampling_defaults"] == {"guidance": 7.5, "steps": 30, "live_steps": 8}


def test_engine_load_fails_clearly_on_a_bad_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    write(folder / "viewneti" / "sampling.json", {"guidance": 2.0, "cfg": 3})
    with pytest.raises(SamplingDefaultsError, match="unknown key 'cfg'"):
        Engine.load(str(folder), library_dir=tmp_path / "library")


def test_render_uses_model_defaults_when_left_out(engine):
    calls = []
    implicit = engine.render([cam(0)], None, seed=4, on_step=lambda i, n: calls.append((i, n)))[0]
    assert calls and calls[-1] == (MODEL_DEFAULTS["steps"], MODEL_DEFAULTS["steps"])
    explicit = engine.render(
        [cam(0)], None, seed=4, steps=MODEL_DEFAULTS["steps"], guidance=MODEL_DEFAULTS["guidance"]
    )[0]
    assert np.array_equal(arr(implicit), arr(explicit))


def test_explicit_values_override_model_defaults(engine):
    calls = []
    engine.render([cam(0)], None, seed=4, steps=2, on_step=lambda i, n: calls.append(n))
    assert set(calls) == {2}
    default = engine.render([cam(0)], None, seed=4)[0]
    sd_guidance = engine.render([cam(0)], None, seed=4, guidance=7.5)[0]
    same_guidance = engine.render([cam(0)], None, seed=4, guidance=MODEL_DEFAULTS["guidance"])[0]
    assert np.array_equal(arr(default), arr(same_guidance))
    assert not np.array_equal(arr(default), arr(sd_guidance))


def test_cli_steps_and_guidance_default_to_the_model(model_with_defaults, tmp_path, monkeypatch, capsys):
    parser = build_parser()
    for command in (["render", "--out", "x"], ["eval", "--transforms", "t.json"]):
        args = parser.parse_args(command)
        assert args.steps is None and args.guidance is None
    with pytest.raises(SystemExit):
        parser.parse_args(["render", "--help"])
    help_text = capsys.readouterr().out
    assert "recommended" in help_text and "sampling.json" in help_text

    monkeypatch.setenv("VIEWNETI_DATA_DIR", str(tmp_path / "data"))
    common = ["render", "--model", str(model_with_defaults), "--orbit", "1", "--seed", "2"]
    assert cli_main(common + ["--out", str(tmp_path / "implicit")]) == 0
    assert (
        cli_main(
            common
            + [
                "--out",
                str(tmp_path / "explicit"),
                "--steps",
                str(MODEL_DEFAULTS["steps"]),
                "--guidance",
                str(MODEL_DEFAULTS["guidance"]),
            ]
        )
        == 0
    )
    assert cli_main(common + ["--out", str(tmp_path / "override"), "--guidance", "7.5"]) == 0
    name = "thing_a_view000_seed2.png"
    implicit, explicit, override = (arr(Image.open(tmp_path / d / name)) for d in ("implicit", "explicit", "override"))
    assert np.array_equal(implicit, explicit)
    assert not np.array_equal(implicit, override)
