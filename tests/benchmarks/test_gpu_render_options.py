"""benchmarks/gpu_render_options.py: the FP8 linear it times computes what nn.Linear does (to FP8
precision), the swap counts each layer once, and the model-free sections run end to end with --smoke."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.gpu_render_options import GROUP_NORM_OPTION_SETS, Fp8Linear, parse_group_norm_builds, to_fp8_linears

ROOT = Path(__file__).resolve().parents[2]


def test_fp8_linear_matches_the_linear_to_fp8_precision():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    exact = linear(x)
    approx = Fp8Linear(linear)(x)
    assert approx.shape == exact.shape
    rel = float((approx - exact).norm() / exact.norm())
    assert 1e-4 < rel < 0.06, rel  # e4m3 keeps 3 mantissa bits: close, but not the same maths


def test_fp8_swap_replaces_each_eligible_linear_once_and_only_inside_the_scope():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
            self.odd = nn.Linear(32, 10)  # widths FP8 GEMMs do not take: left alone

    block = Block()
    model = nn.ModuleDict({"block": block, "head": nn.Linear(32, 16)})
    assert to_fp8_linears(model, (Block,)) == 2
    assert isinstance(block.inner[0], Fp8Linear) and isinstance(block.inner[2], Fp8Linear)
    assert isinstance(block.odd, nn.Linear) and isinstance(model["head"], nn.Linear)
    assert to_fp8_linears(model) == 1  # the head; the block's layers are already swapped


def run_smoke(out: Path, *args: str) -> dict:
    """Run the script with --smoke and these arguments; its JSON report."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_render_options", "--smoke", *args, "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": ""}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_model_free_sections_run_with_smoke(tmp_path):
    for section in ("text-attention", "text-phase", "group-norm"):
        report = run_smoke(tmp_path / f"{section}.json", "--sections", section)
        key = section.replace("-", "_")
        if section == "group-norm":  # every shape, layout and build timed, each the same maths as eager
            for row in report[key].values():
                timings = [v for k, v in row.items() if k != "shape"]
                assert len(timings) == 2 * (2 + len(GROUP_NORM_OPTION_SETS)) and all(
                    isinstance(v, dict) for v in timings
                ), row
                assert all(v["us"] > 0 and v["max_abs_diff_vs_eager"] < 0.1 for v in timings), row
        elif section == "text-attention":
            row = report[key]["480_rows"]
            assert row["is_causal, math"]["ms"] > 0 and row["additive mask, math"]["rel_error_vs_fp32"] < 0.01
        else:
            row = report[key]["30_steps"]
            assert row["rows"] % 30 == 0 and row["additive mask"]["rel_error_vs_is_causal"] < 0.02


@pytest.mark.slow
def test_build_variant_sections_run_with_smoke(tmp_path):
    """Each build (NCHW layout, inductor options, max-autotune, native group norms) is compiled, timed against the
    shipped build in the same run, and the shipped build is restored after (on the CPU the latents barely move)."""
    sections = "nchw,inductor-options,max-autotune,native-group-norm,separate-time-projections"
    report = run_smoke(tmp_path / "variants.json", "--sections", sections, "--jobs", "live", "--repeats", "1")
    for key in ("nchw", "inductor_options", "max_autotune", "native_group_norm", "separate_time_projections"):
        assert set(report[key]) - {"options", "prepared"} == {"live"}, report[key]
        live = report[key]["live"]
        assert live["compile_s"] > 0 and live["same_pose_ms"] > 0 and live["shipped_same_pose_ms"] > 0
        assert live["latents_rel_error_vs_shipped"] < 0.05
    assert report["inductor_options"]["options"] == {
        "triton.cudagraphs": True,
        "coordinate_descent_tuning": True,
        "max_autotune_pointwise": True,
    }
    prepared = report["native_group_norm"]["prepared"]  # every group norm of the UNet and the decoder switched back
    assert prepared["unet"] > 0 and prepared["decoder"] > 0, prepared
    # the shipped UNet's resnets unfused in the copy; the decoder has none
    prepared = report["separate_time_projections"]["prepared"]
    assert prepared["unet"] > 0 and prepared["decoder"] == 0, prepared


@pytest.mark.slow
def test_sequence_batch_section_times_each_batch_per_frame(tmp_path):
    """Each asked batch size is compiled, then timed: its whole render and per frame (the ratio of the two)."""
    report = run_smoke(
        tmp_path / "seq.json",
        "--sections",
        "sequence-batch",
        "--jobs",
        "live",
        "--repeats",
        "1",
        "--sequence-batches",
        "1,3",
    )
    rows = report["sequence_batch"]
    assert rows["steps"] == 30 and set(rows) == {"steps", "size", "1", "3"}, rows
    for b in (1, 3):
        row = rows[str(b)]
        assert "error" not in row, row
        assert row["compile_s"] > 0 and row["ms"] > 0
        assert row["ms_per_frame"] == pytest.approx(row["ms"] / b)


def test_inductor_options_parse_to_typed_values_and_unknown_names_are_refused():
    from benchmarks.gpu_render_options import parse_inductor_options

    got = parse_inductor_options("triton.persistent_reductions=False, triton.multi_kernel=1,split_reductions=true")
    assert got == {"triton.persistent_reductions": False, "triton.multi_kernel": 1, "split_reductions": True}
    with pytest.raises(SystemExit, match="no option 'triton.no_such_option'"):
        parse_inductor_options("triton.no_such_option=1")
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        parse_inductor_options("split_reductions")


def test_group_norm_builds_are_picked_by_name():
    assert parse_group_norm_builds("") is None  # all
    assert parse_group_norm_builds("default, split statistics") == {"default", "split statistics"}
    with pytest.raises(SystemExit, match="no build triton statistics; choose from default, eager"):
        parse_group_norm_builds("default,triton statistics")


@pytest.mark.slow
def test_keys_in_loop_section_times_it_against_keys_ahead(tmp_path):
    """The keys-in-loop rows: compiled, timed against the shipped keys projected ahead in the same run, and
    the latents of the two within rounding."""
    report = run_smoke(tmp_path / "ka.json", "--sections", "keys-in-loop", "--jobs", "live", "--repeats", "1")
    live = report["keys_in_loop"]["live"]
    assert live["compile_s"] > 0 and live["same_pose_ms"] > 0 and live["shipped_same_pose_ms"] > 0
    assert live["latents_rel_error_vs_shipped"] < 0.02


def test_unknown_sections_are_refused_before_any_work():
    from benchmarks.gpu_render_options import main

    with pytest.raises(SystemExit, match="no section fused-time-projections, keys-ahead; choose from timeline,"):
        main(["--sections", "keys-ahead,nchw,fused-time-projections", "--smoke"])


@pytest.mark.slow
def test_text_overlap_section_times_the_text_phase_beside_a_render(tmp_path):
    """The text-overlap rows: another pose's text phase alone, a same-pose render alone, and both queued
    together (on the CPU one after the other: the code path only, no overlap to expect)."""
    report = run_smoke(tmp_path / "to.json", "--sections", "text-overlap", "--jobs", "live", "--repeats", "1")
    row = report["text_overlap"]["live"]
    assert row["text_phase_ms"] > 0 and row["same_pose_ms"] > 0 and row["overlapped_ms"] > 0
    assert row["serial_ms"] == pytest.approx(row["text_phase_ms"] + row["same_pose_ms"])
    assert row["saved_ms"] == pytest.approx(row["serial_ms"] - row["overlapped_ms"])
