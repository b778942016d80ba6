"""FLOPs of one mode-5 inversion step at SD 2.1 scale, by component, counted on the meta device (no GPU, no weights).

    .venv/bin/python -m benchmarks.training_step_flops --out benchmarks/training_step_flops.json

The step (9 images at 512x384, 16 per-layer prompts each): VAE encoder forward of the 9 augmented
images, the CLIP text encoder forward + backward over 144 prompts of 77 tokens (gradients for the
activations only: the weights are frozen), the UNet forward + backward (activations only). Counted
with torch.utils.flop_counter like gpu_bench.py's floor; the UNet here takes one 77-token encoding per
image (its cross-attention FLOPs are those of 16 per-layer encodings of the same length).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import command_line, count_flops, write_json
from benchmarks.sd21 import UNET_21, VAE_SD2
from viewneti_backend.text_conditioning import _text_transformer


def tflop(fn) -> float:
    return count_flops(fn) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=9, help="images per optimizer step (paper: 3 x 3)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--layers", type=int, default=16, help="UNet cross-attention layers = prompts per image")
    ap.add_argument("--out", default="", help="write the table as JSON here")
    args = ap.parse_args()
    from diffusers import AutoencoderKL, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]  diffusers exports it lazily
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_21).requires_grad_(False)
        vae = AutoencoderKL(**VAE_SD2).requires_grad_(False)
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
            )
        ).requires_grad_(False)
    encoder = _text_transformer(text).encoder
    n, w, h, prompts = args.images, args.width, args.height, args.images * args.layers

    def vae_encode():
        vae.encode(torch.empty(n, 3, h, w, device="meta"))

    def clip_forward_backward():
        embeds = torch.empty(prompts, 77, 1024, device="meta", requires_grad=True)
        encoder(inputs_embeds=embeds).last_hidden_state.sum().backward()

    def unet_forward_backward():
        states = torch.empty(n, 77, 1024, device="meta", requires_grad=True)
        unet(
            torch.empty(n, 4, h // 8, w // 8, device="meta"),
            torch.zeros(n, device="meta"),
            encoder_hidden_states=states,
        ).sample.sum().backward()

    parts = {
        "VAE encoder, forward": tflop(vae_encode),
        "CLIP text encoder, forward + backward": tflop(clip_forward_backward),
        "UNet, forward + backward": tflop(unet_forward_backward),
    }
    total = sum(parts.values())
    print(f"mode-5 step: {n} images at {w}x{h}, {prompts} prompts")
    for name, t in parts.items():
        print(f"  {name:40s} {t:6.2f} TFLOP  {100 * t / total:4.1f} %")
    print(f"  {'total':40s} {total:6.2f} TFLOP")
    if args.out:
        write_json(
            args.out,
            {
                "command": command_line(),
                "images": n,
                "width": w,
                "height": h,
                "prompts": prompts,
                "tflop": parts,
                "total_tflop": total,
            },
        )


if __name__ == "__main__":
    main()
