"""The toy world's reproduction commands end to end on the tiny test model (CPU, a few steps).

These cover the code the GPU runs in benchmarks/RESULTS.md §2–3 use: mode-3 pretraining that
rewrites ``<model>/viewneti`` and the held-out single-view NVS benchmark.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from viewneti_backend.mapper import NeTIMapper
from viewneti_backend.sampling_defaults import SamplingDefaults
from viewneti_backend.toyworld.benchmark import BenchmarkConfig, nvs_benchmark
from viewneti_backend.toyworld.pretrain import PretrainConfig, pretrain_training, pretrain_view_mapper


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_pretrain_rewrites_the_bundle_and_keeps_sampling_defaults(model_copy, tmp_path):
    SamplingDefaults(guidance=3.0, steps=12, live_steps=4).save(model_copy / "viewneti" / "sampling.json")
    before = NeTIMapper.from_pretrained(model_copy / "viewneti" / "view_mapper").state_dict()
    cfg = PretrainConfig(
        pretrain_training(steps=2, batch_size=2, grad_accum=2), n_objects=2, views=3, ship_objects=2, compile=False
    )
    summary = pretrain_view_mapper(cfg, model_copy, tmp_path / "out", device="cpu", progress=False)

    bundle = model_copy / "viewneti"
    assert summary["steps"] == 2 and np.isfinite(summary["loss_last_100"])
    assert sorted(p.name for p in (bundle / "objects").iterdir()) == ["toy_000", "toy_001"]  # old objects replaced
    after = NeTIMapper.from_pretrained(bundle / "view_mapper")
    assert after.config.extra["steps"] == 2
    assert any(not (before[k] == v).all() for k, v in after.state_dict().items()), "view-mapper was not trained"
    # the model's sampling defaults are not the mapper's: they survive a re-pretrain unchanged
    assert SamplingDefaults.from_json(bundle / "sampling.json") == SamplingDefaults(
        guidance=3.0, steps=12, live_steps=4
    )
    assert not [p.name for p in model_copy.iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert json.loads((tmp_path / "out" / "pretrain_summary.json").read_text())["steps"] == 2


def test_pretrain_config_embeds_the_mode_3_training_run():
    """PretrainConfig.train is a TrainConfig (one definition of steps, lr, batch, augmentation ...)."""
    from viewneti_backend.errors import InputError
    from viewneti_backend.training import TrainConfig

    cfg = PretrainConfig()
    assert cfg.train == TrainConfig(
        mode=3, steps=6000, augmentation=5, log_every=100, camera_parameterization="anchor-distance-14d"
    )
    assert cfg.train.augmentation_key == 5 and cfg.train.spec.many_scenes
    with pytest.raises(InputError, match="toy-world pretraining is mode 3"):
        PretrainConfig(TrainConfig(mode=5))


def test_pretrain_at_one_radius_trains_on_that_distance_only(model_copy, tmp_path):
    """--radius-range 3.6,3.6: every training camera at 3.6 (13d's radius statistic is exactly it)."""
    cfg = PretrainConfig(
        pretrain_training(steps=1, batch_size=2, grad_accum=1, camera_parameterization="anchor-pose-13d"),
        n_objects=2,
        views=3,
        ship_objects=1,
        size=64,
        compile=False,
        radius_range=(3.6, 3.6),
    )
    pretrain_view_mapper(cfg, model_copy, tmp_path / "out", device="cpu", progress=False)
    mapper = NeTIMapper.from_pretrained(model_copy / "viewneti" / "view_mapper")
    assert mapper.config.camera_parameterization is not None
    assert mapper.config.camera_parameterization["stats"]["radius"] == pytest.approx(3.6, abs=1e-6)
    assert tuple(mapper.config.extra["toyworld_pretrain"]["radius_range"]) == (3.6, 3.6)


def test_pretrain_refuses_a_bad_radius_range_before_touching_the_bundle(model_copy, tmp_path, capsys):
    from viewneti_backend.cli import main as cli_main
    from viewneti_backend.errors import InputError

    before = (model_copy / "viewneti" / "view_mapper" / "mapper.safetensors").read_bytes()
    with pytest.raises(InputError, match="radius range"):
        pretrain_view_mapper(
            PretrainConfig(pretrain_training(steps=1), n_objects=1, views=2, radius_range=(4.0, 3.2), compile=False),
            model_copy,
            tmp_path / "out",
            device="cpu",
            progress=False,
        )
    with pytest.raises(SystemExit):
        cli_main(["toyworld", "pretrain", "--model", str(model_copy), "--radius-range", "4,3", "--device", "cpu"])
    assert "MIN,MAX" in capsys.readouterr().err
    assert (model_copy / "viewneti" / "view_mapper" / "mapper.safetensors").read_bytes() == before


def test_pretrain_with_the_distance_parameterisation_ships_a_mapper_the_engine_renders_with(model_copy, tmp_path):
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.engine import Engine

    cfg = PretrainConfig(
        pretrain_training(steps=1, batch_size=2, grad_accum=1, camera_parameterization="anchor-distance-14d"),
        n_objects=2,
        views=3,
        ship_objects=1,
        size=64,
        compile=False,
    )
    pretrain_view_mapper(cfg, model_copy, tmp_path / "out", device="cpu", progress=False)
    mapper = NeTIMapper.from_pretrained(model_copy / "viewneti" / "view_mapper")
    assert mapper.config.camera_parameterization is not None
    assert mapper.config.camera_parameterization["name"] == "anchor-distance-14d"
    assert set(mapper.config.camera_parameterization["stats"]) >= {"log_distance_min", "log_distance_max"}
    engine = Engine.load(str(model_copy), device="cpu", library_dir=tmp_path / "lib", compile=False)
    near, far = (Camera(orbit_pose(30, 25, r), 40, 64, 64) for r in (3.2, 4.0))
    a, b = engine.render([near, far], "toy_000", seed=0, steps=2, guidance=1.0)
    assert a.size == b.size == (64, 64) and np.asarray(a).tobytes() != np.asarray(b).tobytes()


def test_nvs_benchmark_scores_three_methods_per_object_and_seed(tiny_model_dir, tmp_path):
    cfg = BenchmarkConfig(n_objects=2, seeds=[0, 1], n_targets=2, invert_steps=2, render_steps=2)
    summary = nvs_benchmark(cfg, tiny_model_dir, tmp_path, device="cpu", progress=False)

    assert summary["complete"] and summary["objects_done"] == 2
    on_disk = json.loads((tmp_path / "nvs_benchmark.json").read_text())
    assert on_disk["margin_db"] == summary["margin_db"]
    for method in ("viewneti_mode5", "copy_input", "no_view_token"):
        res = summary["results"][method]
        assert sorted(res["per_object"]) == ["obj_1000000", "obj_1000001"]
        assert all(v["n"] == 2 * 2 for v in res["per_object"].values())  # 2 targets x 2 seeds
        assert np.isfinite(res["mean"]["psnr"]) and 0.0 <= res["mean"]["ssim"] <= 1.0
    # copying the input is deterministic: no seed-to-seed spread
    assert summary["results"]["copy_input"]["mean"]["seed_std_psnr"] == 0.0
    paired = summary["per_object_margin_db"]["vs_copy_input"]
    assert paired["objects"] == 2 and 0 <= paired["wins"] <= 2
    mode5, copy = summary["results"]["viewneti_mode5"]["mean"]["psnr"], summary["results"]["copy_input"]["mean"]["psnr"]
    assert summary["margin_db"]["vs_copy_input"] == pytest.approx(mode5 - copy)
    assert (tmp_path / "nvs_sheet.png").is_file() and (tmp_path / "nvs_benchmark.txt").is_file()


def test_nvs_benchmark_resumes_a_stopped_run_with_the_same_scores(tiny_model_dir, tmp_path, monkeypatch):
    """A run stopped during object 2 (a device time limit) continues with --resume: object 1's scores
    and its finished inversions are reused, only object 2 is inverted, and the result equals an
    uninterrupted run's."""
    from viewneti_backend.engine import Engine

    cfg = BenchmarkConfig(n_objects=2, seeds=[0, 1], n_targets=2, invert_steps=2, render_steps=2)
    full = nvs_benchmark(cfg, tiny_model_dir, tmp_path / "full", device="cpu", progress=False)

    real_invert, calls, stop = Engine.invert, [], {"at": "heldout_1000001_s0"}

    def invert(self, images, cameras, name, *a, **k):
        calls.append(name)
        if name == stop.get("at"):
            stop.clear()
            raise TimeoutError("device time limit")  # stopped while inverting object 2
        return real_invert(self, images, cameras, name, *a, **k)

    monkeypatch.setattr(Engine, "invert", invert)
    out = tmp_path / "stopped"
    with pytest.raises(TimeoutError):
        nvs_benchmark(cfg, tiny_model_dir, out, device="cpu", progress=False)
    partial = json.loads((out / "nvs_benchmark.json").read_text())
    assert partial["objects_done"] == 1 and not partial["complete"]

    calls.clear()
    resumed = nvs_benchmark(cfg, tiny_model_dir, out, device="cpu", progress=False, resume=True)
    assert calls == ["heldout_1000001_s0", "heldout_1000001_s1"]  # object 1's inversions were reused
    assert resumed["complete"] and resumed["objects_done"] == 2
    assert resumed["rows"] == full["rows"] and resumed["margin_db"] == full["margin_db"]
    assert (out / "nvs_sheet.png").is_file()


def test_nvs_benchmark_resume_refuses_other_settings_or_a_missing_run(tiny_model_dir, tmp_path):
    from viewneti_backend.errors import InputError

    with pytest.raises(InputError, match="nothing to resume"):
        nvs_benchmark(BenchmarkConfig(n_objects=1), tiny_model_dir, tmp_path, device="cpu", progress=False, resume=True)
    cfg = BenchmarkConfig(n_objects=1, seeds=[0], n_targets=2, invert_steps=2, render_steps=2)
    nvs_benchmark(cfg, tiny_model_dir, tmp_path, device="cpu", progress=False)
    before = (tmp_path / "nvs_benchmark.json").read_text()
    other = BenchmarkConfig(n_objects=1, seeds=[0], n_targets=2, invert_steps=3, render_steps=2)
    with pytest.raises(InputError, match="invert_steps differ"):
        nvs_benchmark(other, tiny_model_dir, tmp_path, device="cpu", progress=False, resume=True)
    assert (tmp_path / "nvs_benchmark.json").read_text() == before  # nothing overwritten


def test_cli_benchmark_resume_without_a_run_says_what_to_do(tmp_path, capsys):
    from viewneti_backend.cli import main

    assert main(["toyworld", "benchmark", "--resume", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "without --resume" in err
    assert not (tmp_path / "library").exists()  # nothing created or deleted


def test_prior_ceiling_scores_five_rows_on_the_shipped_built_ins(tmp_path):
    """`viewneti toyworld ceiling` on the embedded toy model (few views and steps): every row scored
    for every built-in object, margins paired per object, the JSON written."""
    from viewneti_backend.engine import embedded_model_dir
    from viewneti_backend.toyworld.benchmark import prior_ceiling

    cfg = BenchmarkConfig(seeds=[0], n_targets=2, render_steps=2)
    summary = prior_ceiling(cfg, embedded_model_dir(), tmp_path, device="cpu")
    assert summary["objects"] == ["toy_000", "toy_001", "toy_002", "toy_003"]
    offsets = [f"ground_truth_azimuth_off_by_{d}deg" for d in ("10", "22.5", "45")]
    for method in (
        "viewneti_seen_token",
        "copy_input",
        "no_view_token",
        "text_with_true_view_phrase",
        "text_without_view_phrase",
        *offsets,
    ):
        res = summary["results"][method]
        assert sorted(res["per_object"]) == summary["objects"]
        assert all(v["n"] == 2 for v in res["per_object"].values())
        assert np.isfinite(res["mean"]["psnr"]) and 0.0 <= res["mean"]["ssim"] <= 1.0
    ours = summary["results"]["viewneti_seen_token"]["mean"]["psnr"]
    assert summary["margin_db"]["seen_token_vs_copy_input"]["mean"] == pytest.approx(
        ours - summary["results"]["copy_input"]["mean"]["psnr"]
    )
    assert json.loads((tmp_path / "prior_ceiling.json").read_text())["margin_db"] == summary["margin_db"]
    # the renderer's own views: the further off the azimuth, the lower the score
    scale = [summary["results"][row]["mean"]["psnr"] for row in offsets]
    assert scale[0] > scale[2], scale


def test_prior_ceiling_needs_built_ins_made_by_pretraining(tiny_model_dir, tmp_path):
    from viewneti_backend.errors import InputError
    from viewneti_backend.toyworld.benchmark import prior_ceiling

    with pytest.raises(InputError, match="toy_seed"):
        prior_ceiling(BenchmarkConfig(seeds=[0], n_targets=1, render_steps=1), tiny_model_dir, tmp_path, device="cpu")


def test_prior_ceiling_needs_built_in_objects(tiny_model_dir, tmp_path):
    import shutil

    from viewneti_backend.errors import InputError
    from viewneti_backend.toyworld.benchmark import prior_ceiling

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "viewneti" / "objects")
    with pytest.raises(InputError, match="ships no built-in objects"):
        prior_ceiling(BenchmarkConfig(seeds=[0], n_targets=1, render_steps=1), model, tmp_path / "out", device="cpu")


def test_nvs_benchmark_can_invert_with_the_augmentation_pool_option(tiny_model_dir, tmp_path, monkeypatch):
    from viewneti_backend.training import Trainer

    pools = []
    original = Trainer.train

    def recording(self, *args, **kwargs):  # what each inversion's Trainer was given, and whether it drew a pool
        pools.append((self.config.augmentation_pool, self.pools is not None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", recording)
    cfg = BenchmarkConfig(n_objects=1, seeds=[0], n_targets=2, invert_steps=2, render_steps=2, augmentation_pool=9)
    summary = nvs_benchmark(cfg, tiny_model_dir, tmp_path, device="cpu", progress=False)
    assert summary["complete"] and pools == [(9, True)]
    assert json.loads((tmp_path / "nvs_benchmark.json").read_text())["config"]["augmentation_pool"] == 9
