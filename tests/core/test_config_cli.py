"""Configs own their command lines (viewneti_backend.config_cli): every option's default is the
config's own (or a benchmark's declared own default), each flag keeps its name, and the parsed
arguments rebuild the config."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
from dataclasses import dataclass, field

import pytest

from benchmarks.toy_builtin_scores import SweepOptions
from viewneti_backend.cli import build_parser
from viewneti_backend.config_cli import Default, add_options, config_from_args, config_options, nested, option
from viewneti_backend.pretrain import PretrainRun
from viewneti_backend.toyworld.benchmark import BenchmarkConfig
from viewneti_backend.toyworld.dataset import DatasetConfig
from viewneti_backend.toyworld.pretrain import PretrainConfig, pretrain_training
from viewneti_backend.toyworld.prior.training import PriorTrainConfig
from viewneti_backend.toyworld.prior.training import build_parser as prior_parser
from viewneti_backend.training import TrainConfig
from viewneti_backend.training_modes import TRAINING_MODES

CLI = build_parser()

# (command line with only what is required, the config it builds, the config's defaults)
COMMANDS = [
    (CLI, ["train", "--mode", "5", "--out", "run"], TrainConfig, TrainConfig()),
    (CLI, ["toyworld", "pretrain"], PretrainConfig, PretrainConfig()),
    (CLI, ["toyworld", "benchmark"], BenchmarkConfig, BenchmarkConfig()),
    (CLI, ["toyworld", "ceiling"], BenchmarkConfig, BenchmarkConfig()),
    (CLI, ["toyworld", "render-dataset", "--out", "data"], DatasetConfig, DatasetConfig()),
    (prior_parser(), ["--out", "prior"], PriorTrainConfig, PriorTrainConfig()),
    (CLI, ["pretrain", "--data", "d", "--out", "o"], PretrainRun, PretrainRun(data="d", out="o")),
]

# the benchmark scripts (python -m benchmarks.NAME) and the configs whose options they take
BENCHMARKS = [
    ("toy_timestep_spacing", BenchmarkConfig),
    ("toy_invert_steps", BenchmarkConfig),
    ("toy_sampling_sweep", BenchmarkConfig),
    ("toy_sampling_sweep", SweepOptions),
    ("toy_step_convergence", BenchmarkConfig),
    ("toy_step_convergence", SweepOptions),
    ("toy_context_length", BenchmarkConfig),
    ("toy_context_length", SweepOptions),
    ("toy_object_scale", BenchmarkConfig),
    ("toy_object_scale", SweepOptions),
    ("cpu_render", BenchmarkConfig),
    ("gpu_bench", TrainConfig),
]


def _fields(config) -> dict:
    """Every field of a config, nested configs' included, by name."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values.update(_fields(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return values


@pytest.mark.parametrize(
    "parser,argv,config,defaults", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_every_option_defaults_to_its_config_field(parser, argv, config, defaults):
    """A default written a second time (a hand-written option, or a literal in the command) that differs
    from the config's fails here: the parsed value of every config field is the config's default."""
    args = parser.parse_args(argv)
    parsed = vars(args)
    shared = {name: value for name, value in _fields(defaults).items() if name in parsed}
    assert shared, "the command has none of the config's options"
    assert {name: parsed[name] for name in shared} == shared
    assert config_from_args(config, args) == defaults


@pytest.mark.parametrize("name,config", BENCHMARKS, ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_benchmark_option_defaults_to_its_config_field_or_says_why_not(name, config):
    """A benchmark script parsed with no arguments has the config's defaults, except those it declares
    as its own (``OWN_DEFAULTS``, whose reasons its --help shows): a silent second default fails."""
    module = importlib.import_module(f"benchmarks.{name}")
    parsed = vars(module.build_parser().parse_args([]))
    own = {field: default.value for field, default in getattr(module, "OWN_DEFAULTS", {}).items()}
    expected = {**_fields(config()), **own}
    shared = {name: value for name, value in expected.items() if name in parsed}
    assert shared, f"benchmarks.{name} takes none of {config.__name__}'s options"
    assert {name: parsed[name] for name in shared} == shared


def test_a_benchmark_s_own_default_is_in_its_help(capsys):
    from benchmarks import toy_timestep_spacing

    with pytest.raises(SystemExit):
        toy_timestep_spacing.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--invert-steps INVERT_STEPS mode-5 optimizer steps per inversion" in text
    assert "(default: 300 here, BenchmarkConfig's 400: enough to compare samplers on the same token)" in text
    assert "--guidance GUIDANCE classifier-free guidance" in text and "(default: 2.0)" in text


def test_the_flags_keep_their_names_and_build_the_config():
    def parse(*argv):
        return CLI.parse_args(list(argv))

    args = parse(
        "train", "--mode", "3", "--out", "run", "--steps", "7", "--batch-size", "2", "--grad-accum", "1",
        "--lr", "0.002", "--no-scale-lr", "--weight-decay", "0", "--augmentation", "5", "--augmentation-pool", "4",
        "--width", "96", "--height", "64", "--camera-parameterization", "dtu-12d", "--save-every", "3",
        "--seed", "9", "--mixed-precision", "no",
    )  # fmt: skip
    assert config_from_args(TrainConfig, args) == TrainConfig(
        mode=3, steps=7, batch_size=2, grad_accum=1, lr=0.002, scale_lr=False, weight_decay=0.0, augmentation=5,
        augmentation_pool=4, width=96, height=64, camera_parameterization="dtu-12d", save_every=3, seed=9,
        mixed_precision="no",
    )  # fmt: skip

    args = parse(
        "toyworld", "pretrain", "--objects", "7", "--views", "5", "--steps", "9", "--minutes", "1.5",
        "--ship-objects", "2", "--batch-size", "2", "--grad-accum", "1", "--seed", "3", "--no-compile",
        "--camera-parameterization", "anchor-pose-13d", "--radius-range", "3.6",
    )  # fmt: skip
    train = pretrain_training(steps=9, seed=3, batch_size=2, grad_accum=1, camera_parameterization="anchor-pose-13d")
    assert config_from_args(PretrainConfig, args) == PretrainConfig(
        train, n_objects=7, views=5, max_minutes=1.5, ship_objects=2, compile=False, radius_range=(3.6, 3.6)
    )

    args = parse(
        "toyworld", "benchmark", "--objects", "2", "--seeds", "0,3", "--targets", "4", "--invert-steps", "5",
        "--render-steps", "6", "--guidance", "1.5", "--augmentation-pool", "2",
    )  # fmt: skip
    assert config_from_args(BenchmarkConfig, args) == BenchmarkConfig(
        n_objects=2, seeds=[0, 3], n_targets=4, invert_steps=5, render_steps=6, guidance=1.5, augmentation_pool=2
    )
    args = parse("toyworld", "ceiling", "--seeds", "4", "--targets", "3", "--render-steps", "2", "--guidance", "3")
    assert config_from_args(BenchmarkConfig, args) == BenchmarkConfig(
        seeds=[4], n_targets=3, render_steps=2, guidance=3.0
    )

    args = parse(
        "toyworld", "render-dataset", "--out", "d", "--objects", "3", "--views", "4", "--first-seed", "1000000",
        "--size", "32", "--cameras", "orbit",
    )  # fmt: skip
    assert config_from_args(DatasetConfig, args) == DatasetConfig(
        n_objects=3, views=4, first_seed=1_000_000, size=32, cameras="orbit"
    )

    args = parse(
        "pretrain", "--data", "d", "--out", "o", "--model", "m", "--preset", "paper", "--steps", "7",
        "--invert-steps", "8", "--seeds", "0,3", "--eval-targets", "2", "--holdout", "a,b", "--input-view", "1",
        "--width", "96", "--height", "64", "--render-steps", "5", "--guidance", "1.5",
        "--camera-parameterization", "anchor-distance-14d", "--save-every", "3", "--seed", "4",
        "--device", "cpu", "--mixed-precision", "no", "--compile", "off",
    )  # fmt: skip
    assert config_from_args(PretrainRun, args) == PretrainRun(
        data="d", out="o", model="m", preset="paper", steps=7, invert_steps=8, seeds=(0, 3), eval_targets=2,
        holdout=["a", "b"], input_view=1, width=96, height=64, render_steps=5, guidance=1.5,
        camera_parameterization="anchor-distance-14d", save_every=3, seed=4, device="cpu", mixed_precision="no",
        compile="off",
    )  # fmt: skip
    assert parse("pretrain", "--data", "d", "--out", "o", "--holdout", "2").holdout == 2

    args = prior_parser().parse_args(
        ["--out", "p", "--device", "cpu", "--n-objects", "5", "--vae-steps", "6", "--unet-steps", "7",
         "--vae-minutes", "1", "--unet-minutes", "2", "--unet-batch", "8", "--buffer-size", "9",
         "--buffer-refresh", "3", "--unet-lr", "0.001", "--seed", "4"]
    )  # fmt: skip
    assert config_from_args(PriorTrainConfig, args) == PriorTrainConfig(
        n_objects=5, vae_steps=6, unet_steps=7, vae_max_minutes=1.0, unet_max_minutes=2.0, unet_batch=8,
        buffer_size=9, buffer_refresh=3, unet_lr=0.001, seed=4, device="cpu",
    )  # fmt: skip


def test_ceiling_takes_only_the_sampling_protocol(capsys):
    for flag in ("--objects", "--invert-steps", "--augmentation-pool"):
        with pytest.raises(SystemExit):
            CLI.parse_args(["toyworld", "ceiling", flag, "1"])
        assert "unrecognized arguments" in capsys.readouterr().err


def test_help_shows_each_default_once_and_the_field_help(capsys):
    with pytest.raises(SystemExit):
        CLI.parse_args(["toyworld", "pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS optimizer steps" in text and "(default: 6000)" in text  # the pretraining run's, not 3000
    assert "--radius-range MIN,MAX" in text and "(default: 3.2,4.0)" in text
    assert "--objects OBJECTS" in text and "--no-compile" in text and "--minutes MINUTES" in text


def test_augmentation_help_gives_each_mode_s_default_from_the_mode_table(capsys):
    with pytest.raises(SystemExit):
        CLI.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for mode in TRAINING_MODES.values():
        assert re.search(rf"default: the mode's \(.*\b{mode.augmentation} in modes? [0-9, ]*\b{mode.number}\b", text), (
            mode
        )


def test_bad_values_are_usage_errors_that_say_what_to_give(capsys):
    for argv, message in (
        (["toyworld", "benchmark", "--seeds", "0,x"], "--seeds takes comma-separated int values, e.g. 0,1"),
        (["toyworld", "pretrain", "--radius-range", "4,3"], "MIN,MAX"),
        (["train", "--mode", "1", "--out", "r"], "invalid choice"),
        (["train", "--out", "r"], "--mode"),  # required
        (["train", "--mode", "5", "--out", "r", "--augmentation", "3"], "invalid choice"),
        (["pretrain", "--out", "o"], "--data"),  # required
        (["pretrain", "--data", "d", "--out", "o", "--seeds", "0,x"], "--seeds takes comma-separated int values"),
    ):
        with pytest.raises(SystemExit):
            CLI.parse_args(argv)
        assert message in capsys.readouterr().err, argv


@dataclass
class _Inner:
    depth: int = field(default=2, metadata=option("how deep"))
    width: int = field(default=3, metadata=option("how wide"))


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner(depth=5), metadata=nested("depth"))
    scale: tuple[float, float] = field(default=(1.0, 2.0), metadata=option("a pair"))
    name: str | None = field(default=None, metadata=option("a name", flag="--called"))
    quiet: bool = field(default=False, metadata=option("say less"))
    kept: int = 7  # no option


def test_the_helper_on_a_config_of_its_own(capsys):
    parser = argparse.ArgumentParser()
    add_options(parser, _Outer)
    assert [(o.name, o.flag, o.default) for o in config_options(_Outer)] == [
        ("depth", "--depth", 5),  # the nested field's default instance, not _Inner's class default
        ("scale", "--scale", (1.0, 2.0)),
        ("name", "--called", None),
        ("quiet", "--quiet", False),
    ]
    args = parser.parse_args(["--depth", "8", "--scale", "0.5,4", "--called", "x", "--quiet"])
    assert config_from_args(_Outer, args, kept=1) == _Outer(_Inner(8, 3), (0.5, 4.0), "x", True, 1)
    assert config_from_args(_Outer, parser.parse_args([])) == _Outer()
    with pytest.raises(SystemExit):
        parser.parse_args(["--scale", "1,2,3"])
    assert "--scale takes 2 comma-separated float values, e.g. 1.0,2.0" in capsys.readouterr().err
    with pytest.raises(TypeError, match="no options"):
        add_options(argparse.ArgumentParser(), _Outer, only=["width"])  # not exposed by the nesting


@dataclass
class _Run:
    data: str = field(metadata=option("input folder"))  # no default: an option only where required
    depth: int = field(default=2, metadata=option("how deep"))
    quiet: bool = field(default=False, metadata=option("say less"))


def test_a_command_s_own_default_and_flag_are_declared_and_shown(capsys):
    parser = argparse.ArgumentParser()
    add_options(
        parser, _Run, required=["data"], defaults={"depth": Default(4, "a deeper sweep")}, flags={"depth": "--levels"}
    )
    assert config_from_args(_Run, parser.parse_args(["--data", "d"])) == _Run("d", depth=4)
    assert config_from_args(_Run, parser.parse_args(["--data", "d", "--levels", "1"])) == _Run("d", depth=1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "how deep (default: 4 here, _Run's 2: a deeper sweep)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, r"_Run.data has no default: add_options\(..., required=\['data'\]\)"),
        ({"required": ["data"], "defaults": {"depth": Default(2, "same")}}, "a Default must replace"),
        ({"required": ["data"], "defaults": {"quiet": Default(True, "a bool")}}, "a Default must replace"),
        ({"required": ["data"], "only": ["data"], "flags": {"depth": "--levels"}}, r"no options \['depth'\]"),
    ],
)
def test_a_default_or_flag_that_cannot_apply_is_an_error_that_says_so(kwargs, message):
    with pytest.raises(TypeError, match=message):
        add_options(argparse.ArgumentParser(), _Run, **kwargs)
