"""benchmarks/common.py and the sweeps' declared scenarios: the helpers every benchmark script shares."""

import argparse
import math
import statistics

import pytest

from benchmarks.common import (
    command_line,
    int_list,
    machine,
    output_path,
    percentile,
    stats,
    timed,
    timed_each,
    write_json,
)
from benchmarks.toy_sampling_sweep import SamplingSetting, sampling_grid
from benchmarks.toy_timestep_spacing import SpacingSetting, spacing_settings


def test_stats_interpolate_percentiles_and_keep_every_summary():
    s = stats([4.0, 1.0, 3.0, 2.0])
    assert s == {"n": 4, "p50": 2.5, "p95": pytest.approx(3.85), "mean": 2.5, "min": 1.0, "max": 4.0}
    assert percentile([7.0], 0.95) == 7.0


def test_list_arguments_parse_comma_separated_numbers():
    assert int_list("8,10, 12") == [8, 10, 12]
    with pytest.raises(ValueError):
        int_list("8,ten")


def test_sampling_sweep_declares_its_grid_guidance_major():
    grid = sampling_grid([8, 30], [1.0, 2.0])
    assert grid == [
        SamplingSetting(8, 1.0),
        SamplingSetting(30, 1.0),
        SamplingSetting(8, 2.0),
        SamplingSetting(30, 2.0),
    ]


def test_timestep_spacing_settings_parse_and_say_what_is_wrong():
    assert [s.key for s in spacing_settings("leading:10,trailing:4")] == ["leading:10", "trailing:4"]
    assert spacing_settings("linspace:6") == [SpacingSetting("linspace", 6)]
    with pytest.raises(argparse.ArgumentTypeError, match="SPACING one of leading, trailing, linspace, got 'fast:4'"):
        spacing_settings("leading:10,fast:4")


def test_write_json_creates_the_folder_and_writes_nan_as_json_does(tmp_path):
    path = write_json(tmp_path / "new" / "r.json", {"x": float("nan")})
    assert path.read_text() == '{\n  "x": NaN\n}'
    assert math.isnan(__import__("json").loads(path.read_text())["x"])


def test_timed_each_passes_warmup_then_timed_indices_and_times_every_call():
    calls: list[int] = []
    times = timed_each(calls.append, repeats=3, warmup=2)
    assert calls == [-2, -1, 0, 1, 2] and len(times) == 3 and all(t >= 0 for t in times)
    count = []
    median, every = timed(lambda: count.append(1), repeats=4, warmup=1)
    assert len(count) == 5 and len(every) == 4 and median == statistics.median(every)


def test_output_path_goes_under_OUT_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert output_path("benchmarks/x.json") == tmp_path / "out" / "x.json"
    assert (tmp_path / "out").is_dir()
    monkeypatch.setenv("OUT", "")
    assert output_path(tmp_path / "here" / "x.json") == tmp_path / "here" / "x.json"


def test_machine_names_the_host_python_and_torch():
    import platform

    m = machine()
    assert m["python"] == platform.python_version() and m["host"] == platform.node()
    assert m["cores"] and m["torch_threads"] >= 1 and m["torch"]


def test_machine_names_the_gpu_when_cuda_has_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    assert machine()["gpu"] == "NVIDIA H200"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpu" not in machine()


def test_command_line_carries_the_kernel_choices_but_not_the_token(monkeypatch):
    """A report's command reproduces its timings: the variables that choose kernels come first, quoted;
    the server's access token, also a VIEWNETI_ variable, never lands in a report."""
    import sys

    monkeypatch.setattr(sys, "argv", ["benchmarks/server_gpu.py", "--out", "a b.json"])
    for name in ("VIEWNETI_GROUP_NORM", "VIEWNETI_KEYS_AHEAD", "VIEWNETI_SDPA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIEWNETI_TOKEN", "secret")
    plain = command_line()
    assert plain.startswith("python ") and plain.endswith("--out 'a b.json'") and "secret" not in plain
    monkeypatch.setenv("VIEWNETI_GROUP_NORM", "native")
    monkeypatch.setenv("VIEWNETI_SDPA", "default")
    assert command_line() == "VIEWNETI_GROUP_NORM=native VIEWNETI_SDPA=default " + plain
    monkeypatch.setenv("VIEWNETI_KEYS_AHEAD", "1")
    assert command_line() == "VIEWNETI_GROUP_NORM=native VIEWNETI_KEYS_AHEAD=1 VIEWNETI_SDPA=default " + plain
    monkeypatch.delenv("VIEWNETI_KEYS_AHEAD")
    monkeypatch.setenv("VIEWNETI_GROUP_NORM", "split it")
    assert command_line().startswith("VIEWNETI_GROUP_NORM='split it' ")
