"""Count the eager (not compiled) aten ops of one mode-5 training step, by part of the step.

On a GPU every eager op is a kernel launch (views aside) and a few microseconds of gap between
kernels; this finds where the ops outside the compiled UNet / VAE / CLIP graphs come from, without a
GPU: tiny SD 2.1-shaped model (benchmarks/sd21.py), CPU, torch.profiler, 2 profiled steps.

    .venv/bin/python -m benchmarks.training_eager_ops --compile --out benchmarks/training_eager_ops.json

(up to ~8 min on a 2-core CPU with --compile the first time, most of it compiling; under a minute once
inductor's cache holds the graphs, or without --compile). CPU-side random draws
(item / rand / randint / randperm / randn on CPU generators) are counted apart: they launch nothing.
On the CPU the optimizer is AdamW's foreach version; on CUDA the library uses the fused one (a few kernels).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile, record_function

import viewneti_backend.training as training
from benchmarks.common import command_line, write_json
from benchmarks.sd21 import sd21_base_model
from viewneti_backend.base_model import compile_base_model
from viewneti_backend.camera_features import make_parameterization
from viewneti_backend.cameras import Camera, orbit_pose
from viewneti_backend.data import Scene

HOST_ONLY = {"aten::item", "aten::rand", "aten::randint", "aten::randperm", "aten::randn"}


def label(obj, name: str, region: str) -> None:
    """Wrap obj.name so its ops are attributed to ``region`` in the profile."""
    fn = getattr(obj, name)

    def wrapped(*args, **kwargs):
        with record_function("region:" + region):
            return fn(*args, **kwargs)

    setattr(obj, name, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="compile the UNet, VAE and CLIP blocks as the CUDA path does "
        "(inductor on the CPU, mode 'default': no CUDA graphs here)",
    )
    ap.add_argument("--out", default="", help="write the counts as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = sd21_base_model("cpu", torch.float32, tiny=True)
    w, h = 64, 48
    cams = [Camera(orbit_pose(a, 25.0, 4.0), 40.0, w, h) for a in range(0, 360, 30)]
    view_mapper = training.new_mapper(base, "view", make_parameterization("anchor-pose-13d").fit(cams))
    view_mapper.eval().requires_grad_(False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    if args.compile:
        compile_base_model(base, "default")
    cfg = training.TrainConfig(mode=5, steps=2, batch_size=3, grad_accum=3, width=w, height=h, augmentation=7)
    trainer = training.Trainer(cfg, base, [Scene("s", [image], [cams[1]])], view_mapper=view_mapper, device="cpu")
    trainer.train(progress=False)  # warm-up (and compilation)
    for obj, name, region in [
        (training, "apply_augmentation", "augmentation"),
        (trainer, "sample_batch", "sample batch"),
        (trainer.base.vae, "encode", "VAE encode"),
        (trainer.mappers, "forward", "object-mapper"),
        (trainer.frozen_view, "forward", "frozen view-mapper"),
        (trainer.base.text, "encode", "text encode"),
        (trainer.base.text, "_transformer", "CLIP blocks"),
        (trainer.optimizer, "step", "optimizer"),
        (trainer.accelerator, "backward", "backward call"),
    ]:
        label(obj, name, region)
    steps = 2
    trainer.config.steps = trainer.step + steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train(progress=False)

    per_region: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    host_only = collections.Counter()

    def walk(event, compiled: bool, region: str) -> None:
        name = event.name
        if name.startswith("region:"):
            region = region + " / " + name[len("region:") :] if region else name[len("region:") :]
        if name.startswith("autograd::engine"):
            region = "autograd backward (eager part)"
        compiled = compiled or "ompiled" in name  # "Torch-Compiled Region", "CompiledFunction"
        if name.startswith("aten::") and not compiled:
            (host_only if name in HOST_ONLY else per_region[region or "loss_on (rest)"])[name] += 1
            return
        for child in event.cpu_children:
            walk(child, compiled, region)

    events = prof.events()
    if events is None:
        raise RuntimeError("the profiler recorded no events")
    for event in events:
        if event.cpu_parent is None:
            walk(event, False, "")
    rows = sorted(((r, sum(c.values()) / steps, c) for r, c in per_region.items()), key=lambda x: -x[1])
    total = sum(n for _, n, _ in rows)
    print(
        f"eager aten ops per step outside compiled graphs ({'compiled' if args.compile else 'eager'} model): "
        f"{total:.0f}, plus {sum(host_only.values()) / steps:.0f} CPU-side random draws"
    )
    print(f"{'region':45s} {'ops':>7s}  most frequent")
    for region, n, c in rows:
        print(f"{region:45s} {n:7.1f}  " + ", ".join(f"{k[6:]} {v / steps:g}" for k, v in c.most_common(5)))
    if args.out:
        write_json(
            args.out,
            {
                "command": command_line(),
                "compiled": args.compile,
                "steps_profiled": steps,
                "eager_ops_per_step": total,
                "host_only_random_draws_per_step": sum(host_only.values()) / steps,
                "by_region": {
                    r: {"ops_per_step": n, "ops": {k: v / steps for k, v in c.most_common()}} for r, n, c in rows
                },
            },
        )


if __name__ == "__main__":
    main()
