r"""Where a GPU's idle time goes: the gaps between kernels in a torch.profiler (Kineto) trace.

A step that takes longer than its kernels is losing time between them. This reads the trace's
kernels, copies and the host calls that launched them, and splits the idle time by

- who launched the next kernel: a CUDA-graph replay (``cudaGraphLaunch``: the gap is the device's own
  latency between graph nodes) or an eager launch (``cudaLaunchKernel`` / Triton's ``cuLaunchKernel``);
- whether the GPU was waiting for the host: the launch call had not yet returned when the previous
  kernel ended ("host late"), or the kernel was already queued ("queued": launch latency and the
  ramp-down / ramp-up between kernels, which only fewer kernels reduce).

Host-late gaps are charged to the innermost host op that was running when the late launch was made.
Under the profiler the host runs slower than normal, so host-late time is an upper bound; queued
gaps are not inflated by the profiler.

    python -m benchmarks.gpu_timeline trace.json.gz --steps 3     # a trace saved by gpu_bench.py
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
from pathlib import Path

from benchmarks.common import write_json

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
GAP_BUCKETS_US = (2.0, 5.0, 20.0, 100.0, 1000.0)


def load_trace(path: str | Path) -> list[dict]:
    """The trace's event list (a chrome-trace JSON file, gzipped or not)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _bucket(gap_us: float) -> str:
    lo = 0.0
    for hi in GAP_BUCKETS_US:
        if gap_us < hi:
            return f"{lo:g}-{hi:g} us"
        lo = hi
    return f">= {GAP_BUCKETS_US[-1]:g} us"


class _HostOps:
    """The host ops of each thread, to find the innermost one running at a given time."""

    def __init__(self, events: list[dict]):
        self.by_tid: dict = {}
        for e in events:
            if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "python_function", "user_annotation"):
                self.by_tid.setdefault(e.get("tid"), []).append(e)
        self.starts = {}
        for tid, ops in self.by_tid.items():
            ops.sort(key=lambda e: e["ts"])
            self.starts[tid] = [e["ts"] for e in ops]

    def innermost(self, tid, ts: float) -> str:
        ops, starts = self.by_tid.get(tid), self.starts.get(tid)
        if not ops or starts is None:  # starts are set with ops
            return "(no host op)"
        best = None
        i = bisect.bisect_right(starts, ts) - 1
        # Enclosing ops start before ts; walk back over a bounded window (ops nest, so the innermost is near).
        for e in reversed(ops[max(0, i - 400) : i + 1]):
            if e["ts"] <= ts <= e["ts"] + e.get("dur", 0) and (best is None or e.get("dur", 0) < best.get("dur", 0)):
                best = e
        return best["name"][:100] if best else "(no host op)"


def analyse_gaps(events: list[dict], steps: int = 1, top: int = 15) -> dict:
    """Idle time between GPU activities, per step, split by launcher and by host-late / queued."""
    gpu = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    if not gpu:
        raise ValueError(
            "the trace holds no GPU kernels or copies: was it recorded with ProfilerActivity.CUDA on a GPU?"
        )
    launchers = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})
    }
    host = _HostOps(events)
    split: dict[str, float] = {}
    counts: dict[str, int] = {}
    edges = (0.0,) + GAP_BUCKETS_US
    buckets: dict[str, list] = {_bucket(lo): [0, 0.0] for lo in edges}  # every size class, in order
    late_by_op: dict[str, float] = {}
    largest: list[tuple[float, str, str, str]] = []
    busy_until = gpu[0]["ts"]
    busy = 0.0
    prev_name = ""
    for e in gpu:
        start, end = e["ts"], e["ts"] + e.get("dur", 0.0)
        launcher = launchers.get(e.get("args", {}).get("correlation"))
        kind = (
            "graph"
            if launcher is not None and "Graph" in launcher["name"]
            else ("eager" if launcher is not None else "unknown")
        )
        counts[kind] = counts.get(kind, 0) + 1
        gap = start - busy_until
        if gap > 0:
            late = launcher is not None and launcher["ts"] + launcher.get("dur", 0.0) > busy_until
            key = f"{kind}, {'host late' if late else 'queued'}"
            split[key] = split.get(key, 0.0) + gap
            b = buckets[_bucket(gap)]
            b[0] += 1
            b[1] += gap
            op = host.innermost(launcher.get("tid"), launcher["ts"]) if late and launcher is not None else ""
            if late:
                late_by_op[op] = late_by_op.get(op, 0.0) + gap
            largest.append((gap, prev_name[:70], e["name"][:70], op))
        busy += max(0.0, end - max(start, busy_until))
        if end > busy_until:
            busy_until, prev_name = end, e["name"]
    span = busy_until - gpu[0]["ts"]
    largest.sort(key=lambda r: -r[0])
    launch_calls: dict[str, list] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATEGORIES:
            c = launch_calls.setdefault(e["name"], [0, 0.0])
            c[0] += 1
            c[1] += e.get("dur", 0.0)
    per = 1e3 * steps  # us -> ms per step
    return {
        "steps": steps,
        "span_ms_per_step": span / per,
        "gpu_busy_ms_per_step": busy / per,
        "idle_ms_per_step": (span - busy) / per,
        "activities_per_step": {k: v / steps for k, v in counts.items()},
        "idle_ms_per_step_by_launcher": {k: v / per for k, v in sorted(split.items(), key=lambda kv: -kv[1])},
        "gaps_by_size": {
            k: {"gaps_per_step": v[0] / steps, "idle_ms_per_step": v[1] / per} for k, v in buckets.items()
        },
        "host_late_idle_ms_per_step_by_host_op": {
            k: v / per for k, v in sorted(late_by_op.items(), key=lambda kv: -kv[1])[:top]
        },
        "largest_gaps": [{"us": g, "after": a, "before": b, "host_op_if_late": op} for g, a, b, op in largest[:top]],
        "host_launch_calls_ms_per_step": {
            k: {"calls_per_step": v[0] / steps, "ms_per_step": v[1] / per}
            for k, v in sorted(launch_calls.items(), key=lambda kv: -kv[1][1])[:top]
        },
    }


def print_report(r: dict, log=print) -> None:
    log(
        f"timeline: {r['span_ms_per_step']:.1f} ms/step from first to last GPU activity, busy {r['gpu_busy_ms_per_step']:.1f}, "
        f"idle {r['idle_ms_per_step']:.1f}; activities/step { ({k: round(v) for k, v in r['activities_per_step'].items()}) }"
    )
    for k, v in r["idle_ms_per_step_by_launcher"].items():
        log(f"    idle {v:6.2f} ms/step  before {k} launches")
    for k, v in r["gaps_by_size"].items():
        log(f"    gaps {k:>12s}: {v['gaps_per_step']:7.0f}/step  {v['idle_ms_per_step']:6.2f} ms/step")
    for k, v in r["host_late_idle_ms_per_step_by_host_op"].items():
        log(f"    host late {v:6.2f} ms/step  in {k}")
    for g in r["largest_gaps"][:8]:
        log(f"    gap {g['us']:8.1f} us  after {g['after']} | before {g['before']} | {g['host_op_if_late']}")
    for k, v in list(r["host_launch_calls_ms_per_step"].items())[:8]:
        log(f"    host call {k:28s} x{v['calls_per_step']:<7.0f} {v['ms_per_step']:6.2f} ms/step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="a chrome-trace JSON (.json or .json.gz) written by torch.profiler")
    ap.add_argument(
        "--steps", type=int, default=1, help="optimizer steps (or calls) the trace covers: figures are per step"
    )
    ap.add_argument("--out", default="", help="also write the analysis here as JSON")
    args = ap.parse_args()
    report = analyse_gaps(load_trace(args.trace), steps=args.steps)
    print_report(report)
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
