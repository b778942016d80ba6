"""benchmarks/gpu_bench.py (``python -m benchmarks.gpu_bench``) end to end with --smoke (tiny widths on the CPU): the script that produces
RESULTS.md §1 must keep running as the library changes. It times nothing real here; the structure of
its JSON and the equivalence checks it makes are what is tested."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_bench_smoke_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_bench",
        "--smoke",
        "--out",
        str(out),
        "--inversion-steps",
        "2",
        "--eager-inversion-steps",
        "1",
        "--reference-inversion-steps",
        "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": ""}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.gpu_bench --smoke")
    assert report["equivalence_image_fp32"]["max_abs_diff_8bit"] <= 1.0, "fast and reference-style renders must agree"
    assert report["equivalence_gradient_fp32"]["relative_l2_error"] < 1e-4
    results = report["results"]
    view = results["view_128x96_30steps"]
    assert view["fast_new_pose_ms"] > 0 and view["reference_ms"] > 0 and view["tflop"] > 0
    assert results["live_64x64_8steps"]["fast_cached_pose_ms"] > 0
    inv = results["inversion_mode5_9x512x384"]  # the section's name (its sizes are tiny under --smoke)
    assert inv["fast_step_ms"] > 0 and inv["reference_step_ms"] > 0 and math.isfinite(inv["final_loss"])
    assert "[" in run.stdout and " s] device: cpu (smoke)" in run.stdout, "lines carry the seconds since start"


def test_host_profile_names_the_function_that_takes_the_time():
    """--profile inversion-host reads where the host's time per step goes; check it on a known workload."""
    from benchmarks import gpu_bench

    def busy_loop_for_the_profile():
        return sum(i * i for i in range(20000))

    report = gpu_bench.profile_host(lambda: [busy_loop_for_the_profile() for _ in range(4)], "test", steps=2, top=5)
    assert report["wall_ms_per_step_under_cprofile"] > 0
    top = {r["function"].split(":")[-1]: r for r in report["top_by_cumulative_time"]}
    assert "busy_loop_for_the_profile" in top
    assert top["busy_loop_for_the_profile"]["calls_per_step"] == 2.0  # 4 calls over 2 steps


def test_timeline_splits_idle_time_by_launcher_and_host_lateness():
    """gpu_timeline.analyse_gaps on a hand-made trace: a CUDA graph of two kernels (a queued 2 us gap),
    then an eager kernel launched after the GPU went idle (a 20 us host-late gap inside aten::mul)."""
    from benchmarks.gpu_timeline import analyse_gaps

    def x(cat, name, ts, dur, tid=1, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}

    events = [
        x("cuda_runtime", "cudaGraphLaunch", 0, 5, correlation=1),
        x("kernel", "graph_kernel_a", 10, 10, tid=7, correlation=1),
        x("kernel", "graph_kernel_b", 22, 8, tid=7, correlation=1),
        x("cpu_op", "aten::mul", 35, 20),
        x("cpu_op", "outer_step", 0, 100),
        x("cuda_runtime", "cudaLaunchKernel", 40, 5, correlation=2),
        x("kernel", "eager_kernel", 50, 10, tid=7, correlation=2),
    ]
    r = analyse_gaps(events, steps=1)
    assert r["activities_per_step"] == {"graph": 2, "eager": 1}
    assert r["gpu_busy_ms_per_step"] * 1e3 == 28 and r["idle_ms_per_step"] * 1e3 == 22
    assert {k: round(v * 1e3, 6) for k, v in r["idle_ms_per_step_by_launcher"].items()} == {
        "eager, host late": 20,
        "graph, queued": 2,
    }
    assert list(r["host_late_idle_ms_per_step_by_host_op"]) == ["aten::mul"], "charged to the innermost op"
    assert r["largest_gaps"][0]["before"] == "eager_kernel" and r["largest_gaps"][0]["after"] == "graph_kernel_b"
    assert r["gaps_by_size"]["0-2 us"]["gaps_per_step"] == 0 and r["gaps_by_size"]["2-5 us"]["gaps_per_step"] == 1
    with pytest.raises(ValueError, match="no GPU kernels"):
        analyse_gaps([x("cpu_op", "aten::mul", 0, 1)])


def test_first_use_probe_times_three_calls_per_order_and_without_graphs():
    """--profile first-use on a tiny SD-shaped model on the CPU: every section, every call timed."""
    import torch

    from benchmarks import gpu_bench
    from benchmarks.sd21 import sd21_base_model
    from viewneti_backend.camera_features import make_parameterization
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.pipeline import ViewNeTIPipeline
    from viewneti_backend.training import new_mapper
    from viewneti_backend.unet_graphs import GraphedUNet

    base = sd21_base_model("cpu", torch.float32, tiny=True)
    graphed = GraphedUNet(base.unet)
    base.eager["unet"] = graphed  # as compile_base_model leaves a CUDA backbone
    cams = [Camera(orbit_pose(a, 20.0, 4.0), 40.0, 48, 32) for a in range(0, 360, 60)]
    vm = new_mapper(base, "view", make_parameterization("anchor-pose-13d").fit(cams)).eval()
    om = new_mapper(base, "object").eval()
    pipe = ViewNeTIPipeline(base, vm)
    report = gpu_bench.first_use_probe(pipe, om, sizes=((48, 32), (40, 32), (32, 32)), text_steps=(2, 3), steps=2)
    assert list(report) == ["process order", "flash, efficient, math", "process order, UNet without CUDA graphs"]
    for label in ("process order", "flash, efficient, math"):
        assert len(report[label]["text_ms"]) == 3 and min(report[label]["text_ms"]) > 0
        assert len(report[label]["render_ms"]) == 3 and min(report[label]["render_ms"]) > 0
    assert report["flash, efficient, math"]["text_rows"] == 3 * base.num_layers
    assert len(report["process order, UNet without CUDA graphs"]["render_ms"]) == 3
    assert base.eager["unet"] is graphed  # put back after the plain run


@pytest.mark.parametrize(
    "kernel,category",
    [  # names from session 18's profile of a cached 768x576 view (H100)
        (
            "triton_per_fused_add_clone_convolution_div_native_group_norm_silu_11",
            "fused element-wise / norm (inductor)",
        ),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x128x64_warpgro", "convolution"),
        ("nvjet_sm90_tst_128x224_64x4_2x1_v_bz_coopA_bias_TNT", "matmul (GEMM)"),
        (
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x",
            "attention (SDPA)",
        ),
        (
            "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>",
            "normalisation (eager)",
        ),
        ("Memcpy DtoD (Device -> Device)", "memcpy / memset"),
        ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl", "element-wise / other (eager)"),
    ],
)
def test_kernels_are_filed_by_what_they_compute(kernel, category):
    """Inductor names a kernel after every op it fused: a group norm fused with a convolution's bias is an
    inductor kernel, not a convolution (session 18's breakdown filed such kernels as convolutions)."""
    from benchmarks.gpu_bench import _category

    assert _category(kernel) == category
