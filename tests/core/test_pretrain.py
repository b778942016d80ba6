"""`viewneti pretrain`: presets, the held-out split, and a run end to end on the tiny model (mode 3 ->
mode 5 on one view of the held-out object -> novel views scored against its ground truth)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from viewneti_backend import cli
from viewneti_backend.data import Scene, load_scene_collection
from viewneti_backend.errors import InputError
from viewneti_backend.evaluation import NVS_METHODS, masked_psnr
from viewneti_backend.pretrain import PRESETS, PretrainRun, evenly_spaced, split_objects


def _scenes(n):
    img = Image.new("RGB", (8, 8))
    return [Scene(f"obj{i}", [img], None) for i in range(n)]


def test_split_holds_out_named_counted_or_a_share_of_the_objects():
    scenes = _scenes(10)
    train, held = split_objects(scenes, ["obj3", "obj7"], 0.0)
    assert [s.name for s in held] == ["obj3", "obj7"] and len(train) == 8
    train, held = split_objects(scenes, 2, 0.5)
    assert [s.name for s in held] == ["obj8", "obj9"]
    assert len(split_objects(scenes, None, 0.15)[1]) == 2  # round(1.5)
    assert len(split_objects(scenes, None, 0.0)[1]) == 1  # at least one object is tested
    assert split_objects(scenes, 0, 0.15)[1] == []
    with pytest.raises(InputError, match="nothing left to train on"):
        split_objects(_scenes(1), None, 0.0)
    with pytest.raises(InputError, match="not in the data"):
        split_objects(scenes, ["nope"], 0.0)
    assert evenly_spaced([1, 2, 3, 4, 5, 6, 7], 3) == [1, 4, 7]
    assert evenly_spaced([1, 2, 3], 0) == [1, 2, 3] and evenly_spaced([1, 2], 5) == [1, 2]


def test_presets_are_the_papers_pretraining_and_overrides_win():
    paper = PretrainRun(data="d", out="o", preset="paper").resolved()
    assert (paper["steps"], paper["batch_size"], paper["grad_accum"], paper["augmentation"]) == (50000, 3, 3, 5)
    assert paper["invert_steps"] == 3000 and paper["seeds"] == [0, 1]
    quick = PretrainRun(data="d", out="o", preset="quick", steps=7, seeds=(3,), eval_targets=0).resolved()
    assert (quick["steps"], quick["seeds"], quick["eval_targets"]) == (7, [3], 0)
    assert quick["augmentation"] == 5 and set(PRESETS) == {"quick", "paper"}
    with pytest.raises(InputError, match="unknown preset"):
        PretrainRun(data="d", out="o", preset="huge").resolved()


@pytest.fixture
def toy_data(tmp_path):
    from viewneti_backend.toyworld.dataset import DatasetConfig, render_dataset

    cfg = DatasetConfig(n_objects=3, views=4, size=32, supersample=1, cameras="orbit")
    render_dataset(cfg, tmp_path / "data", progress=False)
    return tmp_path / "data"


@pytest.mark.slow
def test_pretrain_quick_preset_end_to_end(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--preset", "quick", "--data", str(toy_data), "--model", str(tiny_model_dir)]
    args += ["--out", str(out), "--steps", "2", "--invert-steps", "2", "--render-steps", "1", "--eval-targets", "2"]
    assert cli.main(args + ["--device", "cpu", "--compile", "off"]) == 0

    printed = capsys.readouterr().out
    assert "== viewneti_mode5 ==" in printed and "margin vs copy-input" in printed
    summary = json.loads((out / "pretrain_eval.json").read_text())
    assert summary["preset"] == "quick" and summary["settings"]["steps"] == 2
    assert summary["train"]["objects"] == ["obj_0000000", "obj_0000001"] and summary["train"]["steps"] == 2
    assert summary["heldout"] == ["obj_0000002"]
    assert summary["train"]["size"] == [64, 64] == summary["eval"]["size"]  # the tiny model's training size
    assert set(summary["results"]) == set(NVS_METHODS)
    for method in NVS_METHODS:
        rows = summary["rows"][method]
        assert [(r[0], r[1], r[2]) for r in rows] == [("obj_0000002", 0, 0), ("obj_0000002", 1, 0)]
        assert all(math.isfinite(r[3]) and 0 <= r[4] <= 1 for r in rows)
    margins = summary["margin_db"]
    mean = {m: summary["results"][m]["mean"]["psnr"] for m in NVS_METHODS}
    assert margins["vs_copy_input"] == pytest.approx(mean["viewneti_mode5"] - mean["copy_input"])
    assert summary["per_object_margin_db"]["vs_no_view_token"]["objects"] == 1
    # copy-input is scored against the exported ground truth: views 1 and 3 (evenly spaced over 1..3)
    (held,) = [s for s in load_scene_collection(toy_data) if s.name == "obj_0000002"]
    copy = held.images[0].resize((64, 64), Image.Resampling.BICUBIC)
    assert held.masks is not None
    for row, view in zip(summary["rows"]["copy_input"], (1, 3)):
        gt = held.images[view].resize((64, 64), Image.Resampling.BICUBIC)
        mask_image = Image.fromarray(held.masks[view].astype(np.uint8) * 255)
        mask = np.asarray(mask_image.resize((64, 64), Image.Resampling.BILINEAR)) > 127
        assert row[3] == pytest.approx(masked_psnr(copy, gt, mask))
    from viewneti_backend.mapper import NeTIMapper

    assert NeTIMapper.from_pretrained(out / "view_mapper").config.kind == "view"
    assert (out / "objects" / "obj_0000000").is_dir() and (out / "pretrain_eval.txt").is_file()


def test_pretrain_refuses_data_it_cannot_split(tiny_model_dir, toy_data, tmp_path, capsys):
    import shutil

    for extra in ("obj_0000001", "obj_0000002"):
        shutil.rmtree(toy_data / extra)
    args = ["pretrain", "--data", str(toy_data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run")]
    assert cli.main(args + ["--steps", "1", "--device", "cpu"]) == 2
    assert "nothing left to train on" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pretrain_scores_framed_ground_truth_not_squashed(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    """Square exported views, a 64x32 run: the held-out test renders, and scores against, the centre
    64:32 band of each view (``framed_ground_truth``, as ``eval`` does), not the whole view squashed."""
    from viewneti_backend import evaluation
    from viewneti_backend.engine import Engine
    from viewneti_backend.evaluation import framed_ground_truth

    scored, rendered = [], []
    score = evaluation.score_novel_views
    render = Engine.render

    def spy_score(tables, scene, seed, gt, masks, input_image, mode5, no_view):
        scored.append((gt, masks, input_image))
        score(tables, scene, seed, gt, masks, input_image, mode5, no_view)

    def spy_render(self, cameras, *args, **kwargs):
        rendered.append([c.to_json() for c in cameras])
        return render(self, cameras, *args, **kwargs)

    monkeypatch.setattr(evaluation, "score_novel_views", spy_score)
    monkeypatch.setattr(Engine, "render", spy_render)
    args = ["pretrain", "--data", str(toy_data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run")]
    args += ["--steps", "1", "--invert-steps", "1", "--render-steps", "1", "--eval-targets", "2", "--seeds", "0"]
    assert cli.main(args + ["--width", "64", "--height", "32", "--device", "cpu", "--compile", "off"]) == 0

    (held,) = [s for s in load_scene_collection(toy_data) if s.name == "obj_0000002"]
    assert held.cameras is not None and held.masks is not None and held.images[0].size == (32, 32)
    framed = [framed_ground_truth(held.cameras[v], held.images[v], held.masks[v], (64, 32)) for v in (1, 3)]
    ((gt, masks, input_image),) = scored
    for (_, want, want_mask), got, got_mask in zip(framed, gt, masks):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert want_mask is not None and np.array_equal(got_mask, want_mask)
    _, want_input, _ = framed_ground_truth(held.cameras[0], held.images[0], None, (64, 32))
    np.testing.assert_array_equal(np.asarray(input_image), np.asarray(want_input))
    squashed = held.images[1].resize((64, 32), Image.Resampling.BICUBIC)
    assert not np.array_equal(np.asarray(gt[0]), np.asarray(squashed))  # what the test used to score against
    # mode 5 and the no-view baseline render exactly the framed cameras (fov_y narrowed to the band)
    assert rendered == [[cam.to_json() for cam, _, _ in framed]] * 2
    assert framed[0][0].fov_y_deg < held.cameras[1].fov_y_deg
