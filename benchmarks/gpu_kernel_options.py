"""Which kernel choices speed up the SD 2.1 UNet and the OpenCLIP-H text encoder on this GPU?

    python -m benchmarks.gpu_kernel_options --out benchmarks/gpu_kernel_options.json

A short probe (a few minutes) run before the full ``gpu_bench.py``: it times the same work under
options that keep the maths (same convolution / attention / encoder, other kernels), as GPU kernel
time per call from the profiler:

* cuDNN autotuning of convolutions (``torch.backends.cudnn.benchmark``) vs its heuristics;
* SDPA with the cuDNN attention backend first vs PyTorch's default order (flash first);
* the text encoder over the 480 prompts of a 30-step view: eager vs ``torch.compile`` (CUDA graphs)
  with the batch padded to a bucket of 512 rows.

UNet: eager bf16 channels-last; the view's call (batch 2 at 96x72 latents, CFG) and the inversion's
forward+backward (batch 9 at 64x48 latents, gradient w.r.t. the encodings).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from benchmarks.common import command_line, output_path, write_json
from benchmarks.sd21 import sd21_base_model


def cuda_ms(fn, repeats: int = 5, warmup: int = 3) -> float:
    """GPU kernel time per call (CUPTI durations summed), so eager launch overhead does not hide kernel choices."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    return sum(getattr(e, attr) for e in events) / 1e3 / repeats


def wall_ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/gpu_kernel_options.json")
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base = sd21_base_model("cuda", torch.bfloat16)
    base.unet.to(memory_format=torch.channels_last)
    unet, n_l, dev = base.unet, base.num_layers, base.device
    report = {
        "command": command_line(),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "unet_ms": {},
        "text_encoder_ms": {},
    }
    gen = torch.Generator(device="cuda").manual_seed(0)
    view_x = torch.randn(2, 4, 72, 96, device=dev, generator=gen, dtype=torch.bfloat16).to(
        memory_format=torch.channels_last
    )
    view_ehs = torch.randn(2, 2 * n_l * 77, 1024, device=dev, generator=gen, dtype=torch.bfloat16)
    train_x = torch.randn(9, 4, 48, 64, device=dev, generator=gen, dtype=torch.bfloat16).to(
        memory_format=torch.channels_last
    )
    train_ehs = torch.randn(9, 2 * n_l * 77, 1024, device=dev, generator=gen, dtype=torch.bfloat16).requires_grad_(True)
    t2, t9 = torch.tensor([500, 500], device=dev), torch.randint(0, 1000, (9,), device=dev, generator=gen)

    @torch.no_grad()
    def view_call():
        unet(view_x, t2, encoder_hidden_states=view_ehs, return_dict=False)

    def train_call():
        out = unet(train_x, t9, encoder_hidden_states=train_ehs, return_dict=False)[0]
        out.float().square().mean().backward()
        train_ehs.grad = None

    default_order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    cudnn_first = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    for label, bench, order in (
        ("heuristics, flash", False, default_order),
        ("cudnn.benchmark, flash", True, default_order),
        ("cudnn.benchmark, cudnn attention", True, cudnn_first),
    ):
        torch.backends.cudnn.benchmark = bench
        with sdpa_kernel(order, set_priority=True):
            try:
                row = {"view_call_2x96x72": cuda_ms(view_call), "train_fwd_bwd_9x64x48": cuda_ms(train_call)}
            except RuntimeError as exc:
                row = {"error": str(exc)[:500]}
        report["unet_ms"][label] = row
        print(f"UNet eager, {label:34s}: {row}", flush=True)
    torch.backends.cudnn.benchmark = False

    text = base.text
    ids = text.token_ids(f"{text.view_token}. A photo of a {text.object_token}").expand(480, -1)
    with torch.no_grad():
        report["text_encoder_ms"]["eager_480"] = cuda_ms(lambda: text.encode(ids), repeats=5)
        report["text_encoder_ms"]["eager_480_wall"] = wall_ms(lambda: text.encode(ids))
        # The CLIP blocks under torch.compile (CUDA graphs), the batch padded to 512 rows (a bucket size,
        # so that a few graphs would serve every request; rows never interact, so padding is exact).
        tm: Any = getattr(text.text_encoder, "text_model", text.text_encoder)  # CLIP, duck-typed across transformers
        tm.encoder = torch.compile(tm.encoder, mode="reduce-overhead", fullgraph=False, dynamic=False)
        padded = ids[:1].expand(512, -1)
        t_a = time.perf_counter()
        text.encode(padded)
        report["text_encoder_ms"]["compile_s_bucket_512"] = time.perf_counter() - t_a
        report["text_encoder_ms"]["compiled_480_as_512"] = cuda_ms(lambda: text.encode(padded), repeats=5)
        report["text_encoder_ms"]["compiled_480_as_512_wall"] = wall_ms(lambda: text.encode(padded))
    print(f"text encoder: {report['text_encoder_ms']}", flush=True)
    write_json(output_path(args.out), report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
